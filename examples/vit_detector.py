"""Bring your own model: a ViT detector built from Hugging Face ``transformers`` modules, plugged into
cass-deploy through the ``PrunableModel`` adapter (SPEC §6a) and ending in the deployed outputs of
SPEC §6b.

The backbone is ``transformers``' own ViT (``ViTEmbeddings`` with its [CLS] token and learned
position embeddings, ``ViTLayer`` encoder blocks), randomly initialised. After
``early_layers`` encoder blocks, cass-deploy's importance predictor scores every patch token and
its pruner keeps the top ``k``; the remaining ``late_layers`` blocks run on [CLS] + the kept
tokens only, which are scattered back. The head is per token (YOLOS / DETR-style: each patch
token predicts class logits and a box around its patch centre; ``cass_deploy.model.token_head``)
— not this project's CenterNet head — and its detections are packed into ``num_dets /
det_boxes / det_scores / det_classes``. ``main`` trains it briefly: CASS on the predictor and a
detection loss on everything else, so its validate numbers mean something.

Use it from the CLI::

    python examples/vit_detector.py --steps 60 --out runs/vit/weights.safetensors   # CASS + detection
    cass-deploy export --model examples/vit_detector.py:build --weights runs/vit/weights.safetensors \\
        --out runs/vit/export
    cass-deploy verify --model examples/vit_detector.py:build --weights runs/vit/weights.safetensors \\
        --candidate runs/vit/export
    cass-deploy validate runs/vit/export --data ../shared/data/kitti --resize
    cass-deploy profile runs/vit/export

``build(**model_args)`` is the factory; ``--model-args '{"keep_ratio": 0.25}'`` passes keyword
arguments to it.
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

from cass_deploy.cass.losses import CassLoss
from cass_deploy.config import CassConfig
from cass_deploy.data.collate import collate
from cass_deploy.data.synthetic import SyntheticRoadside
from cass_deploy.model.interface import DET_OUTPUTS, PREDICTOR_OUTPUTS
from cass_deploy.model.predictor import ImportancePredictor
from cass_deploy.model.pruner import Pruner, PrunerConfig
from cass_deploy.model.token_head import (
    TokenDetectorParts,
    TokenHead,
    fit_token_detector,
    save_weights,
    token_detection_loss,
)

CLASS_NAMES = ("car", "truck", "bus")


class ViTPruningDetector(TokenDetectorParts, nn.Module):
    """transformers ViT + cass-deploy predictor / pruner + a per-token detection head.

    ``forward(images [B, 3, H, W] in [0, 1])`` -> dict ``scores [B, P]``, ``keep_idx [B, k]``,
    ``keep_mask [B, P]``, ``logits [B, P, C]``, ``boxes [B, P, 4]`` (x1 y1 x2 y2 input pixels),
    ``raw [B, P, 4]`` (the head's log box distances, for its loss).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (128, 224),
        patch_size: int = 16,
        hidden_size: int = 48,
        early_layers: int = 1,
        late_layers: int = 1,
        heads: int = 2,
        keep_ratio: float = 0.5,
        pruner: str = "global",
        bands: int = 3,
        max_dets: int = 100,
        score_thresh: float = 0.01,
    ) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.patch_size = int(patch_size)
        self.grid = (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)
        self.class_names = CLASS_NAMES
        self.max_dets, self.det_score_thresh = int(max_dets), float(score_thresh)
        self.vit_config = ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=hidden_size,
            num_hidden_layers=early_layers + late_layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden_size,
            attn_implementation="eager",
        )
        self.embeddings = ViTEmbeddings(self.vit_config)
        self.early = nn.ModuleList(ViTLayer(self.vit_config) for _ in range(early_layers))
        self.late = nn.ModuleList(ViTLayer(self.vit_config) for _ in range(late_layers))
        self.predictor = ImportancePredictor(hidden_size, hidden_size)
        self.pruner = Pruner(PrunerConfig(mode=pruner, keep_ratio=keep_ratio, bands=bands), self.grid)
        self.head = TokenHead(hidden_size, len(CLASS_NAMES), self.grid, self.patch_size, self.image_size)

    # --------------------------------------------------------------------- PrunableModel
    # the pruning facts the tools read are the pruner's (with_pruner swaps it): k, mode, keep ratio, TopK sizes
    k = property(lambda self: self.pruner.k)
    pruner_mode = property(lambda self: self.pruner.mode)
    keep_ratio = property(lambda self: self.pruner.cfg.keep_ratio)
    topk_sizes = property(lambda self: self.pruner.topk_sizes)

    def tie_groups(self):
        return self.pruner.tie_groups()

    def predictor_parameters(self) -> list[nn.Parameter]:
        return list(self.predictor.parameters())

    def output_names(self, part: str) -> list[str]:
        names = [n for n in PREDICTOR_OUTPUTS if not (n == "keep_idx" and self.pruner_mode == "threshold")]
        return list(DET_OUTPUTS) + names if part == "full" else names

    def with_pruner(self, mode: str | None = None, keep_ratio: float | None = None) -> ViTPruningDetector:
        """The same weights with another pruner (``none``: the dense reference)."""
        cfg = self.pruner.cfg
        other = copy.copy(self)
        other._modules = dict(self._modules)  # share every sub-module but the pruner
        other.pruner = Pruner(
            PrunerConfig(mode=mode or cfg.mode, keep_ratio=keep_ratio or cfg.keep_ratio, bands=cfg.bands), self.grid
        )
        return other

    # --------------------------------------------------------------------- forward
    def _tokens(self, images: Tensor) -> Tensor:
        x = (images - 0.45) / 0.25
        tokens = self.embeddings(x)  # [B, 1 + P, D]: [CLS] + patches
        for layer in self.early:
            tokens = layer(tokens)
        return tokens

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        tokens = self._tokens(images)
        cls, patches = tokens[:, :1], tokens[:, 1:]
        scores = self.predictor(patches)  # [B, P]
        keep_idx, keep_mask = self.pruner(scores)
        if self.late:
            idx = keep_idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
            seq = torch.cat([cls, torch.gather(patches, 1, idx)], dim=1)
            for layer in self.late:
                seq = layer(seq)
            patches = torch.scatter(patches, 1, idx, seq[:, 1:])
        logits, boxes, raw = self.head(patches)
        return {
            "scores": scores,
            "keep_idx": keep_idx,
            "keep_mask": keep_mask,
            "logits": logits,
            "boxes": boxes,
            "raw": raw,
        }

    def training_losses(self, images: Tensor, boxes, labels) -> tuple[Tensor, Tensor]:
        """(detection loss of the head, CASS of the predictor on detached tokens) for one batch."""
        out = self(images)
        det = token_detection_loss(out["logits"], out["raw"], boxes, labels, self.grid, self.patch_size)
        scores = self.predictor(self._tokens(images)[:, 1:].detach())
        cass = CassLoss(CassConfig.preset("corrected"))(scores, boxes, grid=self.grid, image_size=self.image_size)
        return det, cass.total


def build(**model_args) -> ViTPruningDetector:
    """The factory ``--model examples/vit_detector.py:build`` calls (with ``--model-args``)."""
    return ViTPruningDetector(**model_args).eval()


def train_predictor(model: ViTPruningDetector, steps: int = 10, batch: int = 4, seed: int = 0) -> list[float]:
    """A few CASS steps on synthetic roadside scenes: only the importance predictor learns (the
    rest stays at its random initialisation). Returns the loss per step."""
    torch.manual_seed(seed)
    ds = SyntheticRoadside(steps * batch, split="train", seed=seed, image_size=model.image_size)
    loss_fn = CassLoss(CassConfig.preset("corrected"))
    opt = torch.optim.AdamW(model.predictor.parameters(), lr=3e-3)
    model.train()
    losses = []
    for s in range(steps):
        b = collate([ds[i] for i in range(s * batch, (s + 1) * batch)])
        with torch.no_grad():
            patches = model._tokens(b["images"])[:, 1:]
        out = loss_fn(model.predictor(patches), b["boxes"], grid=model.grid, image_size=model.image_size)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(float(out.total.detach()))
    model.eval()
    return losses


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train the ViT example briefly (CASS + detection) and save its weights")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--predictor-only", action="store_true", help="CASS steps on the predictor only (head untrained)")
    p.add_argument("--out", type=Path, required=True, help="weights file (.safetensors or .pt)")
    args = p.parse_args(argv)
    model = build()
    losses = (train_predictor if args.predictor_only else fit_token_detector)(model, steps=args.steps)
    save_weights(model, args.out)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
