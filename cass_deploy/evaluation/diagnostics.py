"""Bias diagnostics (SPEC §5): where the CASS loss and its gradient go, by band, size and object.

``analyse`` evaluates one normalisation on a batch and attributes each patch's loss
contribution and gradient magnitude ``|dL/dlogit|`` to (a) the horizontal band of its row
(far / mid / near), (b) the object that owns it (background otherwise), and so to the object's
field (by its box bottom edge) and size bin. ``save_heatmaps`` draws target, probability,
per-patch loss, gradient magnitude and keep mask with the boxes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from rich.table import Table
from torch import Tensor

from cass_deploy.backends.limits import check_image_size
from cass_deploy.cass.losses import cass_loss, target_options
from cass_deploy.cass.targets import BoxList, check_geometry, grid_for, patch_owner
from cass_deploy.config import FIELDS, CassConfig, FieldConfig, apply_overrides, from_dict
from cass_deploy.data.factory import load_dataset
from cass_deploy.errors import ConfigError, InputError
from cass_deploy.evaluation.metrics import SIZE_BINS, box_iou, field_of, greedy_match, size_bin_of
from cass_deploy.io_utils import atomic_dir, check_writable
from cass_deploy.model.adapter import ModelSource, load_model
from cass_deploy.model.head import DEFAULT_DECODE, centre_cells, decode
from cass_deploy.model.interface import compute_k


def toy_roadside_scene(image_size: Sequence[int] = (256, 448), seed: int = 0) -> Tensor:
    """Boxes [M, 4] of a roadside-like scene: a dense cluster of small far-field cars near the
    top-left horizon, a few mid-field cars, two large near-field trucks at the bottom."""
    H, W = (int(v) for v in image_size)
    g = torch.Generator().manual_seed(seed)
    n_far = 24
    w = 6 + 8 * torch.rand(n_far, generator=g)
    x = 0.45 * W * torch.rand(n_far, generator=g)
    y2 = 0.32 * H + 0.13 * H * torch.rand(n_far, generator=g)
    far = torch.stack([x, y2 - 0.7 * w, x + w, y2], 1)
    mid = torch.tensor([[0.30, 0.56, 0.38, 0.66], [0.55, 0.55, 0.64, 0.67], [0.70, 0.58, 0.80, 0.70]])
    near = torch.tensor([[0.05, 0.72, 0.42, 0.99], [0.55, 0.76, 0.95, 0.99]])
    rel = torch.cat([mid, near]) * torch.tensor([W, H, W, H], dtype=torch.float32)
    return torch.cat([far, rel]).clamp(min=0)


def row_bands(grid: Sequence[int], image_size: Sequence[int], fields: FieldConfig) -> Tensor:
    """Band of each patch -> [P] int64 into ``FIELDS``, by the row's centre y (same split as objects)."""
    (Hp, Wp), (H, W) = check_geometry(grid, image_size)
    cy = (torch.arange(Hp, dtype=torch.float64) + 0.5) * H / Hp
    band = torch.ones(Hp, dtype=torch.int64)
    band[cy < fields.far_max * H] = 0
    band[cy >= fields.near_min * H] = 2
    return band.repeat_interleave(Wp)


@dataclass
class Breakdown:
    """Shares (fractions of the batch total) of CASS loss and |gradient| for one normalisation."""

    normalization: str
    area_gamma: float
    loss_total: float
    by_band: dict[str, dict[str, float]]
    by_field: dict[str, dict[str, float]]
    by_size: dict[str, dict[str, float]]
    background: dict[str, float]
    objects: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _share(values: Tensor, index: Tensor, n: int, total: float) -> list[float]:
    sums = torch.zeros(n, dtype=torch.float64).index_add(0, index, values.double())
    return (sums / total if total > 0 else sums * 0).tolist()


def analyse(
    logits: Tensor,
    boxes: BoxList,
    grid: Sequence[int],
    image_size: Sequence[int],
    cfg: CassConfig,
    fields: FieldConfig | None = None,
    patch_size: int = 16,
) -> tuple[Breakdown, dict[str, Tensor]]:
    """Attribute CASS loss and gradient of ``logits [B, P]`` for ``cfg``.

    Returns the breakdown and the per-patch maps (``target``, ``prob``, ``loss``, ``grad``,
    ``contribution``, each [B, P]) for heat maps.
    """
    fields = fields or FieldConfig()
    (Hp, Wp), (H, W) = check_geometry(grid, image_size)
    x = logits.detach().double().clone().requires_grad_(True)
    boxes = [torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4) for b in boxes]
    out = cass_loss(x, boxes, grid, image_size, cfg, contributions=True)
    out.total.backward()
    grad = x.grad.abs().reshape(-1)
    contrib = out.contribution.reshape(-1)
    owner = patch_owner(boxes, grid, image_size, **target_options(cfg)).reshape(-1)
    loss_total, grad_total = float(contrib.sum()), float(grad.sum())
    bands = row_bands(grid, image_size, fields).repeat(x.shape[0])
    by_band = {
        name: {"loss_share": loss, "grad_share": g}
        for name, loss, g in zip(FIELDS, _share(contrib, bands, 3, loss_total), _share(grad, bands, 3, grad_total))
    }

    flat_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4, dtype=torch.float64)
    N = flat_boxes.shape[0]
    owned = owner >= 0
    slot = torch.where(owned, owner, torch.full_like(owner, N))  # slot N = background
    obj_loss = _share(contrib, slot, N + 1, loss_total)
    obj_grad = _share(grad, slot, N + 1, grad_total)
    n_owned = torch.bincount(slot, minlength=N + 1).tolist()
    f = field_of(flat_boxes, H, fields) if N else torch.zeros(0, dtype=torch.int64)
    s = size_bin_of(flat_boxes, patch_size) if N else torch.zeros(0, dtype=torch.int64)
    image = torch.cat([torch.full((len(b),), i, dtype=torch.int64) for i, b in enumerate(boxes)]) if N else f
    prob = torch.sigmoid(x.detach()).reshape(-1)
    mean_prob = _share(prob * owned, slot, N + 1, 1.0)
    bd = Breakdown(
        normalization=cfg.normalization,
        area_gamma=cfg.area_gamma,
        loss_total=loss_total,
        by_band=by_band,
        by_field=_group_shares(f, FIELDS, obj_loss, obj_grad),
        by_size=_group_shares(s, SIZE_BINS, obj_loss, obj_grad),
        background={"loss_share": obj_loss[N], "grad_share": obj_grad[N], "patches": n_owned[N]},
        objects=_object_rows(flat_boxes, image, f, s, obj_loss, obj_grad, n_owned, mean_prob),
        counts={"objects": out.n_objects, "supervised": out.n_supervised, "unsupervised": out.n_unsupervised},
    )
    maps = {
        "target": out.target.float(),
        "prob": torch.sigmoid(x.detach()).float(),
        "loss": out.per_patch.detach().float(),
        "grad": x.grad.abs().float(),
        "contribution": out.contribution.float(),
    }
    return bd, maps


def _object_rows(
    flat_boxes: Tensor,
    image: Tensor,
    f: Tensor,
    s: Tensor,
    obj_loss: list[float],
    obj_grad: list[float],
    n_owned: list[int],
    mean_prob: list[float],
) -> list[dict[str, Any]]:
    """One report row per object: its image, box, field and size bin, owned patches, loss and
    gradient share and mean probability over its patches. flat_boxes [N, 4]; image, f, s [N]
    int64; the lists per object slot (``mean_prob`` the summed probability of its patches)."""
    objects = []
    for n in range(flat_boxes.shape[0]):  # building the report rows, not tensor maths
        objects.append(
            {
                "image": int(image[n]),
                "box": [round(v, 1) for v in flat_boxes[n].tolist()],
                "field": FIELDS[int(f[n])],
                "size": SIZE_BINS[int(s[n])],
                "owned_patches": n_owned[n],
                "loss_share": obj_loss[n],
                "grad_share": obj_grad[n],
                "mean_prob": mean_prob[n] / n_owned[n] if n_owned[n] else None,
            }
        )
    return objects


def _group_shares(
    idx: Tensor, names: Sequence[str], obj_loss: list[float], obj_grad: list[float]
) -> dict[str, dict[str, float]]:
    """Objects, loss and gradient share of each group (``idx`` [N]: group of each object into ``names``)."""
    res = {}
    for k, name in enumerate(names):
        sel = (idx == k).nonzero().flatten().tolist()
        n = len(sel)
        gl = sum(obj_loss[i] for i in sel)
        gg = sum(obj_grad[i] for i in sel)
        res[name] = {
            "objects": n,
            "loss_share": gl,
            "grad_share": gg,
            "grad_share_per_object": gg / n if n else None,
        }
    return res


def _flat_gt(boxes: Sequence[Tensor], labels: Sequence[Tensor], dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image boxes / labels -> (boxes ``[N, 4]``, labels ``[N]``, image index ``[N]``) of all images."""
    if len(boxes) != len(labels):
        raise InputError(f"labels are needed per image: {len(boxes)} box lists, {len(labels)} label lists")
    gt = torch.cat([torch.as_tensor(b, dtype=dtype).reshape(-1, 4) for b in boxes])
    lab = torch.cat([torch.as_tensor(x, dtype=torch.int64).reshape(-1) for x in labels])
    counts = torch.tensor([torch.as_tensor(b).reshape(-1, 4).shape[0] for b in boxes])
    if gt.shape[0] != lab.shape[0] or any(int(torch.as_tensor(x).numel()) != int(c) for x, c in zip(labels, counts)):
        raise InputError(f"each image needs one label per box: {counts.tolist()} boxes, labels of other lengths")
    return gt, lab, torch.repeat_interleave(torch.arange(len(boxes)), counts)


def decode_ceiling(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    image_size: Sequence[int],
    head_size: Sequence[int],
    fields: FieldConfig | None = None,
    method: str = DEFAULT_DECODE,
) -> dict[str, dict[str, float]]:
    """How many ground-truth vehicles per field the decode can return at all, whatever the training.

    The reference head decodes one box per head cell (the regression is class-agnostic), so even
    a perfect heat map and perfect boxes find at most (a) one vehicle per cell holding its centre
    (the cell of its centre, as in the targets). The ``peak`` decode (3×3 max-pool peaks of each
    class's heat map) also finds at most (b) per class, one peak in any 2×2 block of cells (two
    cells of a block are neighbours: only the higher is a peak, barring exact ties); the ``nms``
    decode has no such limit (neighbouring cells survive when their boxes do not overlap). For
    each field the count of distinct (image, cell) and, for ``peak``, the smallest count of
    distinct (image, class, 2×2 block) over the four block tilings are upper bounds on the
    detections; divided by the field's objects they bound its recall.

    boxes: per image ``[M_i, 4]`` xyxy input pixels; labels: per image ``[M_i]`` int64;
    image_size ``(H, W)``; head_size ``(Hh, Wh)`` -> ``{field: {"objects", "one_per_cell",
    "one_peak_per_block", "bound"}}`` (recall bounds in [0, 1]; ``bound`` the smaller; a field
    without objects is left out).
    """
    fields = fields or FieldConfig()
    h, w = int(image_size[0]), int(image_size[1])
    hh, wh = int(head_size[0]), int(head_size[1])
    if not boxes:
        return {}
    gt, lab, img = _flat_gt(boxes, labels, torch.float64)
    f = field_of(gt, h, fields)
    row, col = (c.long() for c in centre_cells(gt, (h, w), (hh, wh)))
    cell = (img * hh + row) * wh + col
    n_cls = int(lab.max()) + 1 if lab.numel() else 1
    blocks = []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):  # the four tilings of 2×2 blocks
        by, bx = torch.div(row + dy, 2, rounding_mode="floor"), torch.div(col + dx, 2, rounding_mode="floor")
        blocks.append(((img * n_cls + lab) * (hh // 2 + 1) + by) * (wh // 2 + 1) + bx)
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(FIELDS):
        sel = f == k
        n = int(sel.sum())
        if n == 0:
            continue
        per_cell = cell[sel].unique().numel() / n
        per_block = min(b[sel].unique().numel() for b in blocks) / n if method == "peak" else 1.0
        out[name] = {
            "objects": n,
            "one_per_cell": per_cell,
            "one_peak_per_block": per_block,
            "bound": min(per_cell, per_block),
        }
    return out


def oracle_head_outputs(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    image_size: Sequence[int],
    head_size: Sequence[int],
    num_classes: int,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Head outputs of a perfect detector in the reference head's format, for measuring its decode.

    At each vehicle's centre cell (as in the targets), in its class channel, a heat logit of
    5 + U(0, 1) (distinct, so neighbouring peaks do not tie) and the exact ``(l, t, r, b)`` of its
    box; -20 elsewhere. Where vehicles share a cell, one of them holds it. Feeding this to
    :func:`cass_deploy.model.head.decode` measures what the decode itself can find
    (:func:`decode_ceiling` bounds it).

    boxes / labels: per image ``[M_i, 4]`` xyxy px / ``[M_i]`` -> ``heatmap [B, C, Hh, Wh]``,
    ``box [B, 4, Hh, Wh]``.
    """
    h, w = int(image_size[0]), int(image_size[1])
    hh, wh = int(head_size[0]), int(head_size[1])
    gt, lab, img = _flat_gt(boxes, labels, torch.float32)
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        raise InputError(f"labels must be in [0, {num_classes}), got {lab.min().item()}..{lab.max().item()}")
    sy, sx = h / hh, w / wh
    row, col = (c.long() for c in centre_cells(gt, (h, w), (hh, wh)))
    heat = torch.full((len(boxes), num_classes, hh, wh), -20.0)
    box = torch.zeros(len(boxes), 4, hh, wh)
    gen = torch.Generator().manual_seed(seed)
    heat[img, lab, row, col] = 5.0 + torch.rand(len(gt), generator=gen)
    px, py = (col.float() + 0.5) * sx, (row.float() + 0.5) * sy
    box.permute(0, 2, 3, 1)[img, row, col] = torch.stack(
        [px - gt[:, 0], py - gt[:, 1], gt[:, 2] - px, gt[:, 3] - py], 1
    )
    return {"heatmap": heat, "box": box}


def oracle_detections(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    image_size: Sequence[int],
    head_size: Sequence[int],
    num_classes: int,
    method: str = DEFAULT_DECODE,
) -> list[dict[str, Tensor]]:
    """Per image, the reference decode (``method``) of :func:`oracle_head_outputs` (seed = image
    index): the detections of a perfect heat map with exact boxes — ``boxes [D, 4]``,
    ``scores [D]``, ``labels [D]`` as :func:`cass_deploy.model.head.decode` returns them (e.g. for
    an mAP cap). Every vehicle's cell is a candidate (``nms``: up to 1024 per image)."""
    size = (int(image_size[0]), int(image_size[1]))
    cells = int(head_size[0]) * int(head_size[1])
    return [
        decode(
            oracle_head_outputs([b], [lab], size, head_size, num_classes, seed=i),
            size,
            0.5,
            cells,
            method=method,
            candidates=min(1024, cells * num_classes),
        )[0]
        for i, (b, lab) in enumerate(zip(boxes, labels))
    ]


def decode_limits(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    image_size: Sequence[int],
    head_size: Sequence[int],
    num_classes: int,
    fields: FieldConfig | None = None,
    iou_thr: float = 0.5,
    method: str = DEFAULT_DECODE,
) -> dict[str, dict[str, float]]:
    """Per field: :func:`decode_ceiling`'s bounds and the recall (IoU ``iou_thr``, same class) of
    the reference decode fed :func:`oracle_head_outputs` (``oracle_found`` of ``objects``,
    ``oracle_recall``) — what no amount of training of this head can exceed."""
    fields = fields or FieldConfig()
    h = int(image_size[0])
    out = decode_ceiling(boxes, labels, image_size, head_size, fields, method)
    found = torch.zeros(len(FIELDS))
    dets = oracle_detections(boxes, labels, image_size, head_size, num_classes, method)
    for det, b, lab in zip(dets, boxes, labels):
        b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
        lab = torch.as_tensor(lab, dtype=torch.int64).reshape(-1)
        same = det["labels"][:, None] == lab[None, :]
        hit = greedy_match(box_iou(det["boxes"], b), iou_thr, allowed=same) >= 0
        found += torch.bincount(field_of(b, h, fields)[hit], minlength=len(FIELDS)).float()
    for k, name in enumerate(FIELDS):
        if name in out:
            out[name]["oracle_found"] = int(found[k])
            out[name]["oracle_recall"] = float(found[k]) / out[name]["objects"]
    return out


def keep_mask_topk(logits: Tensor, keep_ratio: float) -> Tensor:
    """Global top-k keep mask [B, P] with k = ceil(keep_ratio * P)."""
    k = compute_k(keep_ratio, logits.shape[1])
    idx = torch.topk(logits, k, dim=1).indices
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx, True)


def save_heatmaps(
    path: str | Path,
    maps: dict[str, Tensor],
    keep: Tensor,
    boxes: Tensor,
    grid: Sequence[int],
    image_size: Sequence[int],
    title: str,
    image: Tensor | None = None,
) -> Path:
    """One PNG: (image), target, probability, per-patch loss, |gradient|, keep mask, boxes drawn.

    maps: each [P] for one image; keep: [P] bool; boxes: [M, 4]; image: [3, H, W] in [0, 1].
    """
    Hp, Wp = grid
    H, W = image_size
    panels = [
        ("target", maps["target"], "viridis"),
        ("probability", maps["prob"], "viridis"),
        ("per-patch loss", maps["loss"], "magma"),
        ("|gradient|", maps["grad"], "magma"),
        ("keep mask", keep.float(), "gray"),
    ]
    if image is not None:
        panels.insert(0, ("image", None, None))
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 4.2 * rows * H / W + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, data, cmap) in zip(axes.flat, panels):
        if data is None:
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, W, H, 0))
        else:
            im = ax.imshow(data.reshape(Hp, Wp).numpy(), cmap=cmap, extent=(0, W, H, 0), interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
        for x1, y1, x2, y2 in boxes.tolist():
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="cyan", linewidth=0.8))
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path


def breakdown_table(breakdowns: Sequence[Breakdown]):
    """rich Table: loss / gradient share per band and per object field, one row per normalisation."""

    t = Table(title="CASS loss and |gradient| share (% of batch total)")
    t.add_column("normalisation")
    for name in FIELDS:
        t.add_column(f"{name} band loss / grad", justify="right")
    for name in FIELDS:
        t.add_column(f"{name} objects grad / obj", justify="right")
    t.add_column("background grad", justify="right")
    for bd in breakdowns:
        label = bd.normalization + (f" g={bd.area_gamma:g}" if bd.normalization == "object" else "")
        cells = [f"{100 * bd.by_band[n]['loss_share']:.1f} / {100 * bd.by_band[n]['grad_share']:.1f}" for n in FIELDS]
        for n in FIELDS:
            v = bd.by_field[n]["grad_share_per_object"]
            cells.append("-" if v is None else f"{100 * v:.2f}")
        cells.append(f"{100 * bd.background['grad_share']:.1f}")
        t.add_row(label, *cells)
    return t


NORMS = ("patch", "area", "seed_object", "object")


def parse_normalizations(text: str, overrides: Sequence[str] = ()) -> list[CassConfig]:
    """``"patch,object,object:1"`` + CASS overrides -> one CassConfig per item (``object:GAMMA`` sets area_gamma)."""
    base = apply_overrides({}, overrides)
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, gamma = item.partition(":")
        if name not in NORMS:
            raise ConfigError(f"unknown normalisation {name!r} in --normalizations; choose from {', '.join(NORMS)}")
        data = {**base, "normalization": name}
        if gamma:
            try:
                data["area_gamma"] = float(gamma)
            except ValueError:
                raise ConfigError(f"bad area gamma {gamma!r} in --normalizations item {item!r}") from None
        out.append(from_dict(CassConfig, data, prefix="cass."))
    if not out:
        raise ConfigError("--normalizations is empty")
    return out


def run_diagnose(
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    source: Any = None,
    data: str = "toy",
    num_images: int = 2,
    image_size: Sequence[int] | None = None,
    normalizations: str = "patch,area,seed_object,object,object:1",
    overrides: Sequence[str] = (),
    fields: FieldConfig | Sequence[float] = (0.5, 0.75),
    keep_ratio: float = 0.5,
    seed: int = 0,
    force: bool = False,
) -> tuple[dict[str, Any], list[Breakdown]]:
    """``cass-deploy diagnose``: heat maps (``out/heatmaps/*.png``) and ``out/diagnostics.json``.

    ``data`` is ``"toy"`` (boxes only, uniform logits unless a checkpoint is given), ``"synthetic"``
    or a dataset directory; with ``checkpoint`` (or ``source``, a ``--model`` adapter's
    :class:`~cass_deploy.model.adapter.ModelSource`) its predictor's scores are analysed. Returns
    the JSON summary and one Breakdown per normalisation.
    """
    check_writable(out, force, kind="dir", flag="--out")
    if num_images < 1:
        raise InputError(f"--num-images must be >= 1, got {num_images}")
    if not 0 < keep_ratio <= 1:
        raise InputError(f"--keep-ratio must be in (0, 1], got {keep_ratio}")
    cfgs = parse_normalizations(normalizations, overrides)
    fields = fields if isinstance(fields, FieldConfig) else FieldConfig(*fields)
    model, image_size, patch_size = _diagnosed_model(checkpoint, source, image_size)
    grid = grid_for(image_size, patch_size)
    images, boxes = _diagnosed_scenes(data, num_images, image_size, seed)
    P = grid[0] * grid[1]
    if model is not None:
        if images is None:
            raise InputError("--checkpoint needs images: use --data synthetic or a dataset directory")
        with torch.no_grad():  # the predictor part's first output is scores [B, P] (PrunableModel)
            logits = model.predictor_module()(images)[0].double()
    else:
        logits = torch.zeros(len(boxes), P, dtype=torch.float64)

    keep = keep_mask_topk(logits, keep_ratio)
    breakdowns = []
    with atomic_dir(out, force=force) as tmp:
        (tmp / "heatmaps").mkdir()
        for cfg in cfgs:
            bd, maps = analyse(logits, boxes, grid, image_size, cfg, fields, patch_size)
            breakdowns.append(bd)
            _save_normalization_heatmaps(tmp / "heatmaps", cfg, maps, keep, boxes, grid, image_size, images)
        summary = {
            "image_size": list(image_size),
            "grid": list(grid),
            "fields": vars(fields),
            "logits": "checkpoint" if model is not None else "uniform (0)",
            "data": data,
            "breakdowns": [bd.to_dict() for bd in breakdowns],
        }
        (tmp / "diagnostics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, breakdowns


def _diagnosed_model(
    checkpoint: str | Path | None, source: Any, image_size: Sequence[int] | None
) -> tuple[Any, tuple[int, ...], int]:
    """``diagnose``'s model (None without ``checkpoint`` / ``source``), input size and patch size: the
    model's own, else ``image_size`` (checked; default 256 x 448) with 16-px patches."""
    model = None
    image_size = tuple(image_size) if image_size is not None else None
    patch_size = 16
    if image_size is not None and not (checkpoint or source is not None):
        check_image_size(image_size, patch_size, "--image-size")
    if checkpoint and source is not None:
        raise InputError("give --checkpoint or --model, not both")
    if checkpoint or source is not None:
        model = load_model(source or ModelSource(checkpoint=Path(checkpoint))).model
        if image_size and tuple(image_size) != tuple(model.image_size):
            raise InputError(f"--image-size {image_size} differs from the checkpoint's {tuple(model.image_size)}")
        image_size = tuple(model.image_size)
        patch_size = model.patch_size
    return model, image_size or (256, 448), patch_size


def _diagnosed_scenes(
    data: str, num_images: int, image_size: tuple[int, ...], seed: int
) -> tuple[Tensor | None, list[Tensor]]:
    """``diagnose``'s inputs -> (images [B, 3, H, W] or None for ``"toy"`` boxes only, B box tensors [M_b, 4])."""
    if data == "toy":
        return None, [toy_roadside_scene(image_size, seed=seed + i) for i in range(num_images)]
    ds = load_dataset(data, split="val", num_images=num_images, image_size=image_size, seed=seed)
    items = [ds[i] for i in range(min(num_images, len(ds)))]
    return torch.stack([it["image"] for it in items]), [it["boxes"] for it in items]


def _save_normalization_heatmaps(
    folder: Path,
    cfg: CassConfig,
    maps: dict[str, Tensor],
    keep: Tensor,
    boxes: Sequence[Tensor],
    grid: Sequence[int],
    image_size: Sequence[int],
    images: Tensor | None,
) -> None:
    """``folder/<normalisation>_img<i>.png``: :func:`save_heatmaps` of every image for one normalisation
    (maps: each [B, P]; keep [B, P] bool; images [B, 3, H, W] or None)."""
    tag = cfg.normalization + (f"_g{cfg.area_gamma:g}" if cfg.normalization == "object" else "")
    for i in range(len(boxes)):
        save_heatmaps(
            folder / f"{tag}_img{i}.png",
            {k: v[i] for k, v in maps.items()},
            keep[i],
            torch.as_tensor(boxes[i]).reshape(-1, 4),
            grid,
            image_size,
            f"CASS {tag}: image {i}",
            None if images is None else images[i],
        )
