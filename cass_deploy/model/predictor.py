"""Importance predictor: a small MLP on tokens → one logit per patch (trained only by CASS)."""

from __future__ import annotations

from torch import Tensor, nn


class ImportancePredictor(nn.Module):
    """tokens ``[B, P, D]`` → scores ``[B, P]`` (raw logits; ``sigmoid`` gives keep probability).

    LayerNorm → Linear(D, hidden) → GELU → Linear(hidden, 1). The output bias starts at 0
    (probability 0.5 everywhere) so early top-k choices are not biased by initialisation.
    """

    def __init__(self, dim: int, hidden: int = 48) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(tokens)))).squeeze(-1)
