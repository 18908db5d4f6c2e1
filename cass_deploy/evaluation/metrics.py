"""Detection and pruning metrics (SPEC §7 ``validate``): IoU, greedy matching, recall by field and
object size, mAP@0.5 through pycocotools, and the pruner's per-object patch retention.

Conventions: boxes are pixel ``x1, y1, x2, y2`` of the network input of size ``(H, W)``; an image's
predictions are a mapping ``{"boxes": [D, 4], "scores": [D], "labels": [D]}`` and its ground truth
``{"boxes": [M, 4], "labels": [M]}`` (tensors, numpy arrays or nested lists). Every summary is
JSON-friendly: plain ``float`` / ``int``, and ``None`` (never NaN) where a value is undefined,
e.g. the recall of a field without ground-truth objects.

**Fields** (near / mid / far) are decided by a box's bottom edge ``y2`` as a fraction of the image
height (the road recedes upward): far ``y2 < far_max * H``, near ``y2 >= near_min * H``, mid
otherwise. **Size bins** are decided by the box area in units of one patch's area (a 16x16 patch
for the reference model): small ``< small_max``, medium ``< medium_max``, large otherwise.

Matching is **class-agnostic** by default: a vehicle counts as found when any kept detection of a
vehicle class overlaps it (IoU >= 0.5), since the question is whether pruning lost the object, not
whether the head confused a truck with a bus. ``class_aware=True`` requires equal labels.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from cass_deploy.cass.targets import check_geometry, flatten_boxes, object_patches
from cass_deploy.config import FIELDS, FieldConfig, check_number
from cass_deploy.errors import ConfigError, InputError

SIZE_BINS = ("small", "medium", "large")

PatchSize = float | int | Sequence[float]


# --------------------------------------------------------------------------- configuration


@dataclass
class SizeBins:
    """Object size bins by box area in units of one patch's area (``patch_h * patch_w`` pixels).

    small: ``area < small_max`` patches (smaller than one 16x16 patch by default);
    medium: ``small_max <= area < medium_max`` (up to a 4x4-patch object); large: the rest.
    """

    small_max: float = 1.0
    medium_max: float = 16.0

    def __post_init__(self) -> None:
        small = check_number("size_bins.small_max", self.small_max)
        medium = check_number("size_bins.medium_max", self.medium_max)
        if not (0 < small <= medium):
            raise ConfigError(
                f"size bins need 0 < small_max <= medium_max, got small_max={self.small_max!r}, "
                f"medium_max={self.medium_max!r}"
            )


# --------------------------------------------------------------------------- input helpers


def _as_boxes(value: Any, what: str) -> Tensor:
    """Array-like -> float [M, 4] (``[0]`` accepted as empty); InputError names ``what``."""
    t = torch.as_tensor(value)
    if t.numel() == 0:
        return torch.zeros((0, 4), dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    if t.dim() != 2 or t.shape[1] != 4:
        raise InputError(f"{what} must have shape [N, 4], got {list(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{what} must be real numbers, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.float()
    if not torch.isfinite(t).all():
        n = int((~torch.isfinite(t).all(dim=1)).nonzero()[0, 0])
        raise InputError(f"{what}: box {n} has non-finite coordinates {t[n].tolist()}")
    return t


def _as_vector(value: Any, n: int, what: str, *, integer: bool = False) -> Tensor:
    t = torch.as_tensor(value).reshape(-1)
    if t.numel() != n:
        raise InputError(f"{what} must have {n} entries (one per box), got {t.numel()}")
    if integer:
        if t.is_floating_point() or t.dtype == torch.bool:
            if t.numel() and not torch.equal(t.double(), t.double().round()):
                raise InputError(f"{what} must be integer class ids, got {t.tolist()[:8]}")
        return t.long()
    t = t.double() if t.dtype == torch.float64 else t.float()
    if not torch.isfinite(t).all():
        raise InputError(f"{what} must be finite, got {t.tolist()[:8]}")
    return t


def _patch_area(patch_size: PatchSize) -> float:
    if isinstance(patch_size, (int, float)) and not isinstance(patch_size, bool):
        ph = pw = float(patch_size)
    else:
        try:
            ph, pw = (float(v) for v in patch_size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise InputError(f"patch_size must be a number or (height, width), got {patch_size!r}") from None
    if not (ph > 0 and pw > 0 and math.isfinite(ph) and math.isfinite(pw)):
        raise InputError(f"patch_size must be positive, got {patch_size!r}")
    return ph * pw


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        H, W = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise InputError(f"image_size must be (height, width), got {image_size!r}") from None
    if H <= 0 or W <= 0:
        raise InputError(f"image_size must be positive, got {image_size!r}")
    return H, W


# --------------------------------------------------------------------------- geometry


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: a [N, 4], b [M, 4] -> [N, M].

    Boxes with ``x2 <= x1`` or ``y2 <= y1`` have zero area; a pair whose union is zero has IoU 0
    (never NaN).
    """
    a = _as_boxes(a, "box_iou a")
    b = _as_boxes(b, "box_iou b")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    positive = union > 0
    return torch.where(positive, inter / torch.where(positive, union, torch.ones_like(union)), torch.zeros_like(union))


def field_of(boxes: Tensor, image_h: float, fields: FieldConfig | None = None) -> Tensor:
    """Field index of each box -> [N] int64 into ``FIELDS`` (0 far, 1 mid, 2 near), by bottom edge."""
    fields = fields or FieldConfig()
    boxes = _as_boxes(boxes, "boxes")
    if not (isinstance(image_h, (int, float)) and image_h > 0):
        raise InputError(f"image height must be positive, got {image_h!r}")
    y2 = boxes[:, 3].double()  # compare in float64: thresholds like 0.75 * 480 are exact there
    out = torch.ones(boxes.shape[0], dtype=torch.int64)
    out[y2 < fields.far_max * float(image_h)] = 0
    out[y2 >= fields.near_min * float(image_h)] = 2
    return out


def size_bin_of(boxes: Tensor, patch_size: PatchSize = 16, bins: SizeBins | None = None) -> Tensor:
    """Size bin of each box -> [N] int64 into ``SIZE_BINS`` (0 small, 1 medium, 2 large).

    patch_size: pixels per patch, a number or ``(height, width)``; area is measured in patches.
    """
    bins = bins or SizeBins()
    boxes = _as_boxes(boxes, "boxes")
    area = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).double()
    rel = area / _patch_area(patch_size)
    out = torch.full((boxes.shape[0],), 2, dtype=torch.int64)
    out[rel < bins.medium_max] = 1
    out[rel < bins.small_max] = 0
    return out


# --------------------------------------------------------------------------- matching


def greedy_match(iou: Tensor, iou_thr: float = 0.5, allowed: Tensor | None = None) -> Tensor:
    """Greedy one-to-one matching of score-sorted predictions to ground truth.

    iou: [D, M], rows sorted by descending score; allowed: optional [D, M] bool (e.g. equal
    labels). Returns [M] int64: the row matched to each GT, -1 if none. Equivalent to the
    sequential rule "each prediction in turn takes the unmatched GT with the highest IoU >=
    ``iou_thr`` (ties: lowest GT index)", computed in rounds of tensor ops: a prediction is final
    once its current best GT is not a candidate of any higher-ranked undecided prediction (those
    can then never take it, and its own candidates only shrink). The top undecided prediction
    always qualifies, so there are at most ``min(D, M) + 1`` rounds, each O(D * M).
    """
    D, M = iou.shape
    owner = torch.full((M,), -1, dtype=torch.int64, device=iou.device)
    cand = iou >= iou_thr
    if allowed is not None:
        cand = cand & allowed
    available = torch.ones(M, dtype=torch.bool, device=iou.device)
    undecided = cand.any(dim=1)
    rows = torch.arange(D, device=iou.device)
    while True:
        c = cand & available[None, :] & undecided[:, None]
        undecided = c.any(dim=1)  # no candidate left -> unmatched for good
        if not bool(undecided.any()):
            return owner
        best = torch.where(c, iou, torch.full_like(iou, -1.0)).argmax(dim=1)  # first max
        ci = c.to(torch.int32)
        above = ci.cumsum(dim=0) - ci  # [D, M] undecided higher-ranked rows having each GT as candidate
        blocked = above.gather(1, best[:, None]).squeeze(1) > 0
        commit = undecided & ~blocked
        owner[best[commit]] = rows[commit]
        available[best[commit]] = False
        undecided = undecided & ~commit


def match_detections(
    pred_boxes: Tensor,
    pred_scores: Tensor,
    gt_boxes: Tensor,
    iou_thr: float = 0.5,
    score_thr: float = 0.3,
    *,
    pred_labels: Tensor | None = None,
    gt_labels: Tensor | None = None,
    class_aware: bool = False,
) -> Tensor:
    """Which ground-truth boxes are found -> matched [M] bool.

    pred_boxes: [D, 4], pred_scores: [D], gt_boxes: [M, 4]. Predictions with
    ``score >= score_thr`` are taken in descending score order (stable for ties); each matches at
    most one GT: the unmatched one with the highest IoU >= ``iou_thr``. Class-agnostic unless
    ``class_aware`` (then ``pred_labels`` [D] and ``gt_labels`` [M] must be equal to match).
    """
    _check_thresholds(iou_thr, score_thr)
    gt = _as_boxes(gt_boxes, "gt boxes")
    pb = _as_boxes(pred_boxes, "predicted boxes")
    ps = _as_vector(pred_scores, pb.shape[0], "predicted scores")
    if class_aware:
        if pred_labels is None or gt_labels is None:
            raise InputError("class_aware matching needs pred_labels and gt_labels")
        pl = _as_vector(pred_labels, pb.shape[0], "predicted labels", integer=True)
        gl = _as_vector(gt_labels, gt.shape[0], "gt labels", integer=True)
    keep = ps >= score_thr
    order = torch.argsort(ps[keep], descending=True, stable=True)
    pb = pb[keep][order]
    iou = box_iou(pb, gt)
    allowed = None
    if class_aware:
        allowed = pl[keep][order][:, None] == gl[None, :]
    return greedy_match(iou, iou_thr, allowed) >= 0


def _check_thresholds(iou_thr: float, score_thr: float) -> None:
    if isinstance(iou_thr, bool) or not isinstance(iou_thr, (int, float)) or not (0 < iou_thr <= 1):
        raise ConfigError(f"iou_thr must be in (0, 1], got {iou_thr!r}")
    if isinstance(score_thr, bool) or not isinstance(score_thr, (int, float)) or not math.isfinite(score_thr):
        raise ConfigError(f"score_thr must be a finite number, got {score_thr!r}")


# --------------------------------------------------------------------------- per-image records


def _field(record: Mapping[str, Any], key: str, what: str) -> Any:
    if not isinstance(record, Mapping) or key not in record:
        raise InputError(f"{what} needs a {key!r} entry")
    return record[key]


def prepare_image(
    pred: Mapping[str, Any] | None,
    gt: Mapping[str, Any],
    index: int,
    image_size: Sequence[int],
    classes: Sequence[int] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Validate one image's prediction and GT; keep only ``classes`` (None = all).

    GT boxes are validated and clipped to the image as for the soft target (``x2 > x1``,
    ``y2 > y1``, not entirely outside). Returns ``(pred, gt)`` dicts of tensors with ``boxes``,
    ``labels`` (and ``scores`` for pred); labels are -1 where none were given.
    """

    try:
        gt_boxes = flatten_boxes([_field(gt, "boxes", f"ground truth of image {index}")], image_size).boxes
    except InputError as exc:  # flatten_boxes numbers the one image it saw as image 0
        raise InputError(str(exc).replace("image 0", f"ground truth of image {index}", 1)) from None
    M = gt_boxes.shape[0]
    gl = gt.get("labels") if isinstance(gt, Mapping) else None
    gl = (
        _as_vector(gl, M, f"gt labels of image {index}", integer=True)
        if gl is not None
        else torch.full((M,), -1, dtype=torch.int64)
    )
    if pred is None:
        pred = {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0)}
    pb = _as_boxes(_field(pred, "boxes", f"prediction of image {index}"), f"predicted boxes of image {index}")
    D = pb.shape[0]
    ps = _as_vector(_field(pred, "scores", f"prediction of image {index}"), D, f"predicted scores of image {index}")
    pl = pred.get("labels")
    pl = (
        _as_vector(pl, D, f"predicted labels of image {index}", integer=True)
        if pl is not None
        else torch.full((D,), -1, dtype=torch.int64)
    )
    if classes is not None:
        cls = torch.as_tensor(list(classes), dtype=torch.int64)
        if pl.numel() and (pl < 0).any():
            raise InputError(f"image {index}: predicted labels are needed to filter by classes {list(classes)}")
        if gl.numel() and (gl < 0).any():
            raise InputError(f"image {index}: gt labels are needed to filter by classes {list(classes)}")
        kp, kg = torch.isin(pl, cls), torch.isin(gl, cls)
        pb, ps, pl = pb[kp], ps[kp], pl[kp]
        gt_boxes, gl = gt_boxes[kg], gl[kg]
    return ({"boxes": pb, "scores": ps, "labels": pl}, {"boxes": gt_boxes, "labels": gl})


def match_image(
    pred: Mapping[str, Tensor], gt: Mapping[str, Tensor], iou_thr: float, score_thr: float, class_aware: bool = False
) -> Tensor:
    """:func:`match_detections` of one image's :func:`prepare_image` dicts -> matched [M] bool."""
    return match_detections(
        pred["boxes"],
        pred["scores"],
        gt["boxes"],
        iou_thr,
        score_thr,
        pred_labels=pred["labels"],
        gt_labels=gt["labels"],
        class_aware=class_aware,
    )


def _check_pairs(preds: Sequence[Any], gts: Sequence[Any]) -> None:
    if not isinstance(preds, Sequence) or not isinstance(gts, Sequence):
        raise InputError("preds and gts must be lists with one entry per image")
    if len(preds) != len(gts):
        raise InputError(
            f"preds and gts must cover the same images, got {len(preds)} predictions and {len(gts)} ground truths"
        )


# --------------------------------------------------------------------------- recall


def _group_names(field: Tensor, size: Tensor) -> list[tuple[str, str, Tensor]]:
    """(section, name, mask) for every field, "all", and every size bin."""
    out = [("by_field", name, field == i) for i, name in enumerate(FIELDS)]
    out.append(("by_field", "all", torch.ones_like(field, dtype=torch.bool)))
    out += [("by_size", name, size == i) for i, name in enumerate(SIZE_BINS)]
    return out


def recall_summary(matched: Tensor, field: Tensor, size: Tensor) -> dict[str, dict[str, dict[str, Any]]]:
    """Recall per group from per-object arrays (matched [N] bool, field [N], size [N] int64).

    Returns ``{"by_field": {far, mid, near, all}, "by_size": {small, medium, large}}``, each
    ``{"recall": float | None, "n_gt": int, "n_matched": int}``; recall is None when n_gt is 0.
    """
    matched = matched.to(torch.bool)
    out: dict[str, dict[str, dict[str, Any]]] = {"by_field": {}, "by_size": {}}
    for section, name, mask in _group_names(field, size):
        n = int(mask.sum())
        k = int((matched & mask).sum())
        out[section][name] = {"recall": (k / n) if n else None, "n_gt": n, "n_matched": k}
    return out


def recall_by_field(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    image_size: Sequence[int],
    fields: FieldConfig | None = None,
    iou_thr: float = 0.5,
    score_thr: float = 0.3,
    *,
    size_bins: SizeBins | None = None,
    patch_size: PatchSize = 16,
    classes: Sequence[int] | None = None,
    class_aware: bool = False,
) -> dict[str, Any]:
    """Recall of ground-truth objects at IoU ``iou_thr`` by field and by size bin.

    preds / gts: one mapping per image (see module docstring); ``classes``: the vehicle class
    ids to evaluate (None = all), applied to both predictions and GT. Returns
    :func:`recall_summary`'s dict plus ``iou_thr`` and ``score_thr``.
    """
    _check_pairs(preds, gts)
    _check_thresholds(iou_thr, score_thr)
    H, W = _check_image_size(image_size)
    fields = fields or FieldConfig()
    matched, field, size = [], [], []
    for i, (p, g) in enumerate(zip(preds, gts)):
        pr, gt = prepare_image(p, g, i, (H, W), classes)
        matched.append(match_image(pr, gt, iou_thr, score_thr, class_aware))
        field.append(field_of(gt["boxes"], H, fields))
        size.append(size_bin_of(gt["boxes"], patch_size, size_bins))
    out: dict[str, Any] = recall_summary(_cat(matched, torch.bool), _cat(field), _cat(size))
    out["iou_thr"] = float(iou_thr)
    out["score_thr"] = float(score_thr)
    return out


def _cat(parts: list[Tensor], dtype: torch.dtype = torch.int64) -> Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


# --------------------------------------------------------------------------- mAP@0.5


def _coco_annotation(ann_id: int, image_id: int, label: int, box: list[float], **extra: float) -> dict[str, Any]:
    """One COCO annotation of a pixel xyxy ``box`` (COCO: xywh, category ids from 1); ``extra``: a
    detection's ``score``."""
    w, h = box[2] - box[0], box[3] - box[1]
    # ids start at 1: COCOeval stores matched GT ids and reads 0 as "unmatched"
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label + 1,
        "bbox": [box[0], box[1], w, h],
        "area": max(w, 0.0) * max(h, 0.0),
        **extra,
        "iscrowd": 0,
    }


def map50(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO-style AP at IoU 0.5 (101-point interpolation, ``max_dets`` per image) via pycocotools.

    preds: per image ``{"boxes", "scores", "labels"}``; gts: per image ``{"boxes", "labels"}`` and
    optionally ``"ignore"`` [K, 4] with ``"ignore_labels"`` [K] (-1: every class): regions given to
    pycocotools as ``iscrowd`` ground truth, so a detection there is neither a hit nor a false
    positive. Labels are class ids ``0 .. num_classes-1``. All predictions are used (no score threshold).
    Returns ``{"map50": float, "per_class": {name: float | None}, "n_gt": {name: int}}``: mAP is
    the mean over classes that have GT; a class without GT reports None. No GT at all -> InputError.
    """

    _check_pairs(preds, gts)
    names = _class_names(num_classes, class_names)
    images, gt_anns, dt_anns, n_gt = _coco_annotations(preds, gts, num_classes)
    if not any(a["iscrowd"] == 0 for a in gt_anns):
        raise InputError("mAP needs at least one ground-truth box; the evaluation set has none")
    categories = [{"id": c + 1, "name": names[c]} for c in range(num_classes)]
    precision = _coco_precision(images, gt_anns, dt_anns, categories, max_dets)
    per_class: dict[str, float | None] = {}
    values = []
    for c in range(num_classes):
        col = precision[:, c]
        if n_gt[c] == 0 or (col <= -1).all():
            per_class[names[c]] = None
        else:
            ap = float(np.mean(col[col > -1]))
            per_class[names[c]] = ap
            values.append(ap)
    return {
        "map50": float(sum(values) / len(values)),
        "per_class": per_class,
        "n_gt": {names[c]: n_gt[c] for c in range(num_classes)},
    }


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    """The ``num_classes`` class names (``"0"``, ``"1"``, ... when None); InputError unless unique and as many."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise InputError(f"class_names has {len(names)} names for {num_classes} classes")
    if len(set(names)) != len(names):
        raise InputError(f"class_names must be unique, got {names}")
    return names


def _image_detections(
    i: int, p: Mapping[str, Any], g: Mapping[str, Any], num_classes: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Image ``i``'s ground truth and predictions, checked -> ``gt boxes [M, 4], gt labels [M],
    boxes [D, 4], scores [D], labels [D]``; labels outside ``0 .. num_classes-1`` are an InputError."""
    gb = _as_boxes(_field(g, "boxes", f"ground truth of image {i}"), f"gt boxes of image {i}")
    gl = _as_vector(
        _field(g, "labels", f"ground truth of image {i}"), gb.shape[0], f"gt labels of image {i}", integer=True
    )
    pb = _as_boxes(_field(p, "boxes", f"prediction of image {i}"), f"predicted boxes of image {i}")
    ps = _as_vector(_field(p, "scores", f"prediction of image {i}"), pb.shape[0], f"predicted scores of image {i}")
    pl = _as_vector(
        _field(p, "labels", f"prediction of image {i}"), pb.shape[0], f"predicted labels of image {i}", integer=True
    )
    for what, lab in (("gt", gl), ("predicted", pl)):
        bad = (lab < 0) | (lab >= num_classes)
        if bad.any():
            raise InputError(f"image {i}: {what} label {int(lab[bad][0])} is outside 0..{num_classes - 1}")
    return gb, gl, pb, ps, pl


def _coco_annotations(
    preds: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], num_classes: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[int]]:
    """Predictions and ground truth -> pycocotools' ``images``, ground-truth annotations (ignore
    regions as ``iscrowd`` ones, one per class for a label of -1), detections, and the number of
    ground-truth boxes per class."""
    images, gt_anns, dt_anns = [], [], []
    n_gt = [0] * num_classes
    for i, (p, g) in enumerate(zip(preds, gts)):
        gb, gl, pb, ps, pl = _image_detections(i, p, g, num_classes)
        image_id = i + 1
        images.append({"id": image_id})
        for box, lab in zip(gb.double().tolist(), gl.tolist()):
            gt_anns.append(_coco_annotation(len(gt_anns) + 1, image_id, lab, box))
            n_gt[lab] += 1
        ign = g.get("ignore") if isinstance(g, Mapping) else None
        if ign is not None and len(ign):
            ib = _as_boxes(ign, f"ignore regions of image {i}")
            il = g.get("ignore_labels")
            il = torch.full((ib.shape[0],), -1) if il is None else torch.as_tensor(il).reshape(-1)
            for box, lab in zip(ib.double().tolist(), il.tolist()):
                for c in range(num_classes) if lab < 0 else [lab]:
                    gt_anns.append({**_coco_annotation(len(gt_anns) + 1, image_id, c, box), "iscrowd": 1})
        for box, score, lab in zip(pb.double().tolist(), ps.double().tolist(), pl.tolist()):
            dt_anns.append(_coco_annotation(len(dt_anns) + 1, image_id, lab, box, score=score))
    return images, gt_anns, dt_anns, n_gt


def _coco_precision(
    images: list[dict[str, Any]],
    gt_anns: list[dict[str, Any]],
    dt_anns: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    max_dets: int,
) -> np.ndarray:
    """pycocotools' bbox evaluation at IoU 0.5 -> precision [R=101, K]; -1 marks a class without GT."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        coco_dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.maxDets = [int(max_dets)]
        ev.params.catIds = [c["id"] for c in categories]
        ev.evaluate()
        ev.accumulate()
    # precision: [T=1, R=101, K, A (0 = all areas), M=1]
    return ev.eval["precision"][0, :, :, 0, 0]


# --------------------------------------------------------------------------- retention


def retention_from_pairs(keep_mask: Tensor, box: Tensor, patch: Tensor, num_boxes: int) -> Tensor:
    """Share of each object's patches that are kept -> [N] float32.

    keep_mask: [B, P] bool; box: [T] int64 object index; patch: [T] int64 flat ``b * P + p``.
    An object without patches (possible only without ``ensure_center``) gets NaN, which the
    summaries count as "unmeasured" rather than averaging it.
    """
    keep = torch.as_tensor(keep_mask)
    if keep.dim() != 2:
        raise InputError(f"keep_mask must have shape [B, P], got {list(keep.shape)}")
    if keep.dtype != torch.bool:
        if keep.is_floating_point() or keep.is_complex() or not bool(((keep == 0) | (keep == 1)).all()):
            raise InputError(f"keep_mask must be boolean (or integer 0/1), got dtype {keep.dtype}")
        keep = keep.to(torch.bool)
    flat = keep.reshape(-1)
    if patch.numel() and int(patch.max()) >= flat.numel():
        raise InputError(f"patch index {int(patch.max())} is outside the keep mask of {flat.numel()} patches")
    kept = torch.zeros(num_boxes, dtype=torch.float32).index_add_(0, box, flat[patch].to(torch.float32))
    count = torch.bincount(box, minlength=num_boxes).to(torch.float32)
    return torch.where(count > 0, kept / count.clamp(min=1), torch.full_like(kept, float("nan")))


def retention_per_object(
    keep_mask: Tensor,
    boxes: Sequence[Tensor],
    grid: Sequence[int],
    image_size: Sequence[int],
    ensure_center: bool = True,
) -> Tensor:
    """Per object, the share of its patches the pruner keeps -> [N] float32 (boxes of image 0 first).

    keep_mask: [B, P] bool with ``P = Hp * Wp``; boxes: B tensors [M_b, 4]. The patches of an
    object are those whose centre lies inside the box, plus, when ``ensure_center``, the patch
    holding the centre of a box that contains no patch centre (``targets.object_patches``).
    """

    (Hp, Wp), (H, W) = check_geometry(grid, image_size)
    keep = torch.as_tensor(keep_mask)
    if keep.dim() != 2 or keep.shape[1] != Hp * Wp or keep.shape[0] != len(boxes):
        raise InputError(
            f"keep_mask must have shape [B={len(boxes)}, P={Hp * Wp}] for grid {(Hp, Wp)}, got {list(keep.shape)}"
        )
    op = object_patches(list(boxes), (Hp, Wp), (H, W), ensure_center=ensure_center)
    return retention_from_pairs(keep.cpu(), op.box.cpu(), op.patch.cpu(), op.num_boxes)


def retention_summary(retention: Tensor, field: Tensor, size: Tensor) -> dict[str, dict[str, dict[str, Any]]]:
    """Retention per group from per-object arrays (retention [N] float, NaN = unmeasured).

    Returns ``{"by_field": {far, mid, near, all}, "by_size": {small, medium, large}}``, each
    ``{"mean": float | None, "share_ge_50": float | None, "n": int, "n_unmeasured": int}``:
    mean retention and the fraction of objects keeping >= 50% of their patches, over the n
    measured objects (None when n is 0).
    """
    retention = retention.to(torch.float64)
    measured = ~torch.isnan(retention)
    out: dict[str, dict[str, dict[str, Any]]] = {"by_field": {}, "by_size": {}}
    for section, name, mask in _group_names(field, size):
        m = mask & measured
        n = int(m.sum())
        vals = retention[m]
        out[section][name] = {
            "mean": float(vals.mean()) if n else None,
            "share_ge_50": float((vals >= 0.5).double().mean()) if n else None,
            "n": n,
            "n_unmeasured": int((mask & ~measured).sum()),
        }
    return out


def summarise_retention(
    retention: Tensor,
    boxes: Sequence[Tensor],
    image_size: Sequence[int],
    fields: FieldConfig | None = None,
    *,
    size_bins: SizeBins | None = None,
    patch_size: PatchSize = 16,
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`retention_summary` with fields and size bins computed from the (clipped) boxes.

    retention: [N] from :func:`retention_per_object` on the same ``boxes`` (B tensors [M_b, 4]).
    """

    H, W = _check_image_size(image_size)
    flat = flatten_boxes(list(boxes), (H, W)).boxes
    retention = torch.as_tensor(retention).reshape(-1)
    if retention.numel() != flat.shape[0]:
        raise InputError(f"retention has {retention.numel()} entries for {flat.shape[0]} boxes")
    return retention_summary(retention, field_of(flat, H, fields), size_bin_of(flat, patch_size, size_bins))


__all__ = [
    "SIZE_BINS",
    "SizeBins",
    "box_iou",
    "field_of",
    "size_bin_of",
    "greedy_match",
    "match_detections",
    "prepare_image",
    "match_image",
    "recall_summary",
    "recall_by_field",
    "map50",
    "retention_from_pairs",
    "retention_per_object",
    "retention_summary",
    "summarise_retention",
]
