"""Label-free validation (``validate --teacher T``): the deployed model's **agreement with a
teacher** on frames nobody labelled (a camera's own frames, a folder or a video).

The teacher T (the export's own source with the pruner off, ``dense``, by default; or any model
:func:`validate.open_model` opens) runs on every frame; its vehicle detections scoring at least
``teacher_score`` become pseudo ground truth in the original frame. The deployed model is then
scored against them with the labelled path's own code (:func:`scoring.evaluate`: matching at IoU
0.5, fields by box bottom edge, size bins, per-object retention by the keep mask), and so is the
teacher itself (its self-agreement: 1 wherever ``score_thr <= teacher_score``). The agreement
drop against the teacher, its paired bootstrap interval and the gates come from
:mod:`cass_deploy.evaluation.gates` / :mod:`stats` unchanged (SPEC §7a): only the words differ.
Every table, JSON key and message says "agreement with teacher T", never "recall": the teacher's
own misses are invisible to this measure (docs/label-free-validation.md).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from cass_deploy.config import FieldConfig
from cass_deploy.data.classes import CLASSES
from cass_deploy.data.common import fit_image
from cass_deploy.data.frames import Frames, read_frames, synthetic_frames
from cass_deploy.errors import InputError
from cass_deploy.evaluation.gates import GateCheck, Gates, RecallDrop, all_passed
from cass_deploy.evaluation.scoring import ValidationResult, content_patches, evaluate, to_original
from cass_deploy.evaluation.validate import (
    Deployed,
    check_class_map,
    class_notes,
    compare,
    label_map,
    make_predict,
    open_model,
    reference_model,
    resize_mode,
    validation_record,
)
from cass_deploy.model.adapter import ModelSource

#: COCO's 80 class names in id order (``--teacher-classes coco``: a COCO-trained teacher without names)
COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()
DRAW_THUMB_WIDTH = 480


def measure_name(teacher: str) -> str:
    """What label-free validation calls its measure: ``"agreement with teacher T"``."""
    return f"agreement with teacher {teacher}"


def vehicle_labels(names: Sequence[str] | None, class_map: Mapping[str, str | None] | None = None) -> set[int]:
    """The vehicle labels (car 0, truck 1, bus 2) a model with class ``names`` can emit (through
    ``class_map``, ``--class-map``: model class name -> dataset class, when given)."""
    mapping = label_map(names, class_map)
    if mapping is None:
        return set(range(min(len(names), len(CLASSES)))) if names else set(range(len(CLASSES)))
    return {int(v) for v in mapping.tolist() if 0 <= v < len(CLASSES)}


def teacher_classes(spec: str | None) -> tuple[str, ...] | None:
    """``--teacher-classes``: ``coco`` (COCO's 80 names) or a comma list of names, in id order."""
    if spec is None:
        return None
    if spec.strip().lower() == "coco":
        return tuple(COCO_NAMES)
    names = tuple(s.strip() for s in spec.split(","))
    if not all(names):
        raise InputError(f"--teacher-classes must be 'coco' or a comma list of class names, got {spec!r}")
    return names


def open_teacher(
    spec: str | None,
    deployed: Deployed,
    *,
    device: str = "cpu",
    providers: Sequence[str] = ("cpu",),
    source: ModelSource | None = None,
    names: tuple[str, ...] | None = None,
) -> tuple[str, Deployed]:
    """The teacher and its display name: ``dense`` / None (the export's source, pruner off), a
    checkpoint / export / ONNX / engine path, or ``source`` (``--teacher-model SPEC``). The
    deployed model's ``class_map`` applies to a teacher with the same class names. InputError
    when its vehicle classes share nothing with the deployed model's."""
    if source is not None:
        name, teacher = source.describe(), open_model(None, providers, device, source=source)
    elif spec in (None, "dense"):
        if deployed.source is None or not deployed.source.path.is_file():
            raise InputError(
                f"--teacher dense needs the source checkpoint or weights of {deployed.name}, which are not "
                "found; pass --teacher CHECKPOINT, an export directory or an ONNX file"
            )
        name, teacher = "dense", reference_model("dense", deployed, device)
    else:
        name, teacher = spec, open_model(spec, providers, device)
    if names is not None:
        teacher.class_names = names
    if teacher.class_names == deployed.class_names:
        teacher.class_map = deployed.class_map
    if not shared_vehicles(teacher, deployed):
        raise InputError(
            f"teacher {name}'s classes {list(teacher.class_names or [])[:12]} share no vehicle class with the "
            f"model's {list(deployed.class_names or CLASSES)}{' after --class-map' if deployed.class_map else ''}; "
            "pass --teacher-classes (e.g. coco) or --class-map"
        )
    return name, teacher


def shared_vehicles(teacher: Deployed, deployed: Deployed) -> set[int]:
    """The vehicle labels both the teacher and the deployed model emit (each through its class map)."""
    return vehicle_labels(teacher.class_names, teacher.class_map) & vehicle_labels(
        deployed.class_names, deployed.class_map
    )


def load_frames(
    data: str, image_size: Sequence[int], n: int, *, every=None, fps=None, resize=None, seed: int = 0
) -> Frames:
    """The unlabelled frames of ``data`` (``synthetic``, a folder of images, a video), up to ``n``.
    Frames of another size than ``image_size`` are an InputError unless ``resize``."""
    if str(data) == "synthetic":
        if every is not None or fps is not None:
            raise InputError("--every / --fps sample a video; --data synthetic is not one")
        return synthetic_frames(image_size, n, seed)
    frames = read_frames(data, n, every=every, fps=fps, allow_mixed=resize is not None)
    h, w = frames.images[0].shape[:2]
    if resize is None and (h, w) != tuple(image_size):
        raise InputError(
            f"--data {data} has {h}x{w} frames but the model takes {image_size[0]}x{image_size[1]}; pass "
            "--resize (letterbox: aspect kept, padded; or --resize stretch)"
        )
    return frames


def fit_batches(frames: Frames, image_size: Sequence[int], mode: str | None, batch: int = 8) -> list[dict]:
    """Frames -> batches ``{"images" [B, 3, H, W], "transforms" [B, 4], "orig_sizes" [B, 2],
    "index" [B]}`` at the input ``image_size`` (``mode``: letterbox / stretch; None: as they are)."""
    out = []
    for i in range(0, len(frames.images), batch):
        ims, tfs = [], []
        for k in range(i, min(i + batch, len(frames.images))):
            im, _, tf = fit_image(
                Image.fromarray(frames.images[k]),
                np.zeros((0, 4)),
                tuple(image_size),
                mode or "stretch",
                frames.names[k],
            )
            ims.append(torch.from_numpy(im.transpose(2, 0, 1).copy()).float().div_(255.0))
            tfs.append(torch.from_numpy(tf))
        idx = list(range(i, i + len(ims)))
        out.append(
            {
                "images": torch.stack(ims),
                "transforms": torch.stack(tfs),
                "orig_sizes": torch.tensor([list(frames.images[k].shape[:2]) for k in idx]),
                "index": idx,
            }
        )
    return out


def _to_input(boxes: torch.Tensor, tf: torch.Tensor) -> torch.Tensor:
    """Original-frame boxes [M, 4] -> network-input boxes (``x * s + p``)."""
    sx, sy, px, py = (float(v) for v in tf)
    return boxes * torch.tensor([sx, sy, sx, sy]) + torch.tensor([px, py, px, py])


@dataclass
class TeacherPass:
    """The teacher's detections on every frame, in the original frame (all scores above the
    decode floor), its keep masks (None unless it prunes on the deployed grid) and the pseudo
    ground truth (``boxes`` [M, 4], ``labels`` [M]) of each frame."""

    preds: list[dict[str, torch.Tensor]] = field(default_factory=list)
    keep: list[torch.Tensor] | None = None
    pseudo: list[dict[str, torch.Tensor]] = field(default_factory=list)


def run_teacher(
    teacher: Deployed, batches: list[dict], score: float, vehicles: set[int], same_grid: bool
) -> TeacherPass:
    """Run the teacher over its ``batches``; keep its vehicle detections scoring >= ``score``."""
    predict, out = make_predict(teacher), TeacherPass(keep=[] if teacher.pruned and same_grid else None)
    allowed = torch.tensor(sorted(vehicles))
    with teacher.runner:
        for b in batches:
            res = predict(b["images"])
            for j in range(len(b["index"])):
                pred = {k: res[k][j] for k in ("boxes", "scores", "labels")}
                orig = to_original(pred, b["transforms"][j], b["orig_sizes"][j].tolist())
                sel = (orig["scores"] >= score) & torch.isin(orig["labels"], allowed)
                out.preds.append(orig)
                out.pseudo.append({"boxes": orig["boxes"][sel], "labels": orig["labels"][sel]})
                if out.keep is not None and "keep_mask" in res:
                    out.keep.append(res["keep_mask"][j])
    return out


def with_pseudo_truth(batches: list[dict], pseudo: list[dict]) -> list[dict]:
    """Each batch with the pseudo ground truth as ``boxes`` (network input) / ``orig_boxes`` / ``labels``."""
    out = []
    for b in batches:
        gt = [pseudo[k] for k in b["index"]]
        n = len(gt)
        out.append(
            {
                **b,
                "boxes": [_to_input(g["boxes"], b["transforms"][j]) for j, g in enumerate(gt)],
                "orig_boxes": [g["boxes"] for g in gt],
                "labels": [g["labels"] for g in gt],
                "ignore": [torch.zeros((0, 4))] * n,
                "ignore_labels": [torch.zeros(0, dtype=torch.int64)] * n,
            }
        )
    return out


def replay(tp: TeacherPass, batches: list[dict]) -> Callable:
    """A ``predict`` that returns the teacher's recorded detections (mapped onto the deployed
    input) batch by batch, so its self-agreement is scored by the same code on the same batches."""
    it = iter(batches)

    def predict(images):
        b = next(it)
        idx = b["index"]
        res = {
            "boxes": [_to_input(tp.preds[k]["boxes"], b["transforms"][j]) for j, k in enumerate(idx)],
            "scores": [tp.preds[k]["scores"] for k in idx],
            "labels": [tp.preds[k]["labels"] for k in idx],
        }
        if tp.keep:
            res["keep_mask"] = torch.stack([tp.keep[k] for k in idx])
        return res

    return predict


def recording(predict: Callable, store: list) -> Callable:
    """``predict`` that also appends each batch's output to ``store`` (for the drawn frames)."""

    def wrapped(images):
        res = predict(images)
        store.append(res)
        return res

    return wrapped


def agreement_keys(doc: Any) -> Any:
    """A validate JSON document in label-free words: every key (and gate name) with "recall" says
    "agreement" instead (``recall_lo`` -> ``agreement_lo``, ``max_recall_drop`` ->
    ``max_agreement_drop``)."""
    if isinstance(doc, dict):
        return {
            k.replace("recall", "agreement"): (
                v.replace("recall", "agreement") if k == "name" and isinstance(v, str) else agreement_keys(v)
            )
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [agreement_keys(v) for v in doc]
    return doc


@dataclass
class LabelFreeRun:
    """What label-free ``validate`` measured (``result``: the deployed model's agreement with the
    teacher; ``reference``: the teacher's self-agreement), with the gate checks and drawn frames."""

    model: str
    teacher: str
    teacher_score: float
    result: ValidationResult
    reference: ValidationResult
    checks: list[GateCheck]
    drops: dict[str, RecallDrop]
    gates: Gates
    frames: dict[str, Any]
    camera_frames: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def measure(self) -> str:
        return measure_name(self.teacher)

    def __bool__(self) -> bool:
        return all_passed(self.checks)

    def to_dict(self) -> dict[str, Any]:
        """The label-free ``validate*.json`` (``kind: "label-free"``; read by ``report``'s camera frames)."""
        doc = agreement_keys(
            validation_record(self.model, self.result, self.reference, self.checks, self.drops, self.gates)
        )
        doc["agreement"], doc["teacher_agreement"] = doc.pop("result"), doc.pop("reference")
        return {
            "kind": "label-free",
            "measure": self.measure,
            "teacher": self.teacher,
            "teacher_score": self.teacher_score,
            **doc,
            "frames": self.frames,
            "camera_frames": self.camera_frames,
            "notes": list(self.notes),
        }


#: the options labelled and label-free validation take alike (those of :func:`validate.run_validate`)
SHARED_OPTIONS: dict[str, Any] = dict(fields=None, iou_thr=0.5, score_thr=0.3, gates=None, providers=("cpu",))
SHARED_OPTIONS.update(device="cpu", resize=False, seed=0, source=None, grid=None)


def run_label_free(
    model: str | None,
    *,
    data: str,
    teacher: str | None = None,
    teacher_source: ModelSource | None = None,
    teacher_names: tuple[str, ...] | None = None,
    teacher_score: float = 0.5,
    images: int = 64,
    every: int | None = None,
    fps: float | None = None,
    draw: int = 4,
    class_map: Mapping[str, str | None] | None = None,
    **options: Any,
) -> LabelFreeRun:
    """``validate MODEL --data FRAMES --teacher T``: see the module docstring. ``options``: those of
    :data:`SHARED_OPTIONS` (as :func:`validate.run_validate` takes them: fields, iou_thr, score_thr,
    gates, providers, device, resize, seed, source, grid). ``class_map``: ``--class-map`` (model
    class name -> dataset class), for the deployed model and a teacher with its class names.
    Gate failures are in the result, not raised; bad input is an InputError before anything is written."""
    unknown = sorted(set(options) - set(SHARED_OPTIONS))
    if unknown:
        raise TypeError(f"run_label_free() got unexpected options {unknown}")
    o = {**SHARED_OPTIONS, **options}
    if not 0.0 < teacher_score < 1.0:
        raise InputError(f"--teacher-score must be in (0, 1), got {teacher_score}")
    mode, source = resize_mode(o["resize"]), o["source"]
    deployed = open_model(model, o["providers"], o["device"], source=source, grid=o["grid"])
    check_class_map(deployed.class_names, class_map, deployed.name)
    deployed.class_map = class_map
    tname, tmodel = open_teacher(
        teacher, deployed, device=o["device"], providers=o["providers"], source=teacher_source, names=teacher_names
    )
    frames = load_frames(data, deployed.image_size, images, every=every, fps=fps, resize=mode, seed=o["seed"])
    scoring = {k: o[k] for k in ("fields", "iou_thr", "score_thr", "gates")}
    run = agreement_run(deployed, tname, tmodel, frames, teacher_score=teacher_score, mode=mode, draw=draw, **scoring)
    run.model = str(model) if model is not None else source.describe()
    run.notes = class_notes(deployed.class_names, class_map)
    return run


def agreement_run(
    deployed: Deployed,
    tname: str,
    tmodel: Deployed,
    frames: Frames,
    *,
    teacher_score: float,
    mode: str | None,
    fields: FieldConfig | None,
    iou_thr: float,
    score_thr: float,
    gates: Gates | None,
    draw: int = 4,
) -> LabelFreeRun:
    """The measurement of :func:`run_label_free` on opened models and read frames."""
    if mode is None and tuple(tmodel.image_size) != tuple(deployed.image_size):
        mode = "letterbox"  # the teacher's own input size: its detections are mapped back to the frame
    if not deployed.grid:
        raise InputError(f"{deployed.name}: its metadata lacks the patch grid (pass --grid HP WP)")
    dep_batches = fit_batches(frames, deployed.image_size, mode)
    same = tuple(tmodel.image_size) == tuple(deployed.image_size)
    t_batches = dep_batches if same else fit_batches(frames, tmodel.image_size, mode)
    vehicles = shared_vehicles(tmodel, deployed)
    same_grid = same and tuple(tmodel.grid or ()) == tuple(deployed.grid)
    tp = run_teacher(tmodel, t_batches, teacher_score, vehicles, same_grid)
    if not sum(len(p["labels"]) for p in tp.pseudo):
        raise InputError(
            f"teacher {tname} found no vehicle scoring >= {teacher_score} in {len(frames.images)} frames of "
            f"{frames.source}: nothing to agree with (lower --teacher-score or check the teacher)"
        )
    batches = with_pseudo_truth(dep_batches, tp.pseudo)
    fields, gates = fields or FieldConfig(), gates or Gates()
    kw = dict(fields=fields, iou_thr=iou_thr, score_thr=score_thr, classes=sorted(vehicles), compute_map=False)
    outputs: list = []
    size, grid = deployed.image_size, deployed.grid
    with deployed.runner:
        result = evaluate(recording(make_predict(deployed), outputs), batches, size, grid, name=deployed.name, **kw)
    ref = evaluate(replay(tp, batches), batches, size, grid, name=f"teacher {tname}", **kw)
    drops, checks = compare(result, ref, gates, measure=measure_name(tname))
    drawn = draw_data(frames, batches, outputs, result, grid, size, score_thr, draw)
    return LabelFreeRun(deployed.name, tname, teacher_score, result, ref, checks, drops, gates, frames.summary(), drawn)


def thumbnail(image: np.ndarray, width: int = DRAW_THUMB_WIDTH) -> tuple[str, float]:
    """A frame as a base64 JPEG at most ``width`` wide -> (data, scale from the frame to it)."""
    im = Image.fromarray(image)
    scale = min(1.0, width / im.width)
    if scale < 1.0:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode(), scale


def patch_rects(
    dropped: torch.Tensor, grid: Sequence[int], image_size: Sequence[int], tf: torch.Tensor
) -> torch.Tensor:
    """Patch indices ``dropped`` [D] of a ``grid`` over the ``image_size`` input -> their rectangles
    [D, 4] xyxy in the original frame (through the fitting transform ``tf``)."""
    (hp, wp), (H, W) = grid, image_size
    ph, pw = H / hp, W / wp
    r, c = (dropped // wp).float(), (dropped % wp).float()
    rects = torch.stack([c * pw, r * ph, (c + 1) * pw, (r + 1) * ph], dim=1)
    sx, sy, px, py = (float(v) for v in tf)
    return (rects - torch.tensor([px, py, px, py])) / torch.tensor([sx, sy, sx, sy])


def _scaled(boxes: torch.Tensor, scale: float) -> list[list[float]]:
    return [[round(float(v) * scale, 1) for v in row] for row in boxes.reshape(-1, 4).tolist()]


def draw_data(
    frames: Frames,
    batches: list[dict],
    outputs: list[dict],
    result: ValidationResult,
    grid: Sequence[int],
    image_size: Sequence[int],
    score_thr: float,
    n: int,
) -> list[dict[str, Any]]:
    """Up to ``n`` frames for the report's "camera frames" section, those where the deployed model
    missed most teacher boxes first: a thumbnail, the teacher's boxes (pseudo ground truth), the
    deployed model's boxes (score >= ``score_thr``) and the dropped patches, all in thumbnail pixels."""
    if n <= 0:
        return []
    totals = torch.tensor(result.per_image["totals"]).sum(1)
    misses = totals - torch.tensor(result.per_image["hits"]).sum(1)
    order = torch.argsort(misses * 10_000 + totals, descending=True, stable=True)[:n].tolist()
    where = {k: (bi, j) for bi, b in enumerate(batches) for j, k in enumerate(b["index"])}
    out = []
    for k in order:
        bi, j = where[k]
        b, res = batches[bi], outputs[bi]
        tf, hw = b["transforms"][j], b["orig_sizes"][j].tolist()
        mine = to_original({key: res[key][j] for key in ("boxes", "scores")}, tf, hw)
        mine_boxes = mine["boxes"][mine["scores"] >= score_thr]
        dropped = torch.zeros((0, 4))
        if "keep_mask" in res:
            content = content_patches(tf, hw, grid, image_size)
            dropped = patch_rects(
                torch.nonzero(~res["keep_mask"][j].bool() & content).reshape(-1), grid, image_size, tf
            )
        data, scale = thumbnail(frames.images[k])
        out.append(
            {
                "name": frames.names[k],
                "timestamp": frames.timestamps[k],
                "jpeg_base64": data,
                "teacher_boxes": _scaled(b["orig_boxes"][j], scale),
                "deployed_boxes": _scaled(mine_boxes, scale),
                "dropped_patches": _scaled(dropped, scale),
                "missed": int(misses[k]),
                "teacher_objects": int(totals[k]),
            }
        )
    return out


__all__ = ["run_label_free", "LabelFreeRun", "measure_name", "agreement_keys", "open_teacher", "draw_data"]
