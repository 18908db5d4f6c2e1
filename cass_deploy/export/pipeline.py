"""``cass-deploy export``: checkpoint → ONNX (→ TensorRT engine) + manifest, all or nothing.

Order: load the checkpoint (optionally at another input size or pruner), check the backend
limits *before* building anything, export ONNX, convert precision, embed metadata, build the
engine, hash every artefact into ``manifest.json``. Everything is written into a temporary
directory beside ``out`` and renamed into place at the end, so a failed export leaves nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cass_deploy.backends import limits
from cass_deploy.backends.probe import require, trt_major_version
from cass_deploy.data.factory import load_dataset
from cass_deploy.errors import CassDeployError, InputError
from cass_deploy.export import precision as prec
from cass_deploy.export.graph_check import refuse_unbuildable
from cass_deploy.export.graph_facts import BUILD_SETTINGS, GraphFacts
from cass_deploy.export.onnx_export import export_part, io_specs, op_types
from cass_deploy.export.settings import ExportRequest
from cass_deploy.export.tensorrt_build import build_engine, onnx_facts, plan_build, trtexec_for
from cass_deploy.io_utils import Output
from cass_deploy.model.adapter import load_model, source_from
from cass_deploy.model.interface import model_stages, stages_record
from cass_deploy.runtime import manifest as mf
from cass_deploy.runtime.manifest import ENGINE_NAME, ONNX_NAME, Manifest
from cass_deploy.runtime.trt_engine import device_facts
from cass_deploy.runtime.trt_runner import device_name


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    notes: list[str]


def _calibration(req: ExportRequest, image_size, n: int) -> list:
    """Calibration batches shaped like the graph input: [batch, 3, H, W] (the opt batch when dynamic)."""

    step = req.dynamic_batch[1] if req.dynamic_batch else req.batch
    ds = load_dataset(req.calib_data, split="val", num_images=max(n, step), image_size=tuple(image_size), seed=1)
    if len(ds) < step:
        raise InputError(f"calibration set {req.calib_data!r} has {len(ds)} images, fewer than one batch of {step}")
    imgs = np.stack([ds[i]["image"].numpy() for i in range(min(max(n, step), len(ds)))]).astype(np.float32)
    return [imgs[i : i + step] for i in range(0, len(imgs) - step + 1, step)]


def run_export(req: ExportRequest, log: Callable[[str], None] = print) -> ExportResult:
    """Export per ``req``; returns the manifest. Raises before writing anything on bad input."""

    inputs = [req.checkpoint, req.weights]
    target_dir = Output(req.out, force=req.force, kind="dir", flag="--out", inputs=inputs).check()
    out = target_dir.path
    source, ckpt = _load_pruned(req)
    model = ckpt.model
    trt_major = trt_major_version() if req.engine else None
    target, graph, notes = _check_target(req, model, trt_major)
    trained_size = ckpt.trained_image_size
    if tuple(model.image_size) != trained_size:
        notes.append(
            f"note: input size {model.image_size[0]}x{model.image_size[1]} differs from the trained "
            f"{trained_size[0]}x{trained_size[1]}: the position embedding was resampled (bicubic); "
            "validate at this size before deploying"
        )
    log(
        f"exporting {req.parts} ({model.pruner_mode}, k={'/'.join(str(st.k) for st in model_stages(model))}, "
        f"{model.image_size[0]}x{model.image_size[1]}, "
        f"{req.precision}) from {source.describe()}"
    )
    proto = _onnx_at_precision(req, model)
    if target.startswith("tensorrt"):  # every node the target cannot take, named (SPEC 7c)
        refuse_unbuildable(proto, target, dynamic_batch=req.dynamic_batch, gpu_fallback=req.gpu_fallback, log=log)
    graph.check(target, ops=op_types(proto), dla_core=req.dla_core, gpu_fallback=req.gpu_fallback)

    base, extra = _manifest_fields(req, ckpt, source, proto, graph, target, notes)
    trt_opts = graph.build_options(**{name: getattr(req, name) for name in BUILD_SETTINGS})
    facts = onnx_facts(proto)
    trtexec = _trtexec(trt_opts, trt_major or 10, facts.has_qdq, facts.is_fp16, notes)
    with target_dir.writing() as tmp:
        man = _write_artefacts(tmp, proto, req, trt_opts, trtexec, base, extra, log)
    log(f"wrote {out}/{ONNX_NAME}" + (f", {out}/{ENGINE_NAME}" if req.engine else "") + f", {out}/manifest.json")
    for n in notes:
        log(n)
    return ExportResult(out=out, manifest=man, notes=notes)


def _load_pruned(req: ExportRequest):
    """``req``'s model source and the loaded model (outputs set per ``req``) -> (source, loaded);
    a dense (pruner ``none``) model is refused."""
    source = source_from(req.checkpoint, req.model, req.weights, req.model_args)
    ckpt = load_model(source, pruner_mode=req.pruner_mode, keep_ratio=req.keep_ratio, image_size=req.image_size)
    model = ckpt.model
    if req.parts == "full":
        _set_outputs(model, req)
    if model.pruner_mode == "none":
        raise InputError(
            "this checkpoint's pruner is 'none' (dense); export a pruned model with "
            "--pruner global|band|threshold, or use --parts full for the dense detector "
            "with --pruner global --keep-ratio 1.0"
        )
    return source, ckpt


def _check_target(req: ExportRequest, model, trt_major: int | None) -> tuple[str, GraphFacts, list[str]]:
    """The target whose limits apply, checked on the model's graph before anything is built ->
    (target, graph facts, notes); a missing TensorRT is said after its limits."""
    # without TensorRT here the limits are still checked (TensorRT 10's, the same TopK limit as 11's)
    # before saying that it is missing: a request no TensorRT can build is told so first
    target = req.target or (
        limits.target_for("tensorrt", trt_major=trt_major or 10, dla_core=req.dla_core)
        if req.engine
        else "onnxruntime-cpu"
    )
    graph = GraphFacts.from_model(model, req.precision, req.dynamic_batch)
    notes = graph.check(target, dla_core=req.dla_core, gpu_fallback=req.gpu_fallback)
    if req.engine and trt_major is None:
        require("tensorrt", "building an engine (--engine)")
    if not target.startswith("tensorrt"):  # say early whether the same graph would fit TensorRT
        try:
            graph.check("tensorrt10", gpu_fallback=req.gpu_fallback)
        except InputError as exc:
            notes.append(f"note: a TensorRT build of this export would be refused: {exc}")
    return target, graph, notes


def _onnx_at_precision(req: ExportRequest, model) -> onnx.ModelProto:
    """``req.parts`` of ``model`` as ONNX, converted to ``req.precision`` (int8: calibrated)."""
    proto = export_part(
        model, req.parts, batch=req.batch, dynamic_batch=req.dynamic_batch, opset=req.opset, simplify=req.simplify
    )
    params = (
        [p.detach().cpu().numpy() for p in model.predictor_parameters()]
        if hasattr(model, "predictor_parameters")
        else None
    )
    if req.precision == "fp16":
        proto = prec.to_fp16(proto, keep_predictor_fp32=req.keep_predictor_fp32, predictor_params=params)
    elif req.precision == "int8":
        calib = _calibration(req, model.image_size, req.calib_images)
        proto = prec.to_int8(
            proto, calib, keep_predictor_fp32=req.keep_predictor_fp32, predictor_params=params, method=req.calib_method
        )
    return proto


def _manifest_fields(
    req: ExportRequest, ckpt, source, proto: onnx.ModelProto, graph: GraphFacts, target: str, notes: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's typed fields (``build_manifest`` keywords) and its ``extra`` entries."""
    model = ckpt.model
    inputs, outputs = io_specs(proto)
    max_dets = next((o["shape"][1] for o in outputs if o["name"] == "det_scores"), None)
    base = dict(
        inputs=inputs,
        outputs=outputs,
        precision=req.precision,
        source_checkpoint=str(Path(ckpt.path).resolve()),
        checkpoint_sha256=ckpt.sha256,
        grid=list(model.grid),
        k=model.k,
        topk_sizes=graph.topk_sizes or None,
        keep_ratio=getattr(model, "keep_ratio", None),
        pruner_mode=model.pruner_mode,
        image_size=list(model.image_size),
        batch=None if req.dynamic_batch else req.batch,
        dynamic_batch=req.dynamic_batch,
        opset=req.opset,
        parts=req.parts,
    )
    extra = {
        "target": target,
        "keep_predictor_fp32": req.keep_predictor_fp32,
        "notes": notes,
        "profile": req.profile,
        "patch_size": model.patch_size,
        "num_classes": len(model.class_names),
        "class_names": list(model.class_names),
        "head_stride": getattr(getattr(model, "cfg", None), "head_stride", None),
        "trained_image_size": list(ckpt.trained_image_size),
        "model_source": source.to_dict(),
        "max_dets": max_dets,
        "det_score_thresh": req.det_score_thresh if max_dets is not None else None,
        **stages_record(model),
        **req.extra,
    }
    return base, extra


def _write_artefacts(
    tmp: Path,
    proto: onnx.ModelProto,
    req: ExportRequest,
    trt_opts,
    trtexec: str | None,
    base: dict[str, Any],
    extra: dict[str, Any],
    log: Callable[[str], None],
) -> Manifest:
    """Into ``tmp``: the ONNX with its metadata embedded, the engine (``req.engine``), the manifest."""
    onnx_path = tmp / ONNX_NAME
    onnx.save(proto, onnx_path)  # the draft manifest hashes it; the final one re-hashes
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    draft = mf.build_manifest(
        artefacts={"onnx": onnx_path}, base_dir=tmp, trtexec=trtexec, extra=extra, created=created, **base
    )
    onnx.save(mf.embed_onnx_metadata(proto, draft.onnx_metadata()), onnx_path)
    artefacts = {"onnx": onnx_path}
    if req.engine:
        result = build_engine(onnx_path, tmp / ENGINE_NAME, trt_opts, force=True, log=log)
        artefacts["engine"] = tmp / ENGINE_NAME

        extra["tensorrt"] = {**result.to_dict(), "device": device_name(), "built_on": device_facts().to_dict()}
        trtexec = result.trtexec or trtexec
    man = mf.build_manifest(artefacts=artefacts, base_dir=tmp, trtexec=trtexec, extra=extra, created=created, **base)
    man.write(tmp, force=True)
    return man


def _set_outputs(model, req: ExportRequest) -> None:
    """``--max-dets``, ``--raw-head`` and ``--det-score-thresh`` on a model that can change its
    outputs (``set_outputs``); a model that cannot keeps its own, and asking otherwise is an error."""
    asked = {"max_dets": req.max_dets, "raw_head": req.raw_head, "score_thresh": req.det_score_thresh}
    if hasattr(model, "set_outputs"):
        model.set_outputs(**asked)
        return
    if req.raw_head:
        raise InputError(
            f"{type(model).__name__} has no set_outputs(): --raw-head needs a model that can change its outputs"
        )


def _trtexec(opts, trt_major: int, has_qdq: bool, is_fp16: bool, notes: list[str]) -> str | None:
    """The equivalent trtexec line for building on the target (TensorRT 10 unless known)."""

    try:
        plan = plan_build(trt_major, opts, has_qdq=has_qdq, onnx_is_fp16=is_fp16)
    except CassDeployError as exc:
        notes.append(f"note: no trtexec line for TensorRT {trt_major}: {exc}")
        return None
    return trtexec_for(ONNX_NAME, ENGINE_NAME, opts, plan)
