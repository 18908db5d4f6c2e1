"""Multi-stage pruning (SPEC §6c): an EViT-style ViT detector that prunes at three depths, built
from a ``transformers`` ``ViTConfig`` (random init, no hub download) and plugged into cass-deploy
through the ``PrunableModel`` adapter with ``stages``.

``depth`` ``ViTLayer`` blocks; before the blocks listed in ``prune_at`` (default 1, 3, 5 of 6 —
EViT prunes after 4/7/10 of 12) an importance predictor scores the tokens still alive, the top
``k_s`` (``keep`` ratio of the previous stage's tokens) go on, and the dropped ones are fused into
one token (their score-softmax-weighted mean, as EViT fuses inattentive tokens) that rides along
with [CLS]. Each stage reports ``scores_s`` / ``keep_idx_s`` / ``keep_mask_s`` over the original
patch grid (``keep_mask_s`` nested; a patch dropped earlier scores :data:`DROPPED_SCORE`). After
the last block every token is scattered back to the grid (dropped ones keep the features they had
when dropped) and a per-token head (:class:`cass_deploy.model.token_head.TokenHead`) ends in SPEC
§6b's detections.

Train briefly (CASS on each stage's kept tokens + the head's detection loss) and use it::

    python examples/evit_detector.py --steps 60 --out runs/evit/weights.safetensors
    cass-deploy export --model examples/evit_detector.py:build --weights runs/evit/weights.safetensors \\
        --out runs/evit/export
    cass-deploy verify --model examples/evit_detector.py:build --weights runs/evit/weights.safetensors \\
        --candidate runs/evit/export
    cass-deploy validate runs/evit/export --data synthetic
    cass-deploy profile runs/evit/export --macs

``--model-args '{"keep": [0.8, 0.6, 0.5]}'`` sets the per-stage keep schedule.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import ViTConfig
from transformers.models.vit.modeling_vit import ViTEmbeddings, ViTLayer

from cass_deploy.cass.losses import stage_cass_loss
from cass_deploy.config import CassConfig
from cass_deploy.model import token_head
from cass_deploy.model.interface import DET_OUTPUTS, Stage, compute_k, stage_output_names
from cass_deploy.model.predictor import ImportancePredictor
from cass_deploy.model.pruner import mask_from_indices, topk_global
from cass_deploy.model.token_head import TokenDetectorParts, TokenHead

CLASS_NAMES = ("car", "truck", "bus")
#: the score a stage reports for a patch an earlier stage dropped (finite: fp16-safe, no NaN checks)
DROPPED_SCORE = -1.0e4


class EViTDetector(TokenDetectorParts, nn.Module):
    """transformers ViT blocks, three pruning stages with token fusion, and a per-token head.

    ``forward(images [B, 3, H, W] in [0, 1])`` -> dict ``scores_s [B, P]``, ``keep_idx_s [B, k_s]``,
    ``keep_mask_s [B, P]`` (s = 1..S), ``logits [B, P, C]``, ``boxes [B, P, 4]``, ``raw [B, P, 4]``.
    """

    def __init__(
        self,
        depth: int = 6,
        heads: int = 2,
        hidden_size: int = 48,
        prune_at: Sequence[int] = (1, 3, 5),
        keep: Sequence[float] = (0.7, 0.7, 0.7),
        image_size: Sequence[int] = (128, 224),
        patch_size: int = 16,
        max_dets: int = 100,
        score_thresh: float = 0.01,
    ) -> None:
        super().__init__()
        if len(keep) != len(prune_at) or sorted(prune_at) != list(prune_at) or not 0 < prune_at[0]:
            raise ValueError(
                f"keep {list(keep)} needs one ratio per ascending stage depth of prune_at {list(prune_at)}"
            )
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.patch_size = int(patch_size)
        self.grid = (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)
        self.class_names = CLASS_NAMES
        self.prune_at, self.keep_schedule = tuple(int(v) for v in prune_at), tuple(float(r) for r in keep)
        self.max_dets, self.det_score_thresh = int(max_dets), float(score_thresh)
        self.vit_config = ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=hidden_size,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            intermediate_size=2 * hidden_size,
            attn_implementation="eager",
        )
        self.embeddings = ViTEmbeddings(self.vit_config)
        self.layers = nn.ModuleList(ViTLayer(self.vit_config) for _ in range(depth))
        self.predictors = nn.ModuleList(ImportancePredictor(hidden_size, hidden_size) for _ in self.prune_at)
        self.head = TokenHead(hidden_size, len(CLASS_NAMES), self.grid, self.patch_size, self.image_size)

    # --------------------------------------------------------------------- PrunableModel (SPEC 6a, 6c)
    @property
    def stages(self) -> list[Stage]:
        n, out = self.grid[0] * self.grid[1], []
        for r in self.keep_schedule:
            k = compute_k(r, n)
            out.append(Stage(k, "global", self.grid, r))
            n = k
        return out

    @property
    def k(self) -> int:
        return self.stages[-1].k

    pruner_mode = "global"

    @property
    def keep_ratio(self) -> float:
        """Share of the original patches the last stage keeps."""
        return self.k / (self.grid[0] * self.grid[1])

    @property
    def topk_sizes(self) -> tuple[int, ...]:
        return tuple(st.k for st in self.stages)

    def predictor_parameters(self) -> list[nn.Parameter]:
        return list(self.predictors.parameters())

    def output_names(self, part: str) -> list[str]:
        names = stage_output_names(len(self.prune_at))
        return list(DET_OUTPUTS) + names if part == "full" else names

    def with_pruner(self, mode: str | None = None, keep_ratio=None) -> EViTDetector:
        """The same weights with another keep schedule (a tuple, one ratio per stage; a float: the
        same ratio at every stage); ``mode="none"`` keeps every token (the dense reference)."""
        if mode not in (None, "global", "none"):
            raise ValueError(f"the EViT example prunes with 'global' top-k only, got pruner {mode!r}")
        if mode == "none":
            keep_ratio = 1.0
        other = copy.copy(self)
        other._modules = dict(self._modules)  # share every sub-module
        other.pruner_mode = mode or self.pruner_mode
        if keep_ratio is not None:
            ratios = (keep_ratio,) * len(self.prune_at) if isinstance(keep_ratio, (int, float)) else keep_ratio
            if len(ratios) != len(self.prune_at):
                raise ValueError(f"keep schedule {list(ratios)} needs {len(self.prune_at)} ratios, one per stage")
            other.keep_schedule = tuple(float(r) for r in ratios)
        return other

    # --------------------------------------------------------------------- forward
    def _prune(self, s: int, seq: Tensor, extra: int, idx: Tensor, buf: Tensor, k: int) -> tuple:
        """Stage ``s`` on ``seq`` = [CLS, fused..., alive tokens at original indices ``idx``]."""
        cur = seq[:, extra:]
        P = buf.shape[1]
        score = self.predictors[s](cur.detach())  # [B, n]; CASS only, as in SPEC 6
        full = torch.full((cur.shape[0], P), DROPPED_SCORE, dtype=score.dtype, device=score.device)
        full = torch.scatter(full, 1, idx, score)
        keep_idx = topk_global(full, k)
        keep_mask = mask_from_indices(keep_idx, P)
        d = cur.shape[-1]
        buf = torch.scatter(buf, 1, idx.unsqueeze(-1).expand(-1, -1, d), cur)
        kept = torch.gather(buf, 1, keep_idx.unsqueeze(-1).expand(-1, -1, d))
        dropped = ~torch.gather(keep_mask, 1, idx)  # [B, n]
        w = torch.softmax(torch.where(dropped, score.detach(), torch.full_like(score, DROPPED_SCORE)), dim=1)
        w = w * dropped.to(w.dtype)
        fused = (w.unsqueeze(-1) * cur).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-6).unsqueeze(-1)
        seq = torch.cat([seq[:, :extra], fused, kept], dim=1)
        return seq, keep_idx, buf, {"scores": full, "keep_idx": keep_idx, "keep_mask": keep_mask}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        seq = self.embeddings((images - 0.45) / 0.25)  # [B, 1 + P, D]
        B, P = seq.shape[0], seq.shape[1] - 1
        idx = torch.arange(P, device=seq.device).unsqueeze(0).expand(B, -1)
        buf, extra, out = seq[:, 1:], 1, {}
        stage_k = [st.k for st in self.stages]
        for i, layer in enumerate(self.layers):
            if i in self.prune_at:
                s = self.prune_at.index(i)
                seq, idx, buf, res = self._prune(s, seq, extra, idx, buf, stage_k[s])
                extra += 1
                out.update({f"{n}_{s + 1}" if len(self.prune_at) > 1 else n: v for n, v in res.items()})
            seq = layer(seq)
        d = seq.shape[-1]
        buf = torch.scatter(buf, 1, idx.unsqueeze(-1).expand(-1, -1, d), seq[:, extra:])
        out["logits"], out["boxes"], out["raw"] = self.head(buf)
        return out

    def stage_outputs(self, out: dict[str, Tensor], name: str) -> list[Tensor]:
        """``[out[name_1], ..., out[name_S]]`` (``[out[name]]`` for one stage)."""
        n = len(self.prune_at)
        return [out[f"{name}_{s}"] for s in range(1, n + 1)] if n > 1 else [out[name]]

    def training_losses(self, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> tuple:
        """(detection loss of the head, CASS on every stage's kept tokens) for one batch."""
        out = self(images)
        det = token_head.token_detection_loss(out["logits"], out["raw"], boxes, labels, self.grid, self.patch_size)
        scores, masks = self.stage_outputs(out, "scores"), self.stage_outputs(out, "keep_mask")
        cass, _ = stage_cass_loss(scores, masks, boxes, self.grid, self.image_size, CassConfig.preset("corrected"))
        return det, cass


def build(**model_args) -> EViTDetector:
    """The factory ``--model examples/evit_detector.py:build`` calls (with ``--model-args``)."""
    return EViTDetector(**model_args).eval()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train the EViT example briefly (CASS per stage + detection) and save it")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", type=Path, required=True, help="weights file (.safetensors or .pt)")
    args = p.parse_args(argv)
    model = build()
    losses = token_head.fit_token_detector(model, steps=args.steps)
    token_head.save_weights(model, args.out)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
