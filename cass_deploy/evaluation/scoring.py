"""Validation of a deployed model on a labelled set (SPEC §7 ``validate``): the pure part.

:func:`evaluate` runs a ``predict`` callable over batches and accumulates recall of vehicles at
IoU 0.5 by field (near / mid / far) and object size, the pruner's per-object retention by field
(when the model returns a keep mask) and mAP@0.5 (pycocotools). The gates (:mod:`cass_deploy.evaluation.gates`) turn a
result (and optionally a reference result, e.g. the dense model) into pass/fail checks, and
:func:`format_comparison_table` renders both side by side. The CLI command wires these up.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from cass_deploy.cass.targets import check_geometry
from cass_deploy.config import FIELDS, FieldConfig
from cass_deploy.errors import InputError
from cass_deploy.evaluation.metrics import (
    SIZE_BINS,
    SizeBins,
    field_of,
    map50,
    match_image,
    prepare_image,
    recall_summary,
    retention_per_object,
    retention_summary,
    size_bin_of,
)
from cass_deploy.evaluation.stats import wilson_interval

GROUPS = FIELDS + ("all",)

Predict = Callable[[Any], Mapping[str, Any]]


# --------------------------------------------------------------------------- results


@dataclass
class FieldReport:
    """Recall and retention of one group of objects (a field, "all", or a size bin).

    recall / retention values are None when undefined (no objects, or a model that does not prune).
    ``recall_lo`` / ``recall_hi``: the 95 % Wilson interval of the recall (SPEC §7a), filled from
    the counts when not given (None without objects).
    """

    name: str
    n_gt: int
    n_matched: int
    recall: float | None
    retention_mean: float | None = None
    retention_share_ge_50: float | None = None
    n_retention: int = 0
    n_retention_unmeasured: int = 0
    recall_lo: float | None = None
    recall_hi: float | None = None

    def __post_init__(self) -> None:
        if self.recall_lo is None and self.n_gt > 0:
            self.recall_lo, self.recall_hi = wilson_interval(self.n_matched, self.n_gt)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ValidationResult:
    """Everything ``validate`` measures on one model; ``to_dict()`` is JSON-ready.

    by_field: far / mid / near / all; by_size: small / medium / large. ``pruned`` is False for a
    dense model (no keep mask), whose retention entries are then None. ``per_image``: the counts
    the paired bootstrap of a drop needs (SPEC §7a), ``{"fields": ["far", "mid", "near"],
    "totals": [n_images][3], "hits": [n_images][3]}`` (ground-truth objects and found objects of
    each field in each image, in evaluation order); None in results saved before it existed.
    """

    by_field: dict[str, FieldReport]
    by_size: dict[str, FieldReport]
    map50: float | None
    map50_per_class: dict[str, float | None] | None
    pruned: bool
    keep_ratio: float | None
    n_images: int
    n_objects: int
    n_detections: int
    iou_thr: float
    score_thr: float
    fields: FieldConfig = field(default_factory=FieldConfig)
    size_bins: SizeBins = field(default_factory=SizeBins)
    classes: list[int] | None = None
    name: str = "model"
    per_image: dict[str, Any] | None = None
    #: multi-stage pruning (SPEC 6c): per stage ``{"stage": s, "by_field": {group: {"mean",
    #: "share_ge_50", "n", "n_unmeasured"}}, "by_size": ...}`` (retention_summary); None otherwise
    by_stage: list[dict[str, Any]] | None = None

    def recall(self, group: str) -> float | None:
        return self.by_field[group].recall if group in self.by_field else self.by_size[group].recall

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["by_field"] = {k: v.to_dict() for k, v in self.by_field.items()}
        out["by_size"] = {k: v.to_dict() for k, v in self.by_size.items()}
        out["fields"] = dataclasses.asdict(self.fields)
        out["size_bins"] = dataclasses.asdict(self.size_bins)
        out["classes"] = None if self.classes is None else list(self.classes)
        out["map50_per_class"] = None if self.map50_per_class is None else dict(self.map50_per_class)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationResult:
        """Inverse of :meth:`to_dict` (e.g. a reference result saved as JSON)."""
        if not isinstance(data, Mapping):
            raise InputError(f"not a validation result: expected a mapping, got {type(data).__name__}")
        try:
            kw = dict(data)
            kw["by_field"] = {k: FieldReport(**v) for k, v in data["by_field"].items()}
            kw["by_size"] = {k: FieldReport(**v) for k, v in data["by_size"].items()}
            kw["fields"] = FieldConfig(**data.get("fields", {}))
            kw["size_bins"] = SizeBins(**data.get("size_bins", {}))
            result = cls(**kw)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InputError(f"not a validation result: {exc}") from None
        missing = [g for g in GROUPS if g not in result.by_field] + [s for s in SIZE_BINS if s not in result.by_size]
        if missing:
            raise InputError(f"validation result lacks group(s) {missing}")
        return result


def build_result(recall: Mapping[str, Any], retention: Mapping[str, Any] | None, **meta: Any) -> ValidationResult:
    """Assemble a result from :func:`metrics.recall_summary` and :func:`metrics.retention_summary` dicts."""

    def reports(section: str, names: Sequence[str]) -> dict[str, FieldReport]:
        out = {}
        for name in names:
            r = recall[section][name]
            t = retention[section][name] if retention is not None else None
            out[name] = FieldReport(
                name=name,
                n_gt=int(r["n_gt"]),
                n_matched=int(r["n_matched"]),
                recall=r["recall"],
                retention_mean=t["mean"] if t else None,
                retention_share_ge_50=t["share_ge_50"] if t else None,
                n_retention=int(t["n"]) if t else 0,
                n_retention_unmeasured=int(t["n_unmeasured"]) if t else 0,
            )
        return out

    return ValidationResult(
        by_field=reports("by_field", GROUPS),
        by_size=reports("by_size", SIZE_BINS),
        pruned=retention is not None,
        **meta,
    )


# --------------------------------------------------------------------------- evaluation


def _per_image(value: Any, B: int, what: str, batch_index: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        t = torch.as_tensor(value)
        if t.dim() == 0:
            raise InputError(f"batch {batch_index}: predict() {what!r} must hold one entry per image")
        items = list(t)
    if len(items) != B:
        raise InputError(f"batch {batch_index}: predict() returned {what!r} for {len(items)} images, expected {B}")
    return items


def _split_output(out: Any, B: int, P: int, batch_index: int) -> tuple[list[dict[str, Any]], Tensor | None]:
    """predict() output -> per-image prediction dicts and an optional keep mask [B, P] bool."""
    if not isinstance(out, Mapping):
        raise InputError(
            f"batch {batch_index}: predict() must return a mapping with 'boxes', 'scores' "
            f"(and 'labels', 'keep_mask'), got {type(out).__name__}"
        )
    for key in ("boxes", "scores"):
        if key not in out:
            raise InputError(f"batch {batch_index}: predict() output lacks {key!r}; it has {sorted(out)}")
    boxes = _per_image(out["boxes"], B, "boxes", batch_index)
    scores = _per_image(out["scores"], B, "scores", batch_index)
    labels = _per_image(out["labels"], B, "labels", batch_index) if out.get("labels") is not None else [None] * B
    preds = [
        {
            "boxes": torch.as_tensor(b).detach().cpu(),
            "scores": torch.as_tensor(s).detach().cpu(),
            **({"labels": torch.as_tensor(lab).detach().cpu()} if lab is not None else {}),
        }
        for b, s, lab in zip(boxes, scores, labels)
    ]
    keep = out.get("keep_mask")
    if keep is None:
        return preds, None
    keep = torch.as_tensor(keep).detach().cpu()
    if keep.dim() != 2 or tuple(keep.shape) != (B, P):
        raise InputError(f"batch {batch_index}: keep_mask must have shape [{B}, {P}], got {list(keep.shape)}")
    stages = out.get("stage_keep_masks")
    if stages is not None:
        stages = torch.as_tensor(stages).detach().cpu()
        if stages.dim() != 3 or tuple(stages.shape[1:]) != (B, P):
            raise InputError(f"batch {batch_index}: stage_keep_masks must be [S, {B}, {P}], got {list(stages.shape)}")
        return preds, torch.cat([stages, keep.unsqueeze(0)])  # [S + 1, B, P]
    return preds, keep


def _frames(batch: Mapping[str, Any], B: int, input_hw: tuple[int, int], bi: int) -> list[tuple]:
    """Per image ``(transform [4] or None, original (h, w), original boxes or None)``."""
    tfs = batch.get("transforms")
    if tfs is None:
        return [(None, input_hw, None)] * B
    sizes, orig = batch.get("orig_sizes"), batch.get("orig_boxes")
    if sizes is None or orig is None or len(tfs) != B or len(sizes) != B or len(orig) != B:
        raise InputError(f"batch {bi}: 'transforms' needs 'orig_sizes' and 'orig_boxes' for each of its {B} images")
    return [
        (torch.as_tensor(tfs[b], dtype=torch.float32), tuple(int(v) for v in sizes[b]), torch.as_tensor(orig[b]))
        for b in range(B)
    ]


def to_original(pred: Mapping[str, Any], transform: Tensor, orig_hw: Sequence[int]) -> dict[str, Any]:
    """Detections on the network input -> the original image: ``(x - px) / sx``, clipped to it;
    boxes left with no area (entirely on padding) are dropped. ``pred``: ``boxes [D, 4]``,
    ``scores [D]``, optional ``labels [D]``."""
    sx, sy, px, py = (float(v) for v in transform)
    h, w = (float(v) for v in orig_hw)
    boxes = torch.as_tensor(pred["boxes"], dtype=torch.float32).reshape(-1, 4)
    back = (boxes - torch.tensor([px, py, px, py])) / torch.tensor([sx, sy, sx, sy])
    back = torch.stack(
        [back[:, 0].clamp(0, w), back[:, 1].clamp(0, h), back[:, 2].clamp(0, w), back[:, 3].clamp(0, h)], dim=1
    )
    ok = (back[:, 2] > back[:, 0]) & (back[:, 3] > back[:, 1])
    out = {"boxes": back[ok], "scores": torch.as_tensor(pred["scores"]).reshape(-1)[ok]}
    if pred.get("labels") is not None:
        out["labels"] = torch.as_tensor(pred["labels"]).reshape(-1)[ok]
    return out


def content_patches(
    transform: Tensor | None, orig_hw: Sequence[int], grid: Sequence[int], input_hw: Sequence[int]
) -> Tensor:
    """[P] bool: patches whose centre lies on the image (not on letterbox padding)."""
    (hp, wp), (H, W) = grid, input_hw
    if transform is None:
        return torch.ones(hp * wp, dtype=torch.bool)
    sx, sy, px, py = (float(v) for v in transform)
    cy = (torch.arange(hp, dtype=torch.float32) + 0.5) * (H / hp)
    cx = (torch.arange(wp, dtype=torch.float32) + 0.5) * (W / wp)
    rows = (cy >= py) & (cy < py + orig_hw[0] * sy)
    cols = (cx >= px) & (cx < px + orig_hw[1] * sx)
    return (rows[:, None] & cols[None, :]).reshape(-1)


def evaluate(
    predict: Predict,
    batches: Iterable[Mapping[str, Any]],
    image_size: Sequence[int],
    grid: Sequence[int],
    *,
    fields: FieldConfig | None = None,
    size_bins: SizeBins | None = None,
    iou_thr: float = 0.5,
    score_thr: float = 0.3,
    classes: Sequence[int] | None = None,
    class_aware: bool = False,
    compute_map: bool = True,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ensure_center: bool = True,
    name: str = "model",
) -> ValidationResult:
    """Run ``predict`` over ``batches`` and measure recall, retention and mAP@0.5.

    predict(images [B, 3, H, W]) -> ``{"boxes": B x [D_b, 4], "scores": B x [D_b],
    "labels": B x [D_b] (optional), "keep_mask": [B, P] bool (optional; pruned models)}``; lists
    or batched arrays, numpy or torch. batches: mappings with ``images`` [B, 3, H, W] at the
    network input size ``image_size = (H, W)``, ``boxes`` (B tensors [M_b, 4], pixel xyxy of that
    input) and ``labels`` (B tensors [M_b]). ``classes``: vehicle class ids for recall and
    retention (None = all); mAP covers all ``num_classes`` (inferred from the labels when None,
    or ``len(class_names)``). ``grid = (Hp, Wp)`` is the patch grid of the keep mask; patch size
    for the size bins is ``(H / Hp, W / Wp)``.
    """

    (Hp, Wp), (H, W) = check_geometry(grid, image_size)
    run = _Evaluation(
        predict=predict,
        grid=(Hp, Wp),
        input_hw=(H, W),
        iou_thr=iou_thr,
        score_thr=score_thr,
        classes=classes,
        class_aware=class_aware,
        fields=fields or FieldConfig(),
        size_bins=size_bins or SizeBins(),
        compute_map=compute_map,
        ensure_center=ensure_center,
    )
    for bi, batch in enumerate(batches):
        run.add_batch(batch, bi)
    return run.result(num_classes, class_names, name)


def _check_batch(batch: Any, bi: int, input_hw: tuple[int, int]) -> tuple[Any, int, list[Any], list[Any]]:
    """One batch of :func:`evaluate` -> (images [B, C, H, W], B, B ground-truth box lists, B label
    lists or None each); InputError naming the batch when it is malformed."""
    H, W = input_hw
    if not isinstance(batch, Mapping) or "images" not in batch or "boxes" not in batch:
        raise InputError(f"batch {bi} must be a mapping with 'images' and 'boxes' (and 'labels')")
    images = batch["images"]
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[2:] != (H, W):
        raise InputError(f"batch {bi}: images must have shape [B, C, {H}, {W}] (the network input), got {list(shape)}")
    B = shape[0]
    gt_boxes = list(batch["boxes"])
    gt_labels = list(batch["labels"]) if batch.get("labels") is not None else [None] * B
    if len(gt_boxes) != B or len(gt_labels) != B:
        raise InputError(f"batch {bi}: {B} images but {len(gt_boxes)} box lists and {len(gt_labels)} label lists")
    return images, B, gt_boxes, gt_labels


def _num_classes(preds: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]]) -> int:
    """1 + the largest label of any prediction or ground truth (images without labels ignored)."""
    return 1 + max(
        [int(torch.as_tensor(d["labels"]).max()) for d in [*preds, *gts] if torch.as_tensor(d["labels"]).numel()]
    )


@dataclass
class _Evaluation:
    """One :func:`evaluate` run: its settings and what the batches added so far.

    Per image, in evaluation order: ``matched`` [M] bool (found at ``iou_thr``), ``fld`` / ``size``
    [M] int64 (field and size bin of each ground-truth object); per batch with a keep mask,
    ``retention`` [M_batch] and, for multi-stage masks, ``stage_ret`` (S tensors [M_batch]);
    ``raw_preds`` / ``raw_gts``: per image, for mAP. ``kept_sum`` / ``content_sum``: kept and
    on-image patches (the keep ratio).
    """

    predict: Predict
    grid: tuple[int, int]
    input_hw: tuple[int, int]
    fields: FieldConfig
    size_bins: SizeBins
    iou_thr: float
    score_thr: float
    classes: Sequence[int] | None
    class_aware: bool
    compute_map: bool
    ensure_center: bool
    matched: list[Tensor] = field(default_factory=list)
    fld: list[Tensor] = field(default_factory=list)
    size: list[Tensor] = field(default_factory=list)
    retention: list[Tensor] = field(default_factory=list)
    stage_ret: list[list[Tensor]] = field(default_factory=list)
    raw_preds: list[dict[str, Any]] = field(default_factory=list)
    raw_gts: list[dict[str, Any]] = field(default_factory=list)
    n_images: int = 0
    n_det: int = 0
    pruned: bool | None = None
    kept_sum: float = 0.0
    content_sum: float = 0.0

    def add_batch(self, batch: Mapping[str, Any], bi: int) -> None:
        """Predict batch ``bi`` and add its objects (recall, fields, sizes, mAP inputs) and retention."""
        images, B, gt_boxes, gt_labels = _check_batch(batch, bi, self.input_hw)
        preds, keep = _split_output(self.predict(images), B, self.grid[0] * self.grid[1], bi)
        if self.pruned is None:
            self.pruned = keep is not None
        elif self.pruned != (keep is not None):
            raise InputError(f"batch {bi}: predict() returned a keep_mask for some batches but not others")
        frames = _frames(batch, B, self.input_hw, bi)
        kept_boxes = [self._add_image(batch, b, preds[b], gt_boxes[b], gt_labels[b], frames[b]) for b in range(B)]
        self._add_retention(keep, kept_boxes, frames)
        self.n_images += B

    def _add_image(
        self, batch: Mapping[str, Any], b: int, pred: dict[str, Any], gt_boxes: Any, gt_labels: Any, frame: tuple
    ) -> Tensor:
        """Match image ``b`` of ``batch``: recall and fields in the original image, size (and later
        retention) on the network input. Returns its ground-truth boxes on the input [M, 4]."""
        H, W = self.input_hw
        labels_b = {"labels": gt_labels} if gt_labels is not None else {}
        index = self.n_images + b
        tf, (oh, ow), orig = frame
        pred_b = pred if tf is None else to_original(pred, tf, (oh, ow))
        gt_orig = {"boxes": gt_boxes if orig is None else orig, **labels_b}
        pr, g = prepare_image(pred_b, gt_orig, index, (oh, ow), self.classes)
        g_in = g if tf is None else prepare_image(None, {"boxes": gt_boxes, **labels_b}, index, (H, W), self.classes)[1]
        self.matched.append(match_image(pr, g, self.iou_thr, self.score_thr, self.class_aware))
        self.fld.append(field_of(g["boxes"], oh, self.fields))
        self.size.append(size_bin_of(g_in["boxes"], (H / self.grid[0], W / self.grid[1]), self.size_bins))
        self.n_det += int((pr["scores"] >= self.score_thr).sum())
        if self.compute_map:
            if "labels" not in pred or gt_labels is None:
                raise InputError(
                    f"image {index}: mAP needs labels on predictions and ground truth; "
                    f"pass compute_map=False for a class-agnostic model"
                )
            self.raw_preds.append(pred_b)
            gt_map = {"boxes": torch.as_tensor(gt_orig["boxes"]), "labels": torch.as_tensor(gt_labels)}
            if batch.get("ignore") is not None:
                gt_map.update(ignore=batch["ignore"][b], ignore_labels=batch["ignore_labels"][b])
            self.raw_gts.append(gt_map)
        return g_in["boxes"]

    def _add_retention(self, keep: Tensor | None, kept_boxes: list[Tensor], frames: list[tuple]) -> None:
        """Per-object retention of a batch's keep mask ([B, P], or [S + 1, B, P] per stage then the
        final one) and its kept share of the on-image patches."""
        grid, hw = self.grid, self.input_hw
        if keep is not None and keep.dim() == 3:  # per-stage masks, then the final one
            self.stage_ret.append(
                [retention_per_object(m, kept_boxes, grid, hw, ensure_center=self.ensure_center) for m in keep[:-1]]
            )
            keep = keep[-1]
        if keep is not None:
            self.retention.append(retention_per_object(keep, kept_boxes, grid, hw, ensure_center=self.ensure_center))
            content = torch.stack([content_patches(f[0], f[1], grid, hw) for f in frames])  # [B, P]
            self.kept_sum += float((torch.as_tensor(keep).bool() & content).to(torch.float64).sum())
            self.content_sum += float(content.sum())

    def result(self, num_classes: int | None, class_names: Sequence[str] | None, name: str) -> ValidationResult:
        """The summaries of every batch added: recall, retention, mAP@0.5 and the per-image counts."""
        n_images = self.n_images
        if n_images == 0:
            raise InputError("the validation set is empty (no batches)")
        matched_t = torch.cat(self.matched)
        fld_t, size_t = torch.cat(self.fld), torch.cat(self.size)
        image_t = torch.repeat_interleave(torch.arange(n_images), torch.tensor([len(m) for m in self.matched]))
        if matched_t.numel() == 0:
            which = f" of classes {list(self.classes)}" if self.classes is not None else ""
            raise InputError(f"no ground-truth objects{which} in {n_images} validation images; nothing to measure")
        rec = recall_summary(matched_t, fld_t, size_t)
        ret = retention_summary(torch.cat(self.retention), fld_t, size_t) if self.pruned else None
        m50 = per_class = None
        if self.compute_map:
            if num_classes is None:
                num_classes = (
                    len(class_names) if class_names is not None else _num_classes(self.raw_preds, self.raw_gts)
                )
            res = map50(self.raw_preds, self.raw_gts, num_classes, class_names)
            m50, per_class = res["map50"], res["per_class"]
        return build_result(
            rec,
            ret,
            map50=m50,
            map50_per_class=per_class,
            keep_ratio=(self.kept_sum / max(self.content_sum, 1.0)) if self.pruned else None,
            n_images=n_images,
            n_objects=int(matched_t.numel()),
            n_detections=self.n_det,
            iou_thr=float(self.iou_thr),
            score_thr=float(self.score_thr),
            fields=self.fields,
            size_bins=self.size_bins,
            classes=None if self.classes is None else [int(c) for c in self.classes],
            name=name,
            per_image=per_image_counts(matched_t, fld_t, image_t, n_images),
            by_stage=_stage_retention(self.stage_ret, fld_t, size_t),
        )


def _stage_retention(per_batch: list[list[Tensor]], fld: Tensor, size: Tensor) -> list[dict[str, Any]] | None:
    """Per-batch lists of S per-object retentions -> one :func:`retention_summary` per stage."""
    if not per_batch or len({len(b) for b in per_batch}) != 1:
        return None
    return [
        {"stage": s + 1, **retention_summary(torch.cat([b[s] for b in per_batch]), fld, size)}
        for s in range(len(per_batch[0]))
    ]


def per_image_counts(matched: Tensor, field: Tensor, image: Tensor, n_images: int) -> dict[str, Any]:
    """Per-image, per-field object counts -> ``ValidationResult.per_image``.

    matched [N] bool, field [N] int64 into FIELDS, image [N] int64 (each object's image index).
    One ``bincount`` over ``image * 3 + field``: no loop over objects or images.
    """
    F = len(FIELDS)
    key = image.to(torch.int64) * F + field.to(torch.int64)
    totals = torch.bincount(key, minlength=n_images * F).reshape(n_images, F)
    hits = torch.bincount(key[matched.to(torch.bool)], minlength=n_images * F).reshape(n_images, F)
    return {"fields": list(FIELDS), "totals": totals.tolist(), "hits": hits.tolist()}


# --------------------------------------------------------------------------- table


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _delta(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a - b:+.3f}"


def _ci(r: FieldReport) -> str:
    return "n/a" if r.recall_lo is None else f"[{r.recall_lo:.3f}, {r.recall_hi:.3f}]"


def format_comparison_table(
    result: ValidationResult,
    reference: ValidationResult | None = None,
    *,
    title: str | None = None,
    drops: Mapping[str, Any] | None = None,
    measure: str = "recall",
):
    """Side-by-side recall and retention per field and size bin -> rich ``Table``.

    Columns: group, n_gt, recall (matched/n_gt) of the result and its 95 % Wilson interval, and,
    with a reference, its recall and interval and the difference (result - reference); with
    ``drops`` (``gates.recall_drops``: objects with ``lo`` / ``hi`` of the drop reference -
    result, per field) the difference's paired interval. Then mean retention and the share of
    objects keeping >= 50% of their patches for each model that prunes. mAP@0.5 and keep ratio go
    in the caption. ``measure`` names the measure in the title and headers (label-free
    validation: ``"agreement with teacher T"``).
    """

    models = [result] + ([reference] if reference is not None else [])
    table = Table(title=title or f"{measure} and retention by field", show_lines=False)
    table.add_column("group")
    table.add_column("n_gt", justify="right")
    table.add_column(f"{measure} {result.name}", justify="right")
    table.add_column("95% CI", justify="right")
    if reference is not None:
        table.add_column(f"{measure} {reference.name}", justify="right")
        table.add_column("95% CI ", justify="right")
        table.add_column(f"Δ {measure}", justify="right")
        if drops is not None:
            table.add_column("Δ 95% CI (paired)", justify="right")
    for m in models:
        if m.pruned:
            table.add_column(f"retention {m.name}", justify="right")
            table.add_column(f">=50% kept {m.name}", justify="right")

    def row(group: str, get: Callable[[ValidationResult], FieldReport], end_section: bool = False) -> None:
        r = get(result)
        cells = [group, str(r.n_gt), f"{_fmt(r.recall)} ({counts(r)})", _ci(r)]
        if reference is not None:
            q = get(reference)
            cells += [f"{_fmt(q.recall)} ({counts(q)})", _ci(q), _delta(r.recall, q.recall)]
            if drops is not None:
                d = drops.get(group)
                ok = d is not None and d.lo is not None
                cells.append(f"[{-d.hi:+.3f}, {-d.lo:+.3f}]" if ok else "")
        for m in models:
            if m.pruned:
                f = get(m)
                cells += [_fmt(f.retention_mean), _fmt(f.retention_share_ge_50)]
        table.add_row(*cells, end_section=end_section)

    for g in GROUPS:
        row(g, lambda m, g=g: m.by_field[g], end_section=(g == "all"))
    for s in SIZE_BINS:
        row(s, lambda m, s=s: m.by_size[s])
    caption = []
    for m in models:
        part = f"{m.name}: mAP@0.5 {_fmt(m.map50)}"
        if m.pruned:
            part += f", keep ratio {_fmt(m.keep_ratio)}"
        if m.by_stage:  # SPEC 6c: mean retention of each stage, far / mid / near
            cells = ("/".join(_fmt(st["by_field"][g]["mean"]) for g in FIELDS) for st in m.by_stage)
            part += ", retention by stage (far/mid/near) " + ", ".join(
                f"{st['stage']}: {c}" for st, c in zip(m.by_stage, cells)
            )
        caption.append(part)
    table.caption = "; ".join(caption) + f" (IoU {result.iou_thr:g}, score >= {result.score_thr:g})"
    return table


def render_table(table: Any, width: int = 120) -> str:
    """A rich renderable -> plain text (no colour codes), e.g. for logs and tests."""

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(table)
    return buf.getvalue()


__all__ = [
    "GROUPS",
    "FieldReport",
    "ValidationResult",
    "build_result",
    "evaluate",
    "counts",
    "format_comparison_table",
    "render_table",
]


def counts(r: FieldReport) -> str:
    return f"{r.n_matched}/{r.n_gt}"
