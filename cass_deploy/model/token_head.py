"""A per-token detection head (YOLOS / DETR-style: each patch token predicts class logits and a box
around its patch centre) and its training loss, for ViT-style user models such as the examples in
``examples/`` (this project's own detector uses the CenterNet head of :mod:`cass_deploy.model.head`).

``TokenHead(feats [B, P, D])`` -> ``logits [B, P, C]``, ``boxes [B, P, 4]`` (x1 y1 x2 y2 input
pixels); :meth:`TokenHead.detections` packs them into SPEC §6b's four tensors;
:func:`token_detection_loss` is a focal class loss plus an L1 loss on the log box distances of the
patches each ground-truth box owns (its patch centres inside the box, and the patch holding its
centre, so a tiny far-field car owns at least one), the smallest box winning a shared patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cass_deploy.backends.probe import lazy_import
from cass_deploy.data.collate import collate
from cass_deploy.data.synthetic import SyntheticRoadside
from cass_deploy.model.head import pack_detections
from cass_deploy.model.interface import DET_OUTPUTS

safetensors_torch = lazy_import("safetensors.torch")

#: clamp of the predicted log box distances (in patches): e^4 = 55 patches at most
BOX_LOG_RANGE = (-4.0, 4.0)


def patch_centres(grid: Sequence[int], patch_size: float, device=None) -> Tensor:
    """Centres of the ``grid`` ``(Hp, Wp)`` patches -> ``[P, 2]`` (cx, cy) pixels, row-major."""
    hp, wp = (int(v) for v in grid)
    p = torch.arange(hp * wp, device=device)
    return torch.stack([((p % wp).float() + 0.5) * patch_size, ((p // wp).float() + 0.5) * patch_size], dim=-1)


class TokenHead(nn.Module):
    """LayerNorm + two linears on every patch token: class logits and log distances (l, t, r, b)
    from the patch centre, in patches."""

    def __init__(self, dim: int, num_classes: int, grid: Sequence[int], patch_size: int, image_size: Sequence[int]):
        super().__init__()
        self.grid, self.patch_size = tuple(int(v) for v in grid), int(patch_size)
        self.image_size = tuple(int(v) for v in image_size)
        self.norm = nn.LayerNorm(dim)
        self.cls_head = nn.Linear(dim, num_classes)
        self.box_head = nn.Linear(dim, 4)
        nn.init.constant_(self.cls_head.bias, -math.log(99.0))  # foreground prior 0.01
        nn.init.zeros_(self.box_head.bias)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """feats [B, P, D] -> (logits [B, P, C], boxes [B, P, 4] xyxy pixels, raw log distances [B, P, 4])."""
        feats = self.norm(feats)
        raw = self.box_head(feats)
        ltrb = self.patch_size * torch.exp(raw.clamp(*BOX_LOG_RANGE))
        c = patch_centres(self.grid, self.patch_size, feats.device)
        h, w = self.image_size
        lo = torch.tensor([0.0, 0.0, 0.0, 0.0], device=feats.device)
        hi = torch.tensor([w, h, w, h], dtype=torch.float32, device=feats.device)
        boxes = torch.cat([c - ltrb[..., :2], c + ltrb[..., 2:]], dim=-1)
        return self.cls_head(feats), torch.maximum(torch.minimum(boxes, hi), lo), raw

    @staticmethod
    def detections(logits: Tensor, boxes: Tensor, max_dets: int, score_thresh: float) -> tuple[Tensor, ...]:
        """Per-token candidates (every token x class) -> SPEC 6b's four tensors."""
        b, p, c = logits.shape
        probs = torch.sigmoid(logits).reshape(b, p * c)  # candidate m = token * C + class
        cand_boxes = boxes.repeat_interleave(c, dim=1)  # [B, P*C, 4]
        labels = torch.arange(c, device=probs.device).repeat(p).unsqueeze(0).expand(b, -1)
        return pack_detections(probs, cand_boxes, labels, max_dets, score_thresh)


def assign_tokens(gt_boxes: Sequence[Tensor], grid: Sequence[int], patch_size: int) -> tuple[Tensor, Tensor]:
    """Ground truth -> the box each patch learns: (owner [B, P] int64 index into the padded
    ``[B, M]`` boxes, -1 for background; padded boxes [B, M, 4]). Vectorised over boxes and patches."""
    B = len(gt_boxes)
    M = max([len(b) for b in gt_boxes] + [1])
    pad = torch.zeros(B, M, 4)
    valid = torch.zeros(B, M, dtype=torch.bool)
    for i, b in enumerate(gt_boxes):  # one copy per image (not per box)
        pad[i, : len(b)] = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
        valid[i, : len(b)] = True
    c = patch_centres(grid, patch_size)  # [P, 2]
    cx, cy = c[None, :, None, 0], c[None, :, None, 1]  # [1, P, 1]
    x1, y1, x2, y2 = (pad[:, None, :, j] for j in range(4))  # [B, 1, M]
    inside = (cx >= x1) & (cx <= x2) & (cy >= y1) & (cy <= y2)
    wp = int(grid[1])
    centre_patch = (((y1 + y2) / 2 / patch_size).floor().clamp(0, grid[0] - 1) * wp) + (
        ((x1 + x2) / 2 / patch_size).floor().clamp(0, wp - 1)
    )
    own = (inside | (torch.arange(c.shape[0])[None, :, None] == centre_patch.long())) & valid[:, None, :]
    area = ((x2 - x1) * (y2 - y1)).expand_as(own)
    area = torch.where(own, area, torch.full_like(area, float("inf")))
    best = area.argmin(dim=-1)  # smallest owning box
    return torch.where(own.any(-1), best, torch.full_like(best, -1)), pad


def token_detection_loss(
    logits: Tensor,
    raw: Tensor,
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    grid: Sequence[int],
    patch_size: int,
) -> Tensor:
    """Focal class loss over every token + L1 on the log box distances of owned tokens.

    logits [B, P, C]; raw [B, P, 4] (the head's log distances); gt_boxes / gt_labels: B tensors
    [M_b, 4] xyxy pixels / [M_b] class index into the head's classes (< 0 or >= C: ignored box).
    """
    B, P, C = logits.shape
    keep = [(lab >= 0) & (lab < C) for lab in gt_labels]
    owner, pad = assign_tokens([b[k] for b, k in zip(gt_boxes, keep)], grid, patch_size)
    M = pad.shape[1]
    lab = torch.zeros(B, M, dtype=torch.int64)
    for i, (lb, k) in enumerate(zip(gt_labels, keep)):  # one copy per image
        lab[i, : int(k.sum())] = lb[k].long()
    pos = owner >= 0
    idx = owner.clamp(min=0)
    target = torch.zeros(B, P, C)
    target.scatter_(2, lab.gather(1, idx).unsqueeze(-1), pos.float().unsqueeze(-1))
    n_pos = pos.sum().clamp(min=1)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    focal = (ce * ((1 - p) * target + p * (1 - target)) ** 2).sum() / n_pos
    box = pad.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))  # [B, P, 4]
    c = patch_centres(grid, patch_size)[None]
    ltrb = torch.cat([c - box[..., :2], box[..., 2:] - c], dim=-1).clamp(min=patch_size / 8)
    goal = torch.log(ltrb / patch_size).clamp(*BOX_LOG_RANGE)
    l1 = ((raw - goal).abs().sum(-1) * pos).sum() / n_pos
    return focal + l1


def fit_token_detector(
    model: nn.Module, steps: int = 40, batch: int = 4, seed: int = 0, lr: float = 3e-3
) -> list[float]:
    """Train a token-head example briefly on synthetic roadside scenes (SPEC §8) -> loss per step.

    ``model.training_losses(images, boxes, labels)`` returns ``(detection_loss, cass_loss)``; their
    sum is minimised with AdamW over every parameter (the model decides which of them each term
    reaches: the predictors see only CASS, as in SPEC §6). The model is left in eval mode.
    """
    torch.manual_seed(seed)
    ds = SyntheticRoadside(steps * batch, split="train", seed=seed, image_size=tuple(model.image_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for s in range(steps):
        b = collate([ds[i] for i in range(s * batch, (s + 1) * batch)])
        det, cass = model.training_losses(b["images"], b["boxes"], b["labels"])
        total = det + cass
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    model.eval()
    return losses


class TokenDetectorParts:
    """The PrunableModel parts of a token-head detector (mixed into an ``nn.Module`` with ``head``
    (a :class:`TokenHead`), ``max_dets``, ``det_score_thresh``, ``output_names(part)`` and a
    ``forward`` returning a dict with ``logits`` / ``boxes`` and the pruner outputs)."""

    def predictor_module(self) -> nn.Module:
        return TokenPart(self, "predictor")

    def full_module(self) -> nn.Module:
        return TokenPart(self, "full")

    def set_outputs(self, max_dets=None, raw_head=None, score_thresh=None):
        if raw_head:
            raise ValueError("this detector has no raw head maps; it always ends in the SPEC 6b detections")
        if max_dets is not None:
            self.max_dets = int(max_dets)
        if score_thresh is not None:
            self.det_score_thresh = float(score_thresh)
        return self

    def detections(self, out: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """Per-token candidates (every token x class) -> SPEC 6b's four tensors."""
        return self.head.detections(out["logits"], out["boxes"], self.max_dets, self.det_score_thresh)


class TokenPart(nn.Module):
    """``predictor_module()`` / ``full_module()`` of a :class:`TokenDetectorParts` detector: images ->
    the tuple named by ``output_names(part)``."""

    def __init__(self, det: nn.Module, part: str) -> None:
        super().__init__()
        self.det, self.part = det, part

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.det(images)
        if self.part == "full":
            out.update(zip(DET_OUTPUTS, self.det.detections(out)))
        return tuple(out[n] for n in self.det.output_names(self.part))


def save_weights(model: nn.Module, path) -> None:
    """``model``'s state dict to ``path`` (``.safetensors``, else ``torch.save``), parents created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        safetensors_torch.save_file(state, str(path))
    else:
        torch.save(state, path)
