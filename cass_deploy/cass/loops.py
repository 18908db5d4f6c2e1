"""Slow, literal per-box reference implementations (the seed's style), for tests and benchmarks.

These loop over boxes in Python on purpose: they are the yardstick the vectorised code in
``targets.py`` and ``losses.py`` is checked and timed against. Never use them in training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cass_deploy.cass.losses import per_patch_loss
from cass_deploy.config import CassConfig


def single_box_mask(box: Tensor, grid: Sequence[int], image_size: Sequence[int], cfg: CassConfig) -> Tensor:
    """Dense soft mask of one box [4] -> [P], computed over every patch (``cfg``'s expansion, peak and
    ensure_center_patch; linear decay)."""
    Hp, Wp = grid
    H, W = image_size
    dt = box.dtype
    cx = ((torch.arange(Wp, dtype=dt) + 0.5) * W / Wp).repeat(Hp)
    cy = ((torch.arange(Hp, dtype=dt) + 0.5) * H / Hp).repeat_interleave(Wp)
    x1, y1, x2, y2 = (float(v) for v in box)
    ew, eh = (x2 - x1) * cfg.expansion_ratio, (y2 - y1) * cfg.expansion_ratio
    core = (cx >= x1) & (cx <= x2) & (cy >= y1) & (cy <= y2)
    ring = (cx >= x1 - ew) & (cx <= x2 + ew) & (cy >= y1 - eh) & (cy <= y2 + eh) & ~core
    dx = torch.clamp(torch.maximum(x1 - cx, cx - x2), min=0)
    dy = torch.clamp(torch.maximum(y1 - cy, cy - y2), min=0)
    ed = math.sqrt(ew * ew + eh * eh)
    ctx = cfg.context_peak * torch.clamp(1 - torch.sqrt(dx * dx + dy * dy) / max(ed, 1e-12), min=0)
    mask = torch.where(core, torch.ones_like(cx), torch.where(ring, ctx, torch.zeros_like(cx)))
    if cfg.ensure_center_patch and not bool(core.any()):
        i = min(max(int(math.floor((y1 + y2) / 2 * Hp / H)), 0), Hp - 1)
        j = min(max(int(math.floor((x1 + x2) / 2 * Wp / W)), 0), Wp - 1)
        mask[i * Wp + j] = 1.0
    return mask


def target_mask_loop(
    boxes: Sequence[Tensor], grid: Sequence[int], image_size: Sequence[int], cfg: CassConfig | None = None
) -> Tensor:
    """Merged target [B, P] of boxes (B x [M_b, 4]), one Python iteration per box (seed style)."""
    cfg = cfg or CassConfig()
    Hp, Wp = grid
    out = torch.zeros(len(boxes), Hp * Wp, dtype=torch.float32)
    for b, bx in enumerate(boxes):
        for box in bx:
            out[b] = torch.maximum(out[b], single_box_mask(box.float(), grid, image_size, cfg))
    return out


def seed_plan1_loop(
    logits: Tensor, boxes: Sequence[Tensor], grid: Sequence[int], image_size: Sequence[int], cfg: CassConfig
) -> Tensor:
    """The seed's plan 1 written literally: per box, loss of the full image against the
    single-box mask (mean over P), times the box's pixel area; mean over boxes."""
    losses = []
    for b, bx in enumerate(boxes):
        for box in bx:
            mask = single_box_mask(box.to(logits.dtype), grid, image_size, cfg)
            obj = per_patch_loss(logits[b], mask, cfg).mean()
            area = (box[2] - box[0]) * (box[3] - box[1])
            losses.append(obj * area)
    if not losses:
        return logits.sum() * 0
    return sum(losses) / len(losses)
