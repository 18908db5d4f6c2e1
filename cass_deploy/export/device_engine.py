"""Build a TensorRT engine on the device from an export directory (the Jetson workflow).

No torch and no checkpoint: the ONNX and its manifest are all it needs. Hashes and backend
limits are checked before the builder runs; the result is a new export directory (or the same
one, with ``--force``) holding the ONNX, the engine and a manifest naming the TensorRT version
and the device the engine was built on.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from cass_deploy.backends import limits
from cass_deploy.backends.probe import require, trt_major_version
from cass_deploy.errors import InputError
from cass_deploy.export.graph_check import refuse_unbuildable
from cass_deploy.export.graph_facts import GraphFacts
from cass_deploy.export.tensorrt_build import build_engine, inspect_onnx
from cass_deploy.io_utils import atomic_dir, check_writable
from cass_deploy.runtime import manifest as mf
from cass_deploy.runtime.manifest import ENGINE_NAME, ONNX_NAME, Manifest, load_onnx
from cass_deploy.runtime.trt_engine import device_facts
from cass_deploy.runtime.trt_runner import device_name

#: what the engine's manifest keeps from the export's: ``build_manifest`` parameter -> Manifest property
_KEPT = {
    **{name: name for name in ("inputs", "outputs", "precision", "grid", "k", "topk_sizes", "keep_ratio")},
    **{name: name for name in ("pruner_mode", "image_size", "dynamic_batch", "opset", "parts")},
    "source_checkpoint": "source_checkpoint_path",
    "checkpoint_sha256": "source_checkpoint_sha256",
    "batch": "fixed_batch",
}


def engine_from_export(
    src: Path,
    out: Path,
    *,
    workspace_mib: int | None = None,
    timing_cache: Path | None = None,
    dla_core: int | None = None,
    gpu_fallback: bool = True,
    strongly_typed: bool | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Manifest:
    """Build a TensorRT engine on this device from an existing export directory (no torch or
    checkpoint needed: the Jetson workflow). Copies ``model.onnx``, adds ``model.engine`` and
    writes a manifest with the engine's hash and the TensorRT version and device it was built on.
    """

    src = Path(src)
    man = Manifest.read(src / mf.MANIFEST_NAME)
    man.check_artefacts(src, ["onnx"])  # the file the engine is built from
    onnx_src = man.artefact_path("onnx", src)
    out = Path(out)
    in_place = out.resolve() == src.resolve()
    if in_place and "engine" in man.artefact_roles and not force:
        raise InputError(f"{src} already holds an engine; pass --force to rebuild it in place")
    if not in_place:
        check_writable(out, force, kind="dir", flag="--out")
    trt_major = trt_major_version()
    # the limits first (TensorRT 10's when none is installed: the same TopK limit as 11's), so a
    # request no TensorRT can build says so before "TensorRT is not installed"
    target = limits.target_for("tensorrt", trt_major=trt_major or 10, dla_core=dla_core)
    graph = GraphFacts.from_manifest(man)
    refuse_unbuildable(load_onnx(onnx_src), target, dynamic_batch=man.dynamic_batch, gpu_fallback=gpu_fallback, log=log)
    graph.check(target, ops=inspect_onnx(onnx_src).op_types, dla_core=dla_core, gpu_fallback=gpu_fallback)
    require("tensorrt", "building an engine")
    require("pycuda", "building an engine")
    opts = graph.build_options(
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
        dla_core=dla_core,
        gpu_fallback=gpu_fallback,
        strongly_typed=strongly_typed,
    )
    with atomic_dir(out, force=in_place or force) as tmp:
        shutil.copy2(onnx_src, tmp / ONNX_NAME)
        result = build_engine(tmp / ONNX_NAME, tmp / ENGINE_NAME, opts, force=True, log=log)
        new = mf.build_manifest(
            artefacts={"onnx": tmp / ONNX_NAME, "engine": tmp / ENGINE_NAME},
            base_dir=tmp,
            trtexec=result.trtexec,
            extra={
                **man.extra,
                "tensorrt": {**result.to_dict(), "device": device_name(), "built_on": device_facts().to_dict()},
            },
            **{param: getattr(man, prop) for param, prop in _KEPT.items()},
        )
        new.write(tmp, force=True)
    log(f"built {out}/{ENGINE_NAME} with TensorRT {result.trt_version} in {result.seconds:.0f} s")
    return new
