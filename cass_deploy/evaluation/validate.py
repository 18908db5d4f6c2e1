"""Run a deployed model (checkpoint, ONNX or engine) over a labelled set for ``validate``.

Builds the ``predict`` callable of :func:`cass_deploy.evaluation.scoring.evaluate` around a Runner, so the
same metric code scores torch, ONNX Runtime and TensorRT, and picks the reference (the dense
model with the same weights by default) for the side-by-side comparison and the gates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cass_deploy.config import FieldConfig
from cass_deploy.data.classes import ALL_CLASSES, class_names
from cass_deploy.data.collate import collate
from cass_deploy.data.common import RESIZE_MODES
from cass_deploy.data.factory import load_dataset
from cass_deploy.errors import InputError
from cass_deploy.evaluation.gates import GateCheck, Gates, RecallDrop, all_passed, check_gates, recall_drops
from cass_deploy.evaluation.scoring import ValidationResult, evaluate
from cass_deploy.model.adapter import LoadedModel, ModelSource, load_model, model_source_of
from cass_deploy.model.head import decode
from cass_deploy.model.interface import DET_OUTPUTS, INPUT_NAME
from cass_deploy.runtime.artefacts import check_layout, make_runner, resolve_candidates
from cass_deploy.runtime.manifest import Manifest
from cass_deploy.runtime.torch_runner import TorchRunner


@dataclass
class Deployed:
    """A model to validate: its runner, geometry, pruner and where its weights came from."""

    name: str
    runner: Any
    image_size: tuple[int, int]
    grid: tuple[int, int]
    batch: int | None  # fixed batch of an export, None when free
    pruned: bool
    checkpoint: Path | None
    pruner_mode: str | None
    keep_ratio: float | None
    num_classes: int | None
    manifest: Manifest | None = None  # an export's; None for a checkpoint
    class_names: tuple[str, ...] | None = None
    source: ModelSource | None = None  # where the weights came from (checkpoint or --model), when known


def _torch_deployed(name: str, loaded: LoadedModel, device: str, pruned: bool, keep_ratio: float | None) -> Deployed:
    """A model loaded through :func:`load_model` (a checkpoint or an adapter), run in torch (free batch)."""
    model = loaded.model
    return Deployed(
        name,
        TorchRunner(model, "full", device=device),
        tuple(model.image_size),
        tuple(model.grid),
        None,
        pruned,
        loaded.source.checkpoint,
        model.pruner_mode,
        keep_ratio,
        len(model.class_names),
        class_names=tuple(model.class_names),
        source=loaded.source,
    )


def open_model(
    path: str | None,
    providers: Sequence[str] = ("cpu",),
    device: str = "cpu",
    *,
    source: ModelSource | None = None,
    grid: Sequence[int] | None = None,
) -> Deployed:
    """A checkpoint (.pt), export directory, .onnx or .engine -> Deployed (runner not yet active).

    ``source``: a model loaded through ``--model SPEC --weights FILE`` instead of ``path``.
    ``grid``: the patch grid of an ONNX file without cass-deploy metadata (``--grid HP WP``); such
    a file must have SPEC §6b's outputs (``num_dets``, ``det_boxes``, ``det_scores``, ``det_classes``)
    and ``keep_mask``."""
    if source is not None:
        loaded = load_model(source)
        m = loaded.model
        return _torch_deployed(f"torch:{source.describe()}", loaded, device, m.pruner_mode != "none", _ratio(m))
    if path is None:
        raise InputError("validate needs a model path or --model SPEC --weights FILE")
    p = Path(path)
    if not p.exists():
        raise InputError(f"model {p} does not exist")
    if p.suffix in (".pt", ".pth"):
        loaded = load_model(ModelSource(checkpoint=p))
        m = loaded.model
        return _torch_deployed(f"torch:{p.name}", loaded, device, m.pruner_mode != "none", _ratio(m))

    cands = resolve_candidates([str(p)], providers, grid=grid)
    c = cands[-1]
    man = c.meta
    if man.parts != "full":
        raise InputError(
            f"{c.path} holds the '{man.parts}' part; validate needs a --parts full export "
            "(detections come from the head)"
        )
    check_layout([o["name"] for o in man.outputs], str(c.path))
    src = man.source_checkpoint_path
    if src and not Path(src).is_file() and (Path(c.path).parent / src).is_file():
        src = str(Path(c.path).parent / src)  # a relative path recorded by an older export
    names = man.extra.get("class_names")
    return Deployed(
        f"{c.kind}:{c.path}",
        make_runner(c, providers),
        man.image_size,
        man.grid or (),
        man.fixed_batch,
        man.pruner_mode != "none",
        Path(src) if src else None,
        man.pruner_mode,
        man.keep_ratio,
        man.num_classes or (len(names) if names else None),
        man,
        class_names=tuple(names) if names else None,
        source=model_source_of(man, src),
    )


def _ratio(model: Any) -> float | None:
    return getattr(model, "keep_ratio", None)


def deployed_to_lists(out: Mapping[str, Any]) -> dict[str, list]:
    """SPEC §6b outputs (``num_dets [B, 1]``, ``det_boxes [B, N, 4]``, ``det_scores [B, N]``,
    ``det_classes [B, N]``; numpy or torch) -> per image ``boxes [n_b, 4]``, ``scores [n_b]``,
    ``labels [n_b]`` int64 (the first ``num_dets`` rows)."""
    num = torch.as_tensor(np.asarray(out["num_dets"])).reshape(-1).long()
    boxes = torch.as_tensor(np.asarray(out["det_boxes"], dtype=np.float32))
    scores = torch.as_tensor(np.asarray(out["det_scores"], dtype=np.float32))
    labels = torch.as_tensor(np.asarray(out["det_classes"])).long()
    n_rows = boxes.shape[1] if boxes.dim() == 3 else 0
    if boxes.dim() != 3 or boxes.shape[2] != 4 or scores.shape != boxes.shape[:2] or labels.shape != scores.shape:
        raise InputError(
            f"deployed outputs have det_boxes {list(boxes.shape)}, det_scores {list(scores.shape)}, det_classes "
            f"{list(labels.shape)}; expected [B, N, 4], [B, N], [B, N]"
        )
    if num.shape[0] != boxes.shape[0] or bool(((num < 0) | (num > n_rows)).any()):
        raise InputError(f"num_dets {num.tolist()} must hold one count in 0..{n_rows} per image")
    return {
        "boxes": [boxes[b, : num[b]] for b in range(len(num))],
        "scores": [scores[b, : num[b]] for b in range(len(num))],
        "labels": [labels[b, : num[b]] for b in range(len(num))],
    }


def as_predictions(
    out: dict, image_size: Sequence[int], pruned: bool, score_floor: float = 0.01, decode_settings: dict | None = None
) -> dict:
    """Detector outputs (SPEC §6b's ``num_dets`` / ``det_*``, or the raw ``heatmap`` / ``box`` maps,
    and ``keep_mask``) -> what :func:`cass_deploy.evaluation.scoring.evaluate` takes: per-image
    ``boxes`` / ``scores`` / ``labels`` on the CPU, plus ``keep_mask`` [B, P] for a pruned model.
    Raw maps are decoded with ``decode_settings`` (:func:`cass_deploy.model.head.decode`'s keywords;
    the reference model's ``decode_settings``), by default the v2 decode."""

    if all(k in out for k in DET_OUTPUTS):
        res = deployed_to_lists(out)
    else:
        maps = {"heatmap": out["heatmap"].float(), "box": out["box"].float()}
        dets = decode(maps, tuple(image_size), score_thresh=score_floor, **(decode_settings or {}))
        res = {key: [det[key].cpu() for det in dets] for key in ("boxes", "scores", "labels")}
    if pruned and "keep_mask" in out:
        res["keep_mask"] = out["keep_mask"].bool().cpu()
    return res


def label_map(model_names: Sequence[str] | None) -> torch.Tensor | None:
    """Model class index -> dataset label (``data.classes``' fixed order, by name; -1: a class the
    datasets do not have), or None when the model's names already are that order."""
    if not model_names or tuple(model_names) == ALL_CLASSES[: len(model_names)]:
        return None
    lookup = {n: i for i, n in enumerate(ALL_CLASSES)}
    return torch.tensor([lookup.get(str(n).lower(), -1) for n in model_names], dtype=torch.int64)


def _relabel(res: dict, mapping: torch.Tensor | None) -> dict:
    if mapping is None:
        return res
    for b, lab in enumerate(res["labels"]):
        known = (lab >= 0) & (lab < len(mapping))
        new = torch.where(known, mapping[lab.clamp(0, len(mapping) - 1)], torch.full_like(lab, -1))
        keep = new >= 0  # detections of classes no dataset label names cannot be scored
        res["boxes"][b], res["scores"][b], res["labels"][b] = res["boxes"][b][keep], res["scores"][b][keep], new[keep]
    return res


def make_predict(d: Deployed, score_floor: float = 0.01) -> Callable:
    """predict(images [B,3,H,W] torch) -> {"boxes", "scores", "labels", "keep_mask"} for evaluate()."""
    mapping = label_map(d.class_names)

    def predict(images):
        x = images.detach().cpu().numpy().astype(np.float32)
        step = d.batch or len(x)
        outs: dict[str, list] = {}
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            if len(chunk) < step:  # fixed-batch export: pad the last chunk, drop the padding after
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - len(chunk), 0)])
            res = d.runner.infer({INPUT_NAME: chunk})
            for k, v in res.items():
                outs.setdefault(k, []).append(v)
        out = {k: torch.from_numpy(np.concatenate(v)[: len(x)]) for k, v in outs.items()}
        if not all(k in out for k in DET_OUTPUTS) and ("heatmap" not in out or "box" not in out):
            check_layout(list(out), d.name)
        return _relabel(as_predictions(out, d.image_size, d.pruned, score_floor), mapping)

    return predict


def resize_mode(resize: bool | str | None) -> str | None:
    """``--resize`` -> ``None`` (no resizing), ``"letterbox"`` (``True`` or ``"letterbox"``) or ``"stretch"``."""
    if resize is None or resize is False:
        return None
    if resize is True:
        return "letterbox"
    if resize in RESIZE_MODES:
        return str(resize)
    raise InputError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")


def load_batches(
    data: str,
    image_size: Sequence[int],
    num_images: int,
    batch_size: int = 8,
    seed: int = 0,
    split: str = "val",
    resize: bool | str = False,
):
    """Collated batches of a dataset at the model's ``image_size``.

    Synthetic scenes are generated at that size. Images of a dataset directory must already
    have it: a different size is an InputError naming both sizes unless ``resize`` (``"letterbox"``
    or ``True``: keep the aspect and pad; ``"stretch"``), which the caller has asked for. Each
    image then carries its transform, so detections are scored in the original image.
    """

    mode = resize_mode(resize)
    synthetic = str(data) == "synthetic"
    ds = load_dataset(
        data,
        split=split,
        num_images=num_images,
        image_size=tuple(image_size) if synthetic or mode else None,
        seed=seed,
        **({"resize_mode": mode} if mode and not synthetic else {}),
    )
    n = min(len(ds), num_images)
    if n == 0:
        raise InputError(f"dataset {data!r} is empty")
    got = tuple(ds[0]["image"].shape[1:])
    if got != tuple(image_size):
        raise InputError(
            f"dataset {data} has {got[0]}x{got[1]} images but the model takes "
            f"{image_size[0]}x{image_size[1]}; export at that size (--image-size) or pass --resize "
            "(letterbox: aspect kept, padded; or --resize stretch)"
        )
    return [collate([ds[j] for j in range(i, min(i + batch_size, n))]) for i in range(0, n, batch_size)]


def evaluate_deployed(
    d: Deployed, batches, *, fields, iou_thr: float = 0.5, score_thr: float = 0.3, num_classes: int | None = None
):
    """ValidationResult of a Deployed model on collated ``batches`` (classes from its metadata)."""

    if num_classes is None and label_map(d.class_names) is not None:  # scored in the datasets' label space
        num_classes = max(3, int(label_map(d.class_names).max()) + 1)
    num_classes = min(max(3, int(num_classes or d.num_classes or 3)), len(ALL_CLASSES))
    if not d.grid:
        raise InputError(f"{d.name}: its metadata lacks the patch grid")
    with d.runner:
        return evaluate(
            make_predict(d),
            batches,
            d.image_size,
            d.grid,
            fields=fields,
            iou_thr=iou_thr,
            score_thr=score_thr,
            num_classes=num_classes,
            class_names=class_names(num_classes > 3)[:num_classes],
            name=d.name,
        )


def saved_reference(path: str, section: str | None = None):
    """The reference result stored by an earlier ``validate --json`` run (its ``reference``
    section, else its ``result``): how a Jetson compares with the workstation's dense model.
    ``section`` (``"result"`` or ``"reference"``) picks one; ``accept`` compares with ``result``,
    the workstation's run of the same export."""

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read reference {path}: {exc}") from None
    if not isinstance(data, dict):
        data = {}
    found = data.get(section) if section else (data.get("reference") or data.get("result"))
    if not isinstance(found, dict):
        want = repr(section) if section else "'reference' or 'result'"
        raise InputError(f"{path} is not a validate --json output (no {want} section)")
    return ValidationResult.from_dict(found)


def validation_record(model: str, result, reference, checks, drops=None, gates=None) -> dict[str, Any]:
    """The ``validate*.json`` document (read by ``report`` and by ``--reference FILE.json``).

    ``drops``: :func:`gates.recall_drops` (the recall drop of every field with its interval);
    ``gates``: the Gates, whose decision rule and interval settings are recorded."""
    out = {
        "model": str(model),
        "result": result.to_dict(),
        "reference": reference.to_dict() if reference is not None else None,
        "gates": [c.to_dict() for c in checks],
        "drops": {g: d.to_dict() for g, d in drops.items()} if drops else None,
    }
    if gates is not None:
        out["statistics"] = {
            "recall_interval": "wilson",
            "drop_interval": "paired bootstrap over images",
            "confidence": gates.confidence,
            "resamples": gates.resamples,
            "seed": gates.seed,
            "gate_on": gates.gate_on,
            "allow_inconclusive": gates.allow_inconclusive,
        }
    return out


def compare(result, reference, gates: Gates) -> tuple[dict[str, RecallDrop] | None, list[GateCheck]]:
    """The drops of ``result`` against ``reference`` (None without one) and the gate checks."""
    drops = (
        recall_drops(result, reference, confidence=gates.confidence, resamples=gates.resamples, seed=gates.seed)
        if reference is not None
        else None
    )
    return drops, check_gates(result, reference, gates, drops=drops)


def reference_model(spec: str | None, d: Deployed, device: str = "cpu") -> Deployed | None:
    """The reference for the comparison: ``dense`` (same weights, no pruning; default),
    ``source`` (the model as exported, in torch), a checkpoint / export path, or ``none``.
    (A saved ``.json`` result is handled by :func:`saved_reference`.) The weights come from the
    deployed model's source — a checkpoint or a ``--model`` adapter recorded in its manifest; an
    adapter gives a dense reference through its ``with_pruner`` when it has one."""
    if spec == "none":
        return None

    if spec in (None, "dense", "source"):
        if d.source is None or not d.source.path.is_file():
            if spec is None:
                return None
            raise InputError(
                f"--reference {spec} needs the source checkpoint or weights of {d.name}, "
                f"which are not found ({d.checkpoint}); pass --reference CHECKPOINT"
            )
        mode = "none" if spec in (None, "dense") else d.pruner_mode
        if d.source.checkpoint is None and mode == "none":
            loaded = load_model(d.source)
            if not hasattr(loaded.model, "with_pruner"):
                if spec is None:
                    return None
                raise InputError(f"--reference dense needs with_pruner() on the --model {d.source.spec} object")
            loaded.model = loaded.model.with_pruner(mode="none")
        else:
            loaded = load_model(
                d.source,
                pruner_mode=mode,
                keep_ratio=None if mode == "none" else d.keep_ratio,
                image_size=d.image_size if d.source.checkpoint is not None else None,
            )
        if d.manifest is not None:  # the export's own source: still the file it was made from?
            d.manifest.check_source_checkpoint(loaded.path, loaded.sha256)
        label = "dense" if mode == "none" else "source"
        return _torch_deployed(f"torch:{label}", loaded, device, mode != "none", None)
    ref = open_model(spec, device=device)
    if tuple(ref.image_size) != tuple(d.image_size):
        raise InputError(
            f"reference {spec} takes {ref.image_size[0]}x{ref.image_size[1]} images but the model "
            f"takes {d.image_size[0]}x{d.image_size[1]}"
        )
    return ref


@dataclass
class ValidateRun:
    """What ``validate`` measured: the model's result, the reference's and the gate checks."""

    model: str
    result: ValidationResult
    reference: ValidationResult | None
    checks: list[GateCheck]
    drops: dict[str, RecallDrop] | None = None
    gates: Gates | None = None

    def __bool__(self) -> bool:
        return all_passed(self.checks)

    def to_dict(self) -> dict[str, Any]:
        """The ``validate*.json`` document."""
        return validation_record(self.model, self.result, self.reference, self.checks, self.drops, self.gates)


def run_validate(
    model: str | None,
    *,
    data: str = "synthetic",
    images: int = 64,
    reference: str | None = None,
    fields: FieldConfig | None = None,
    iou_thr: float = 0.5,
    score_thr: float = 0.3,
    gates: Gates | None = None,
    providers: Sequence[str] = ("cpu",),
    device: str = "cpu",
    resize: bool | str = False,
    seed: int = 0,
    source: ModelSource | None = None,
    grid: Sequence[int] | None = None,
    reference_section: str | None = None,
) -> ValidateRun:
    """``cass-deploy validate``: ``model`` (checkpoint, export directory, ``.onnx`` or ``.engine``) on
    ``images`` images of ``data``, against ``reference`` (see :func:`reference_model`; a ``.json``
    path is a saved result), with the gates checked. Gate failures are in the result, not raised.

    ``source``: validate a ``--model SPEC --weights FILE`` model (in torch) instead of ``model``;
    ``grid``: the patch grid of an ONNX file without cass-deploy metadata; ``resize``: ``False``
    (images must have the input size), ``"letterbox"`` (``True``) or ``"stretch"``."""
    if images < 1:
        raise InputError(f"--images must be >= 1, got {images}")
    gates = gates or Gates()
    fields = fields or FieldConfig()
    deployed = open_model(model, providers, device, source=source, grid=grid)
    saved = saved_reference(reference, reference_section) if reference and reference.endswith(".json") else None
    ref = None if saved is not None else reference_model(reference, deployed, device)
    if gates.max_recall_drop is not None and saved is None and ref is None:
        raise InputError(
            "--max-recall-drop needs a reference, but the source checkpoint of this model is not "
            "found: pass --reference CHECKPOINT or the JSON of a validate run made where it is"
        )
    batches = load_batches(data, deployed.image_size, images, seed=seed, resize=resize)
    kw = dict(fields=fields, iou_thr=iou_thr, score_thr=score_thr)
    result = evaluate_deployed(deployed, batches, **kw)
    ref_result = saved if saved is not None else (evaluate_deployed(ref, batches, **kw) if ref is not None else None)
    name = str(model) if model is not None else source.describe()  # type: ignore[union-attr]
    drops, checks = compare(result, ref_result, gates)
    return ValidateRun(name, result, ref_result, checks, drops, gates)
