"""Dense detection head (CenterNet style): module, training targets, loss and decoding.

Outputs on a grid of stride ``s`` (``Hh = H / s``, ``Wh = W / s``):

- ``heatmap [B, C, Hh, Wh]``: centre heat-map **logits** per class (``sigmoid`` → score).
- ``box [B, 4, Hh, Wh]``: ``(l, t, r, b)`` distances **in input pixels** from the cell centre
  ``((j + 0.5) * s, (i + 0.5) * s)`` to the box edges, positive (``s * exp(clamp(raw))``).

A detection is a 3×3 local maximum of the heat map; its box is read at the same cell.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cass_deploy.errors import InputError

BOX_LOG_RANGE = (-6.0, 6.0)  # clamp of the raw box logit before exp (Clip in ONNX)
MIN_TARGET_DISTANCE = 0.5  # px; see detection_targets (boxes smaller than a cell)
HEATMAP_PRIOR = 0.01  # initial foreground probability of the heat map
INSIDE_BOX_WEIGHT = 0.05  # regression weight floor of a box's cells outside its Gaussian window


# --------------------------------------------------------------------------- module


class ContextBlock(nn.Module):
    """Residual dilated 3×3 convolution on the token grid. ``[B, D, Hp, Wp]`` → same shape.

    ``separable=False`` (v1): ``x + GELU(conv_d(GELU(conv_1(x))))`` with a dense 3×3 (``10 D²`` MACs
    per token). ``separable=True`` (v2, lean): ``x + conv_1(GELU(dwconv_d(x)))``, a depthwise
    dilated 3×3 then a pointwise convolution (``D² + 9 D`` per token). A stack with dilations
    1, 2, 4 lets the head read ±7 patches (±112 px at patch 16) around a cell: the centre of a
    near-field truck is a flat panel that looks locally like road, and only its edges say where
    the truck is.
    """

    def __init__(self, dim: int, dilation: int, separable: bool = False) -> None:
        super().__init__()
        self.separable = separable
        if separable:
            self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=dilation, dilation=dilation, groups=dim)
            self.conv2 = nn.Conv2d(dim, dim, kernel_size=1)
        else:
            self.conv1 = nn.Conv2d(dim, dim, kernel_size=1)
            self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=dilation, dilation=dilation)
        self.act = nn.GELU()
        nn.init.zeros_(self.conv2.weight)  # starts as the identity: training decides how much context to add
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.separable:
            return x + self.conv2(self.act(self.conv1(x)))
        return x + self.act(self.conv2(self.act(self.conv1(x))))


class DenseHead(nn.Module):
    """token grid ``[B, D, Hp, Wp]`` (+ optional stem features ``[B, S, Hh, Wh]`` at the head stride)
    → (heatmap ``[B, C, Hh, Wh]`` logits, box ``[B, 4, Hh, Wh]`` px).

    ``context`` residual dilated convolutions on the token grid (dilations 1, 2, 4, ...; see
    :class:`ContextBlock`), then ``upsample = patch_size // head_stride``: a stride-``upsample``
    transposed convolution brings the token grid to the head stride (each token learns its
    sub-patch layout), plus, with ``skip_channels > 0``, a 1×1 projection of the stem's features
    at that stride (v2: where a far-field car sits inside its patch, which one 16-px token cannot
    say for four cars), then one 3×3 conv (depthwise + pointwise when ``separable``).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        upsample: int,
        head_stride: int,
        channels: int = 64,
        context: int = 0,
        *,
        separable: bool = False,
        skip_channels: int = 0,
    ) -> None:
        super().__init__()
        self.head_stride = head_stride
        self.context = nn.Sequential(*(ContextBlock(dim, 2**i, separable) for i in range(context)))
        if upsample > 1:
            self.up = nn.ConvTranspose2d(dim, channels, kernel_size=upsample, stride=upsample)
        else:
            self.up = nn.Conv2d(dim, channels, kernel_size=1)
        self.skip = nn.Conv2d(skip_channels, channels, kernel_size=1) if skip_channels else None
        if separable:
            self.conv = nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels),
                nn.Conv2d(channels, channels, kernel_size=1),
            )
        else:
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.GELU()
        self.cls = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.reg = nn.Conv2d(channels, 4, kernel_size=1)
        nn.init.constant_(self.cls.bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
        nn.init.normal_(self.reg.weight, std=0.01)
        nn.init.constant_(self.reg.bias, 0.0)

    def forward(self, grid: Tensor, skip: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.up(self.context(grid))
        if self.skip is not None:
            if skip is None:
                raise InputError("this head adds the stem's features at its stride: pass skip [B, S, Hh, Wh]")
            x = x + self.skip(skip)
        x = self.act(x)
        x = self.act(self.conv(x))
        raw = self.reg(x).clamp(min=BOX_LOG_RANGE[0], max=BOX_LOG_RANGE[1])
        return self.cls(x), torch.exp(raw) * float(self.head_stride)


# --------------------------------------------------------------------------- targets


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.7) -> Tensor:
    """CenterNet's radius (in cells) such that a corner shift keeps IoU ≥ ``min_overlap``."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt((b1**2 - 4 * a1 * c1).clamp(min=0))) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt((b2**2 - 4 * a2 * c2).clamp(min=0))) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt((b3**2 - 4 * a3 * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def _pad_boxes(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    image_size: tuple[int, int],
    num_classes: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate and pad to ``[B, M, 4]`` float, ``[B, M]`` long, valid ``[B, M]`` bool.

    Boxes are clipped to the image; a box left with zero area (entirely outside) is not valid
    and contributes nothing.
    """
    if len(boxes) != len(labels):
        raise InputError(f"got boxes for {len(boxes)} images but labels for {len(labels)}")
    h, w = image_size
    bsz = len(boxes)
    boxes = [torch.as_tensor(b, dtype=torch.float32, device=device) for b in boxes]
    labels = [torch.as_tensor(lb, device=device) for lb in labels]
    m = max([int(b.shape[0]) if b.dim() == 2 else 0 for b in boxes] + [1])
    out = torch.zeros(bsz, m, 4, dtype=torch.float32, device=device)
    lab = torch.zeros(bsz, m, dtype=torch.long, device=device)
    valid = torch.zeros(bsz, m, dtype=torch.bool, device=device)
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        if bx.numel() == 0 and lb.numel() == 0:
            continue
        if bx.dim() != 2 or bx.shape[1] != 4:
            raise InputError(f"image {i}: boxes must be [M, 4] x1,y1,x2,y2, got {list(bx.shape)}")
        if lb.dim() != 1 or lb.shape[0] != bx.shape[0]:
            raise InputError(f"image {i}: labels must be [{bx.shape[0]}], got {list(lb.shape)}")
        if lb.dtype.is_floating_point and not torch.equal(lb, lb.round()):
            raise InputError(f"image {i}: labels must be integers, got {lb.tolist()}")
        bad = ~torch.isfinite(bx).all(1) | (bx[:, 2] <= bx[:, 0]) | (bx[:, 3] <= bx[:, 1])
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise InputError(f"image {i} box {j}: invalid box {bx[j].tolist()} (need finite x1 < x2, y1 < y2)")
        lb = lb.long()
        badl = (lb < 0) | (lb >= num_classes)
        if bool(badl.any()):
            j = int(badl.nonzero()[0, 0])
            raise InputError(f"image {i} box {j}: label {int(lb[j])} outside [0, {num_classes})")
        clipped = torch.stack(
            [bx[:, 0].clamp(0, w), bx[:, 1].clamp(0, h), bx[:, 2].clamp(0, w), bx[:, 3].clamp(0, h)], dim=1
        )
        n = bx.shape[0]
        out[i, :n] = clipped
        lab[i, :n] = lb
        valid[i, :n] = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return out, lab, valid


def centre_cells(boxes: Tensor, image_size: Sequence[int], out_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The head cell holding each box's centre — the cell its heat-map peak is trained at.

    boxes ``[..., 4]`` xyxy input pixels; image_size ``(H, W)``; out_size ``(Hh, Wh)`` -> (row, col),
    each ``[...]`` in the boxes' float dtype (floored, clamped to the grid).
    """
    hh, wh = int(out_size[0]), int(out_size[1])
    sy, sx = int(image_size[0]) / hh, int(image_size[1]) / wh
    row = ((boxes[..., 1] + boxes[..., 3]) / 2 / sy).floor().clamp(0, hh - 1)
    col = ((boxes[..., 0] + boxes[..., 2]) / 2 / sx).floor().clamp(0, wh - 1)
    return row, col


def detection_targets(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    num_classes: int,
    device: torch.device | str | None = None,
    inside_weight: float = INSIDE_BOX_WEIGHT,
) -> dict[str, Tensor]:
    """CenterNet targets for a batch, vectorised over all boxes of all images.

    boxes: per image ``[M_b, 4]`` x1,y1,x2,y2 in input pixels; labels: per image ``[M_b]`` ints.
    Returns a dict of:

    - ``heatmap [B, C, Hh, Wh]``: per class, max over boxes of a Gaussian centred on the cell
      holding the box centre (peak exactly 1), radius from the box size in cells
      (``gaussian_radius``, min overlap 0.7), cut to the ``(2r+1)²`` window.
    - ``box [B, 4, Hh, Wh]``: ``(l, t, r, b)`` px from each cell centre to its assigned box
      (at least ``MIN_TARGET_DISTANCE`` px: a box smaller than a cell may not contain its
      centre cell's centre).
    - ``box_weight [B, Hh, Wh]``: regression weight = that box's Gaussian value, at least
      ``inside_weight``; every cell inside a box (centre inclusive) regresses, and the box's
      centre cell; a cell claimed by several boxes takes the one with the higher Gaussian (the
      smaller box on ties and outside every window). Regressing the whole box, not only its
      Gaussian window (issue 12), gives an off-centre peak of a large near-field vehicle a box
      that was trained: measured on the demo model, 35 % of near-field misses were such peaks.
    - ``num_objects``: scalar tensor, valid boxes in the batch.
    """
    h, w = int(image_size[0]), int(image_size[1])
    hh, wh = int(out_size[0]), int(out_size[1])
    dev = (
        torch.device(device)
        if device is not None
        else (boxes[0].device if len(boxes) and isinstance(boxes[0], Tensor) else torch.device("cpu"))
    )
    bx, lab, valid = _pad_boxes(boxes, labels, (h, w), num_classes, dev)
    sy, sx = h / hh, w / wh
    x1, y1, x2, y2 = bx.unbind(-1)  # [B, M]
    ci, cj = centre_cells(bx, (h, w), (hh, wh))
    radius = gaussian_radius((y2 - y1) / sy, (x2 - x1) / sx).floor().clamp(min=0)
    sigma = (2 * radius + 1) / 6
    ii = torch.arange(hh, dtype=torch.float32, device=dev).view(1, 1, hh, 1)
    jj = torch.arange(wh, dtype=torch.float32, device=dev).view(1, 1, 1, wh)
    dy = ii - ci[..., None, None]
    dx = jj - cj[..., None, None]
    r4 = radius[..., None, None]
    window = (dy.abs() <= r4) & (dx.abs() <= r4) & valid[..., None, None]  # [B, M, Hh, Wh]
    g = torch.exp(-(dx**2 + dy**2) / (2 * sigma[..., None, None] ** 2)) * window

    bsz, m = lab.shape
    row = (torch.arange(bsz, device=dev)[:, None] * num_classes + lab).reshape(-1, 1)  # [B*M, 1]
    heat = torch.zeros(bsz * num_classes, hh * wh, device=dev).scatter_reduce(
        0, row.expand(-1, hh * wh), g.reshape(bsz * m, hh * wh), reduce="amax"
    )
    heat = heat.view(bsz, num_classes, hh, wh)  # max-merge per class

    px = (jj + 0.5) * sx  # [1, 1, 1, Wh]
    py = (ii + 0.5) * sy  # [1, 1, Hh, 1]
    inside = (
        (px >= x1[..., None, None])
        & (px <= x2[..., None, None])
        & (py >= y1[..., None, None])
        & (py <= y2[..., None, None])
    )
    centre = (dy == 0) & (dx == 0)
    area = ((x2 - x1) * (y2 - y1) / float(h * w))[..., None, None]
    floor = torch.full_like(g, float(inside_weight))
    claim = valid[..., None, None] & (inside | centre)  # [B, M, Hh, Wh]
    weight_all = torch.where(claim, torch.maximum(g, floor), torch.zeros_like(g))
    key = torch.where(claim, torch.maximum(g, floor * 1e-3) * (1 - 1e-4 * area), torch.zeros_like(g))
    best, owner = key.max(dim=1)  # [B, Hh, Wh]
    own = bx.gather(1, owner.flatten(1)[..., None].expand(-1, -1, 4))  # [B, Hh*Wh, 4]
    own = own.view(bsz, hh, wh, 4)
    pxg, pyg = px[0, 0], py[0, 0]  # [1, Wh], [Hh, 1]
    ltrb = torch.stack(
        [pxg - own[..., 0], pyg - own[..., 1], own[..., 2] - pxg, own[..., 3] - pyg], dim=1
    )  # [B, 4, Hh, Wh]
    ltrb = ltrb.clamp(min=MIN_TARGET_DISTANCE)
    weight = torch.where(best > 0, weight_all.gather(1, owner[:, None]).squeeze(1), torch.zeros_like(best))
    return {"heatmap": heat, "box": ltrb, "box_weight": weight, "num_objects": valid.sum()}


# --------------------------------------------------------------------------- loss


def focal_heatmap_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet penalty-reduced focal loss, **summed** (divide by the object count).

    logits, target: ``[B, C, Hh, Wh]``; positives are cells with ``target == 1``.
    """
    p = torch.sigmoid(logits)
    pos = target >= 1.0
    pos_term = -((1 - p) ** alpha) * F.logsigmoid(logits)
    neg_term = -((1 - target) ** beta) * (p**alpha) * F.logsigmoid(-logits)
    return torch.where(pos, pos_term, neg_term).sum()


def ltrb_giou(pred: Tensor, target: Tensor) -> Tensor:
    """GIoU of boxes given as ``(l, t, r, b)`` distances from the same point; ``[..., 4]`` → ``[...]``."""
    pl, pt, pr, pb = pred.unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    area_p = (pl + pr) * (pt + pb)
    area_t = (tl + tr) * (tt + tb)
    inter = (torch.minimum(pl, tl) + torch.minimum(pr, tr)) * (torch.minimum(pt, tt) + torch.minimum(pb, tb))
    union = area_p + area_t - inter
    enclose = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (torch.maximum(pt, tt) + torch.maximum(pb, tb))
    iou = inter / union.clamp(min=1e-6)
    return iou - (enclose - union) / enclose.clamp(min=1e-6)


def detection_loss(
    outputs: Mapping[str, Tensor],
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    image_size: tuple[int, int] | None = None,
    *,
    head_stride: int = 8,
    box_weight: float = 1.0,
    l1_weight: float = 0.5,
) -> dict[str, Tensor]:
    """Detection loss → ``{"total", "heatmap", "box"}`` (scalars; ``total`` is differentiable).

    outputs: ``heatmap [B, C, Hh, Wh]`` logits and ``box [B, 4, Hh, Wh]`` px (the detector's
    forward). ``image_size``: input ``(H, W)``; default ``(Hh, Wh) * head_stride``.
    heatmap = focal loss / max(1, number of objects); box = weighted mean over regression cells
    of ``(1 - GIoU) + l1_weight * |log(pred / target)|`` (scale-free L1); total = heatmap +
    box_weight * box. Images without boxes contribute background only; a batch without any box
    gives a finite loss with box = 0.
    """
    heat_logits, box = outputs["heatmap"], outputs["box"]
    bsz, c, hh, wh = heat_logits.shape
    if box.shape != (bsz, 4, hh, wh):
        raise InputError(f"box output must be [{bsz}, 4, {hh}, {wh}], got {list(box.shape)}")
    if len(boxes) != bsz:
        raise InputError(f"outputs hold {bsz} images but boxes were given for {len(boxes)}")
    if image_size is None:
        image_size = (hh * head_stride, wh * head_stride)
    t = detection_targets(boxes, labels, image_size, (hh, wh), c, device=heat_logits.device)
    n_obj = t["num_objects"].clamp(min=1).to(heat_logits.dtype)
    hm = focal_heatmap_loss(heat_logits.float(), t["heatmap"]) / n_obj

    wgt = t["box_weight"]  # [B, Hh, Wh]
    pos = wgt > 0
    pred = box.float().permute(0, 2, 3, 1)[pos]  # [N, 4]
    tgt = t["box"].permute(0, 2, 3, 1)[pos]
    wp = wgt[pos]
    if pred.shape[0] == 0:
        box_loss = box.sum() * 0.0
    else:
        giou = 1 - ltrb_giou(pred, tgt)
        l1 = (pred.clamp(min=1e-6).log() - tgt.log()).abs().mean(-1)
        box_loss = ((giou + l1_weight * l1) * wp).sum() / wp.sum()
    total = hm + box_weight * box_loss
    return {"total": total, "heatmap": hm.detach(), "box": box_loss.detach()}


# --------------------------------------------------------------------------- decode


#: the decodes: ``peak`` (v1: 3×3 max-pool peaks, one peak per 2×2 block of cells per class) and
#: ``nms`` (v2: the best cells, then class-aware Fast NMS on their boxes — neighbouring cells can
#: both be detections when their boxes do not overlap, as crowded far-field cars need)
#: ``vehicle``: like ``nms`` on one class-agnostic map, the probability that a vehicle of any
#: class is centred at a cell, ``1 - prod_c (1 - p_c)`` (noisy-OR of the per-class heat maps),
#: labelled with its most likely class — a truck the head splits between "truck" 0.25 and "bus"
#: 0.2 scores 0.4, not 0.25 (recall by field counts vehicles whatever their class)
DECODES = ("peak", "nms", "vehicle")
DEFAULT_DECODE = "vehicle"
DEFAULT_NMS_CANDIDATES = 256  # cells ranked before NMS, per image (512: same recall, 4x the NMS matrix)
DEFAULT_NMS_IOU = 0.5


def _check_decode(method: str, candidates: int, iou: float) -> None:
    if method not in DECODES:
        raise InputError(f"decode must be one of {list(DECODES)}, got {method!r}")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise InputError(f"decode candidates must be an integer >= 1, got {candidates!r}")
    if not isinstance(iou, (int, float)) or not 0.0 < iou <= 1.0:
        raise InputError(f"NMS IoU threshold must be in (0, 1], got {iou!r}")


def _cells_to_boxes(
    idx: Tensor, box: Tensor, hw: tuple[int, int], image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Flat (class, cell) indices ``[B, k]`` → (labels ``[B, k]`` int64, boxes ``[B, k, 4]`` xyxy px)."""
    hh, wh = hw
    h, w = int(image_size[0]), int(image_size[1])
    sy, sx = h / hh, w / wh
    cls = torch.div(idx, hh * wh, rounding_mode="floor")
    cell = idx - cls * (hh * wh)
    row = torch.div(cell, wh, rounding_mode="floor")
    col = cell - row * wh
    ltrb = box.float().flatten(2).gather(2, cell[:, None].expand(-1, 4, -1))  # [B, 4, k]
    px = (col.float() + 0.5) * sx
    py = (row.float() + 0.5) * sy
    xyxy = torch.stack(
        [
            (px - ltrb[:, 0]).clamp(0, w),
            (py - ltrb[:, 1]).clamp(0, h),
            (px + ltrb[:, 2]).clamp(0, w),
            (py + ltrb[:, 3]).clamp(0, h),
        ],
        dim=-1,
    )
    return cls, xyxy


def fast_nms_keep(
    boxes: Tensor, labels: Tensor | None, iou_thr: float, scores: Tensor | None = None, keys: Tensor | None = None
) -> Tensor:
    """Fast NMS (YOLACT): ``boxes [B, M, 4]`` xyxy, ``labels [B, M]`` (None: class-agnostic) →
    keep ``[B, M]`` bool: a candidate is dropped when a better one of the same class overlaps it
    with IoU > ``iou_thr``.
    "Better": a higher ``scores [B, M]``, ties broken by a lower ``keys [B, M]`` (unique, e.g. the
    flat cell index), compared at run time so the graph holds no ``[M, M]`` constant; without
    scores, an earlier position (candidates sorted by score). One matrix, no loop."""
    # one [B, M] vector per coordinate, compared as [B, M, 1] x [B, 1, M]: the same float ops as
    # [B, M, M, 2] corner tensors, but broadcasts ONNX Runtime runs at full speed (an inner
    # dimension of 2 made the IoU matrix ~1 ms of a 10 ms CPU run)
    x1, y1, x2, y2 = boxes.unbind(dim=-1)  # [B, M] each
    area = (x2 - x1) * (y2 - y1)  # [B, M]
    w = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])).clamp(min=0)
    h = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])).clamp(min=0)
    inter = w * h  # [B, M, M]
    iou = inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1e-6)
    if scores is None:
        pos = torch.arange(boxes.shape[1], device=boxes.device)
        better = pos[None, None, :] < pos[None, :, None]  # [1, M, M]: column j ranks above row i
    else:
        sj, si = scores[:, None, :], scores[:, :, None]
        better = (sj > si) | ((sj == si) & (keys[:, None, :] < keys[:, :, None]))
    clash = (iou > iou_thr) & better
    if labels is not None:
        clash = clash & (labels[:, :, None] == labels[:, None, :])
    # a sum of 0/1 (exact), not any()/amax(): ReduceSum takes its axes as an input from opset 13 on,
    # so the graph converts between opsets 17 and 18 (ReduceMax's axes moved in 18)
    return clash.to(torch.float32).sum(dim=2) == 0


def _peak_topk(
    heat_logits: Tensor,
    box: Tensor,
    image_size: tuple[int, int],
    max_dets: int,
    method: str = DEFAULT_DECODE,
    candidates: int = DEFAULT_NMS_CANDIDATES,
    iou: float = DEFAULT_NMS_IOU,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k = min(max_dets, ...)`` best detections per image, as tensors.

    heat_logits ``[B, C, Hh, Wh]``, box ``[B, 4, Hh, Wh]`` ltrb px → (scores ``[B, k]`` sigmoid,
    descending; labels ``[B, k]`` int64; boxes ``[B, k, 4]`` xyxy input pixels clipped to the image).
    ``peak``: the best 3×3 max-pool peaks. ``nms``: the ``candidates`` best (class, cell) pairs,
    class-aware Fast NMS at ``iou``, then the best survivors (suppressed ones score 0).
    Export-friendly (MaxPool, TopK, Gather, integer Div; no Mod, no NonZero), so the same code
    runs in the Python decode and in the graph.
    """
    bsz, c, hh, wh = heat_logits.shape
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise InputError(f"max_dets must be an integer >= 1, got {max_dets!r}")
    _check_decode(method, candidates, iou)
    if method == "peak":
        heat = torch.sigmoid(heat_logits.float())
        peak = heat == F.max_pool2d(heat, kernel_size=3, stride=1, padding=1)
        scores, idx = (heat * peak.to(heat.dtype)).flatten(1).topk(min(max_dets, c * hh * wh), dim=1)
        cls, xyxy = _cells_to_boxes(idx, box, (hh, wh), image_size)
        return scores, cls, xyxy
    if method == "vehicle":
        # noisy-OR 1 - prod_c (1 - p_c), accumulated as u <- u + p_c (1 - u): no 1 - (a number near 1),
        # so a small score keeps its precision in an fp16 graph; Sigmoid / Mul / Add, which ONNX
        # Runtime vectorises (its Softplus, the log-space form, ran at ~9 ns per cell: 2 % of a CPU run)
        p_class = torch.sigmoid(heat_logits.float()).unbind(dim=1)  # C x [B, Hh, Wh]
        any_class = functools.reduce(lambda u, p: u + p * (1.0 - u), p_class)  # [B, Hh, Wh]
        cand, idx = any_class.flatten(1).topk(min(candidates, hh * wh), dim=1)  # [B, M] cells
        cls = heat_logits.argmax(dim=1).flatten(1).gather(1, idx).to(torch.int64)  # [B, M] most likely class
        _, xyxy = _cells_to_boxes(idx, box, (hh, wh), image_size)
        keep = fast_nms_keep(xyxy, None, iou, cand, idx)  # class-agnostic
    else:
        cand, idx = torch.sigmoid(heat_logits.float()).flatten(1).topk(min(candidates, c * hh * wh), dim=1)
        cls, xyxy = _cells_to_boxes(idx, box, (hh, wh), image_size)
        keep = fast_nms_keep(xyxy, cls, iou, cand, idx)
    scores, order = (cand * keep.to(cand.dtype)).topk(min(max_dets, cand.shape[1]), dim=1)
    return scores, cls.gather(1, order), xyxy.gather(1, order[..., None].expand(-1, -1, 4))


def decode(
    outputs: Mapping[str, Tensor],
    image_size: tuple[int, int],
    score_thresh: float = 0.05,
    max_dets: int = 100,
    *,
    method: str = DEFAULT_DECODE,
    candidates: int = DEFAULT_NMS_CANDIDATES,
    iou: float = DEFAULT_NMS_IOU,
) -> list[dict[str, Tensor]]:
    """Head maps → detections per image (``method``: see :func:`_peak_topk`).

    The ``max_dets`` best detections per image, kept when ``score >= score_thresh``. Returns per
    image ``boxes [D, 4]`` float xyxy pixels (clipped to the image), ``scores [D]``, ``labels [D]``
    int64, sorted by score.
    """
    with torch.no_grad():
        scores, cls, xyxy = _peak_topk(
            outputs["heatmap"], outputs["box"], image_size, max_dets, method, candidates, iou
        )
    results = []
    for b in range(scores.shape[0]):
        keep = scores[b] >= score_thresh
        results.append({"boxes": xyxy[b][keep], "scores": scores[b][keep], "labels": cls[b][keep]})
    return results


# --------------------------------------------------------------------------- deployed outputs (SPEC §6b)

#: default ``N`` of the deployed outputs (``--max-dets``) and the score below which rows are padding
DEFAULT_MAX_DETS = 100
DEFAULT_DET_SCORE_THRESH = 0.01


def pack_detections(
    scores: Tensor, boxes: Tensor, labels: Tensor, max_dets: int, score_thresh: float = DEFAULT_DET_SCORE_THRESH
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidate detections → the EfficientNMS layout of SPEC §6b (export-friendly, any model).

    scores ``[B, M]`` (probabilities), boxes ``[B, M, 4]`` xyxy input pixels, labels ``[B, M]``
    integer → ``num_dets [B, 1]`` int32, ``det_boxes [B, N, 4]`` float32, ``det_scores [B, N]``
    float32 (descending), ``det_classes [B, N]`` int32 with ``N = max_dets``: the ``N`` best
    candidates (TopK), rows with ``score < score_thresh`` and rows past ``M`` set to zero, so the
    valid rows are the first ``num_dets``.
    """
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise InputError(f"max_dets must be an integer >= 1, got {max_dets!r}")
    m = scores.shape[1]
    k = min(max_dets, m)
    top, idx = scores.float().topk(k, dim=1)
    sel_boxes = boxes.float().gather(1, idx[..., None].expand(-1, -1, 4))
    sel_labels = labels.gather(1, idx)
    return _pad_packed(top, sel_boxes, sel_labels, max_dets, score_thresh)


def _pad_packed(
    top: Tensor, boxes: Tensor, labels: Tensor, max_dets: int, score_thresh: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sorted candidates ``[B, k]`` (k ≤ N) → the four §6b tensors, invalid rows zero, padded to N."""
    valid = top >= score_thresh
    det_scores = torch.where(valid, top, torch.zeros_like(top))
    det_boxes = boxes * valid[..., None].to(boxes.dtype)
    det_classes = torch.where(valid, labels, torch.zeros_like(labels)).to(torch.int32)
    num_dets = valid.to(torch.int32).sum(dim=1, keepdim=True).to(torch.int32)
    pad = max_dets - top.shape[1]
    if pad > 0:
        det_scores = F.pad(det_scores, (0, pad))
        det_boxes = F.pad(det_boxes, (0, 0, 0, pad))
        det_classes = F.pad(det_classes, (0, pad))
    return num_dets, det_boxes, det_scores, det_classes


def deployed_detections(
    heat_logits: Tensor,
    box: Tensor,
    image_size: tuple[int, int],
    max_dets: int = DEFAULT_MAX_DETS,
    score_thresh: float = DEFAULT_DET_SCORE_THRESH,
    *,
    method: str = DEFAULT_DECODE,
    candidates: int = DEFAULT_NMS_CANDIDATES,
    iou: float = DEFAULT_NMS_IOU,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The reference head's decode in the graph: heatmap ``[B, C, Hh, Wh]`` logits and box
    ``[B, 4, Hh, Wh]`` → ``(num_dets, det_boxes, det_scores, det_classes)`` (SPEC §6b, see
    :func:`pack_detections`). Same peaks, order and boxes as :func:`decode` with the same
    ``score_thresh``, ``max_dets`` and decode settings."""
    scores, cls, xyxy = _peak_topk(heat_logits, box, image_size, max_dets, method, candidates, iou)
    return _pad_packed(scores, xyxy, cls, max_dets, score_thresh)
