"""CASS loss: per-patch losses, the four normalisations, the TV term (SPEC §3–§4).

Public call::

    out = CassLoss(CassConfig.preset("corrected"))(logits, boxes, grid=(Hp, Wp), image_size=(H, W))
    out.total.backward()

``logits: [B, P]`` raw importance scores (``P = Hp * Wp``), ``boxes``: list of B ``[M_b, 4]``
pixel xyxy tensors. ``out`` carries the total and its contributions
(``total == object_term + background_term + tv_term``) and the supervised-object counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cass_deploy.cass.targets import (
    BoxList,
    BoxPatchPairs,
    FlatBoxes,
    box_patch_pairs,
    check_geometry,
    flatten_boxes,
    merge_max,
    owner_from_pairs,
)
from cass_deploy.config import CassConfig
from cass_deploy.errors import ConfigError, InputError

# --------------------------------------------------------------------------- per-patch losses


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 2.0) -> Tensor:
    """Soft focal loss per element: ``-(1-p)^a log(p) y - p^b log(1-p) (1-y)``, ``p = sigmoid(x)``.

    Uses log-sigmoid, so it is finite for any finite logit. logits, target: same shape.
    """
    log_p = F.logsigmoid(logits)
    log_q = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    q = torch.sigmoid(-logits)
    return -(q.pow(alpha) * log_p * target) - (p.pow(beta) * log_q * (1 - target))


def mse_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Squared error per element: ``(sigmoid(x) - y)^2``."""
    return (torch.sigmoid(logits) - target).pow(2)


def per_patch_loss(logits: Tensor, target: Tensor, cfg: CassConfig) -> Tensor:
    """Per-element loss of ``cfg.loss_type`` -> same shape as ``logits``."""
    if cfg.loss_type == "focal":
        return focal_loss(logits, target, cfg.alpha, cfg.beta)
    return mse_loss(logits, target)


def tv_term(logits: Tensor, grid: Sequence[int]) -> Tensor:
    """Total variation of probabilities on the grid: ``mean|Δrows p| + mean|Δcols p|`` -> scalar.

    logits: [B, P]. A grid of one row (or column) contributes 0 for that direction.
    """
    Hp, Wp = grid
    p = torch.sigmoid(logits).view(-1, Hp, Wp)
    zero = logits.sum() * 0
    rows = (p[:, 1:, :] - p[:, :-1, :]).abs().mean() if Hp > 1 else zero
    cols = (p[:, :, 1:] - p[:, :, :-1]).abs().mean() if Wp > 1 else zero
    return rows + cols


# --------------------------------------------------------------------------- result


@dataclass
class CassLossOutput:
    """Result of one CASS evaluation.

    total: scalar; object_term / background_term / tv_term: scalar contributions with
    ``total == object_term + background_term + tv_term``; n_objects: boxes in the batch;
    n_supervised: objects that receive positive supervision (``object``: own >= 1 patch; other
    modes: have a positive single-box target); n_unsupervised = n_objects - n_supervised;
    target: [B, P] merged soft target (no grad); owner: [B, P] int64 owner box (``object`` only,
    else None); per_patch: [B, P] per-patch loss (with grad); contribution: [B, P] (detached,
    only with ``contributions=True``) each patch's share of ``object_term + background_term``,
    so that it sums to that value for every normalisation.
    """

    total: Tensor
    object_term: Tensor
    background_term: Tensor
    tv_term: Tensor
    n_objects: int
    n_supervised: int
    n_unsupervised: int
    target: Tensor
    per_patch: Tensor
    owner: Tensor | None = None
    contribution: Tensor | None = None

    def to_dict(self) -> dict:
        return {
            "total": float(self.total.detach()),
            "object_term": float(self.object_term.detach()),
            "background_term": float(self.background_term.detach()),
            "tv_term": float(self.tv_term.detach()),
            "n_objects": self.n_objects,
            "n_supervised": self.n_supervised,
            "n_unsupervised": self.n_unsupervised,
        }


# --------------------------------------------------------------------------- normalisations


def _patch_norm(loss: Tensor, target: Tensor, scored: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Seed baseline: plain mean over all B*P patches (the ``scored`` ones), split into positive /
    background parts."""
    n = loss.numel() if scored is None else scored.sum().clamp(min=1)
    pos = target > 0
    loss = loss if scored is None else torch.where(scored, loss, torch.zeros_like(loss))
    obj = torch.where(pos, loss, torch.zeros_like(loss)).sum() / n
    bg = torch.where(pos, torch.zeros_like(loss), loss).sum() / n
    return obj, bg


def _area_norm(loss: Tensor, pairs: BoxPatchPairs, flat: FlatBoxes) -> Tensor:
    """Seed plan 2: weight = largest covering box's area fraction; weighted mean over weight > 0."""
    weight = loss.new_zeros(loss.numel())
    area = flat.area_fraction().to(loss.dtype).index_select(0, pairs.box)
    area = torch.where(pairs.covered, area, torch.zeros_like(area))
    weight.scatter_reduce_(0, pairs.flat, area, reduce="amax", include_self=True)
    total_w = weight.sum()
    return (weight * loss.reshape(-1)).sum() / total_w.clamp_min(torch.finfo(loss.dtype).tiny)


def _seed_object_norm(
    logits: Tensor, loss_zero: Tensor, pairs: BoxPatchPairs, flat: FlatBoxes, cfg: CassConfig
) -> Tensor:
    """Seed plan 1, literally, vectorised: mean over boxes of (mean over P of the full image's
    loss against the single-box mask) times the box's pixel area.

    For box n of image b, sum_p l(x_bp, v_np) = sum_p l(x_bp, 0) + sum over n's pairs of
    (l(x, v) - l(x, 0)), since v is 0 outside n's enumerated patches.
    """
    B, P = logits.shape
    N = flat.num_boxes
    if N == 0:
        return logits.sum() * 0
    x = logits.reshape(-1).index_select(0, pairs.flat)
    diff = per_patch_loss(x, pairs.value.to(logits.dtype), cfg) - loss_zero.reshape(-1).index_select(0, pairs.flat)
    per_box = logits.new_zeros(N).index_add(0, pairs.box, diff)
    per_box = per_box + loss_zero.sum(dim=1).index_select(0, flat.batch)
    return (per_box / P * flat.area_pixels().to(logits.dtype)).mean()


def _object_norm(loss: Tensor, owner: Tensor, flat: FlatBoxes, cfg: CassConfig) -> tuple[Tensor, Tensor, int]:
    """Our correction: mean loss per owned object, weighted by area^gamma, divided by N; plus
    the mean over background patches. Returns (L_obj, L_bg, n_supervised)."""
    N = flat.num_boxes
    lf = loss.reshape(-1)
    of = owner.reshape(-1)
    owned = of >= 0
    background = of == -1  # -2: a patch no stage scores (multi-stage CASS), in neither term
    idx = of.clamp(min=0)
    zero = lf.sum() * 0
    bg_count = background.sum()
    l_bg = torch.where(background, lf, torch.zeros_like(lf)).sum() / bg_count.clamp(min=1)
    if N == 0:
        return zero, l_bg, 0
    sums = lf.new_zeros(N).index_add(0, idx, torch.where(owned, lf, torch.zeros_like(lf)))
    counts = lf.new_zeros(N).index_add(0, idx, owned.to(lf.dtype))
    supervised = counts > 0
    n_sup = int(supervised.sum())
    if n_sup == 0:
        return zero, l_bg, 0
    mean_o = sums / counts.clamp(min=1)
    return (_object_weights(supervised, flat, cfg, lf.dtype) * mean_o).sum() / n_sup, l_bg, n_sup


def _object_weights(supervised: Tensor, flat: FlatBoxes, cfg: CassConfig, dtype: torch.dtype) -> Tensor:
    """w_o = area_o^gamma / mean over supervised objects of area^gamma -> [N] (0 if unsupervised)."""
    if cfg.area_gamma == 0:
        return supervised.to(dtype)
    area = flat.area_fraction().to(dtype).clamp_min(torch.finfo(dtype).tiny)
    w = torch.where(supervised, area.pow(cfg.area_gamma), torch.zeros_like(area))
    return w / (w.sum() / supervised.sum().clamp(min=1))


# --------------------------------------------------------------------------- module


def target_options(cfg: CassConfig) -> dict[str, Any]:
    """The soft target's shape in ``cfg`` as keyword arguments of
    :func:`~cass_deploy.cass.targets.box_patch_pairs` and :func:`~cass_deploy.cass.targets.patch_owner`."""
    return {
        "expansion_ratio": cfg.expansion_ratio,
        "context_peak": cfg.context_peak,
        "decay": cfg.decay,
        "ensure_center_patch": cfg.ensure_center_patch,
    }


def _check_logits(logits: Tensor, boxes: BoxList, grid: Sequence[int]) -> None:
    if not isinstance(logits, Tensor):
        raise InputError(f"logits must be a torch.Tensor [B, P], got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise InputError(f"logits must be floating point, got dtype {logits.dtype}")
    Hp, Wp = grid
    if logits.dim() != 2 or logits.shape[1] != Hp * Wp:
        raise InputError(f"logits must have shape [B, {Hp * Wp}] for grid {Hp}x{Wp}, got {list(logits.shape)}")
    if len(boxes) != logits.shape[0]:
        raise InputError(f"got {len(boxes)} box lists for a batch of {logits.shape[0]} images")
    if not bool(torch.isfinite(logits).all()):
        raise InputError("logits contain NaN or inf; CASS refuses to produce a NaN loss")


def cass_loss(
    logits: Tensor,
    boxes: BoxList,
    grid: Sequence[int],
    image_size: Sequence[int],
    cfg: CassConfig | None = None,
    *,
    contributions: bool = False,
    scored: Tensor | None = None,
) -> CassLossOutput:
    """CASS loss of ``logits [B, P]`` against the soft target of ``boxes`` (SPEC §2–§4).

    ``contributions=True`` also returns each patch's contribution to the data term (for
    diagnostics; costs a few extra kernels). ``scored`` [B, P] bool: only these patches count
    (a later pruning stage scores only the tokens the earlier one kept, SPEC §6c); the target is
    the same soft target, an object owning no scored patch is unsupervised. ``patch`` and
    ``object`` normalisation only.
    """
    cfg = cfg or CassConfig()
    (Hp, Wp), (H, W) = check_geometry(grid, image_size)
    _check_logits(logits, boxes, (Hp, Wp))
    if scored is not None and (cfg.normalization not in ("patch", "object") or contributions):
        raise ConfigError(
            f"CASS on a later stage's kept tokens needs 'patch' or 'object' normalisation without "
            f"contributions, got {cfg.normalization!r}"
        )
    flat, pairs, target, owner = _soft_target(logits, boxes, (Hp, Wp), (H, W), cfg, scored)
    target_l = target.to(logits.dtype)
    loss = per_patch_loss(logits, target_l, cfg)
    obj_term, bg_term, n_sup = _data_terms(logits, loss, target_l, flat, pairs, owner, cfg, scored)
    zero = logits.sum() * 0
    N = flat.num_boxes
    tv = cfg.tv_weight * tv_term(logits, (Hp, Wp)) if cfg.tv_weight > 0 else zero
    contrib = None
    if contributions:
        with torch.no_grad():
            contrib = _contributions(logits.detach(), loss.detach(), target_l, owner, pairs, flat, cfg)
    return CassLossOutput(
        total=obj_term + bg_term + tv,
        object_term=obj_term,
        background_term=bg_term,
        tv_term=tv,
        n_objects=N,
        n_supervised=n_sup,
        n_unsupervised=N - n_sup,
        target=target_l.detach(),
        per_patch=loss,
        owner=owner,
        contribution=contrib,
    )


@torch.no_grad()
def _soft_target(
    logits: Tensor,
    boxes: BoxList,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    cfg: CassConfig,
    scored: Tensor | None,
) -> tuple[FlatBoxes, BoxPatchPairs, Tensor, Tensor | None]:
    """The boxes' soft target on the grid (no grad) -> (flat boxes, box-patch pairs, merged target
    [B, P] in the geometry dtype, owner [B, P] int64 for ``object`` normalisation else None; a patch
    outside ``scored`` is owned by -2, in neither term)."""
    B, P = logits.shape
    geo_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    flat = flatten_boxes(boxes, image_size, device=logits.device, dtype=geo_dtype)
    pairs = box_patch_pairs(flat, grid, **target_options(cfg))
    target = merge_max(pairs, B, P)
    owner = owner_from_pairs(pairs, flat, target) if cfg.normalization == "object" else None
    if owner is not None and scored is not None:
        owner = torch.where(scored.to(owner.device), owner, torch.full_like(owner, -2))
    return flat, pairs, target, owner


def _data_terms(
    logits: Tensor,
    loss: Tensor,
    target_l: Tensor,
    flat: FlatBoxes,
    pairs: BoxPatchPairs,
    owner: Tensor | None,
    cfg: CassConfig,
    scored: Tensor | None,
) -> tuple[Tensor, Tensor, int]:
    """The object and background terms of ``cfg.normalization`` (scalars) and the number of
    supervised objects. loss, target_l: [B, P] per-patch loss and soft target."""
    if cfg.normalization == "object":
        l_obj, l_bg, n_sup = _object_norm(loss, owner, flat, cfg)
        return l_obj, cfg.bg_weight * l_bg, n_sup
    zero = logits.sum() * 0
    n_sup = _positive_objects(pairs, flat.num_boxes, scored, logits.device)
    if cfg.normalization == "patch":
        obj_term, bg_term = _patch_norm(loss, target_l, scored)
    elif cfg.normalization == "area":
        obj_term, bg_term = _area_norm(loss, pairs, flat), zero
    else:  # seed_object
        loss_zero = per_patch_loss(logits, torch.zeros_like(logits), cfg)
        obj_term, bg_term = _seed_object_norm(logits, loss_zero, pairs, flat, cfg), zero
    return obj_term, bg_term, n_sup


@torch.no_grad()
def _positive_objects(pairs: BoxPatchPairs, N: int, scored: Tensor | None, device: torch.device) -> int:
    """Objects with a positive single-box target on at least one (``scored``) patch."""
    pos = torch.zeros(N, dtype=torch.int64, device=device)
    live = pairs.value > 0
    if scored is not None:
        live = live & scored.reshape(-1).index_select(0, pairs.flat)
    pos.index_add_(0, pairs.box, live.long())
    return int((pos > 0).sum())


def _contributions(
    logits: Tensor,
    loss: Tensor,
    target: Tensor,
    owner: Tensor | None,
    pairs: BoxPatchPairs,
    flat: FlatBoxes,
    cfg: CassConfig,
) -> Tensor:
    """Per-patch contribution [B, P] to the data term of each normalisation (sums to it)."""
    B, P = loss.shape
    lf = loss.reshape(-1)
    N = flat.num_boxes
    if cfg.normalization == "patch":
        return loss / loss.numel()
    if cfg.normalization == "area":
        w = lf.new_zeros(B * P)
        area = flat.area_fraction().to(lf.dtype).index_select(0, pairs.box)
        w.scatter_reduce_(
            0, pairs.flat, torch.where(pairs.covered, area, torch.zeros_like(area)), reduce="amax", include_self=True
        )
        return (w * lf / w.sum().clamp_min(torch.finfo(lf.dtype).tiny)).view(B, P)
    if cfg.normalization == "seed_object":
        if N == 0:
            return torch.zeros_like(loss)
        a = flat.area_pixels().to(lf.dtype) / (N * P)
        loss_zero = per_patch_loss(logits, torch.zeros_like(logits), cfg)
        per_image = lf.new_zeros(B).index_add(0, flat.batch, a)
        out = (loss_zero * per_image[:, None]).reshape(-1)
        x = logits.reshape(-1).index_select(0, pairs.flat)
        diff = per_patch_loss(x, pairs.value.to(lf.dtype), cfg) - loss_zero.reshape(-1).index_select(0, pairs.flat)
        out.index_add_(0, pairs.flat, a.index_select(0, pairs.box) * diff)
        return out.view(B, P)
    # object
    of = owner.reshape(-1)
    owned = of >= 0
    idx = of.clamp(min=0)
    bg = (~owned).to(lf.dtype)
    out = cfg.bg_weight * bg * lf / bg.sum().clamp(min=1)
    if N:
        counts = lf.new_zeros(N).index_add(0, idx, owned.to(lf.dtype))
        supervised = counts > 0
        n_sup = supervised.sum().clamp(min=1)
        per_obj = _object_weights(supervised, flat, cfg, lf.dtype) / counts.clamp(min=1) / n_sup
        out = out + torch.where(owned, per_obj.index_select(0, idx) * lf, torch.zeros_like(lf))
    return out.view(B, P)


def stage_cass_loss(
    stage_logits: Sequence[Tensor],
    stage_masks: Sequence[Tensor],
    boxes: BoxList,
    grid: Sequence[int],
    image_size: Sequence[int],
    cfg: CassConfig | None = None,
) -> tuple[Tensor, list[CassLossOutput]]:
    """CASS on every pruning stage (SPEC §6c) -> (mean of the stages' totals, per-stage outputs).

    stage_logits: S tensors [B, P] over the original grid (``scores_s``); stage_masks: S tensors
    [B, P] bool (``keep_mask_s``, nested). Stage 1 is supervised on every patch, stage ``s`` on
    the patches stage ``s - 1`` kept, each against the same soft target of ``boxes``.
    """
    if len(stage_logits) != len(stage_masks) or not stage_logits:
        raise InputError(f"got {len(stage_logits)} stage score maps and {len(stage_masks)} keep masks")
    outs = [
        cass_loss(logits, boxes, grid, image_size, cfg, scored=None if s == 0 else stage_masks[s - 1].bool())
        for s, logits in enumerate(stage_logits)
    ]
    return torch.stack([o.total for o in outs]).mean(), outs


class CassLoss(nn.Module):
    """``nn.Module`` wrapper holding a :class:`CassConfig`; see :func:`cass_loss`."""

    def __init__(self, cfg: CassConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or CassConfig()

    @classmethod
    def preset(cls, name: str, **overrides) -> CassLoss:
        return cls(CassConfig.preset(name, **overrides))

    def forward(self, logits: Tensor, boxes: BoxList, grid: Sequence[int], image_size: Sequence[int]) -> CassLossOutput:
        return cass_loss(logits, boxes, grid, image_size, self.cfg)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"normalization={c.normalization}, loss={c.loss_type}, area_gamma={c.area_gamma}"


def total_loss(detection_loss: Tensor, cass: CassLossOutput | Tensor, cfg: CassConfig, epoch: int) -> Tensor:
    """``detection_loss + cass_weight(epoch) * cass`` with CASS off during warm-up (SPEC §4)."""
    value = cass.total if isinstance(cass, CassLossOutput) else cass
    w = cfg.cass_weight_at(epoch)
    return detection_loss + w * value if w > 0 else detection_loss + 0 * value
