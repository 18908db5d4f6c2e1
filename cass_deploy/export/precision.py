"""ONNX precision conversion: fp16 and int8 QDQ, both with ONNX Runtime's own tools.

By default the importance predictor and the pruner (TopK, mask) stay fp32, so the keep set
is decided at full precision of the predictor; the embedding, blocks and head are converted.
The predictor region is found from the graph itself: the nodes that use the predictor's
weights (matched by value), down to the ``scores`` output, plus everything between ``scores``
and the keep outputs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import ExportError, InputError
from cass_deploy.export.settings import CALIB_METHODS

ort_quant = lazy_import("onnxruntime.quantization", "onnxruntime")

float16 = lazy_import("onnxruntime.transformers.float16", "onnxruntime")

KEEP_OUTPUTS = ("keep_idx", "keep_mask")


def _producers(graph) -> dict[str, object]:
    return {out: n for n in graph.node for out in n.output}


def _walk(start: list, neighbours) -> set[str]:
    """Names of the nodes reachable from ``start`` through ``neighbours(node)``."""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        n = stack.pop()
        if n.name not in seen:
            seen.add(n.name)
            stack.extend(neighbours(n))
    return seen


def _ancestors(graph, tensors: Iterable[str]) -> set[str]:
    prod = _producers(graph)
    return _walk([prod[t] for t in tensors if t in prod], lambda n: [prod[i] for i in n.input if i in prod])


def _descendants(graph, names: set[str]) -> set[str]:
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return _walk(
        [n for n in graph.node if n.name in names], lambda n: [c for o in n.output for c in consumers.get(o, [])]
    )


def predictor_initializers(proto, params: Iterable[np.ndarray]) -> set[str]:
    """Initializers of ``proto`` whose values equal one of ``params`` (or its transpose).

    The exporter folds and renames weights (a dynamic batch loses every parameter name), so
    the predictor's weights are found by value.
    """

    # constant tensors (fresh LayerNorm weights, zero biases) would match other layers too
    want = [w for w in (np.asarray(p, dtype=np.float32) for p in params) if w.size > 1 and np.ptp(w) > 0]
    found = set()
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        for w in want:
            if arr.size != w.size or arr.dtype != np.float32:
                continue
            a = arr.reshape(arr.shape)
            if (
                (a.shape == w.shape and np.array_equal(a, w))
                or (a.ndim == 2 and w.ndim == 2 and a.shape == w.T.shape and np.array_equal(a, w.T))
                or np.array_equal(a.reshape(-1), w.reshape(-1))
            ):
                found.add(init.name)
                break
    return found


def predictor_region(
    proto, predictor_params: Iterable[np.ndarray] | None = None, predictor_pattern: str = "predictor"
) -> set[str]:
    """Names of the nodes of the importance predictor and the pruner in ``proto``.

    Predictor weights are recognised by value (``predictor_params``) or, without them, by an
    initializer name containing ``predictor_pattern``.
    """
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    if "scores" not in outputs:
        raise InputError("the ONNX graph has no 'scores' output; is it a cass-deploy export?")
    inits = {i.name for i in graph.initializer}
    marked = (
        predictor_initializers(proto, predictor_params)
        if predictor_params is not None
        else {i for i in inits if predictor_pattern in i}
    )
    seeds = {n.name for n in graph.node if any(i in marked for i in n.input)}
    if not seeds:
        raise InputError(
            "could not find the importance predictor's weights in the graph; keep the "
            "whole model at one precision (--no-keep-predictor-fp32)"
        )
    prod = _producers(graph)
    region = (_descendants(graph, seeds) & _ancestors(graph, ["scores"])) | seeds
    region |= _private_ancestors(graph, region)
    keep = [o for o in KEEP_OUTPUTS if o in outputs]
    region |= _descendants(graph, {prod["scores"].name}) & _ancestors(graph, keep)
    return region


def _private_ancestors(graph, region: set[str]) -> set[str]:
    """Nodes upstream of ``region`` whose outputs feed only ``region`` (e.g. the predictor's
    own LayerNorm), stopping at tensors shared with the rest of the model."""
    consumers: dict[str, set[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.name)
    graph_outputs = {o.name for o in graph.output}
    prod = _producers(graph)
    by_name = {n.name: n for n in graph.node}
    added: set[str] = set()
    changed = True
    while changed:
        changed = False
        inside = region | added
        for name in list(inside):
            for i in by_name[name].input if name in by_name else ():
                p = prod.get(i)
                if p is None or p.name in inside:
                    continue
                if all(o not in graph_outputs and consumers.get(o, set()) <= inside for o in p.output):
                    added.add(p.name)
                    changed = True
    return added


def to_fp16(proto, *, keep_predictor_fp32: bool = True, predictor_params: Iterable[np.ndarray] | None = None):
    """fp16 copy of ``proto``; inputs/outputs keep their types (casts at the boundary).

    Uses ONNX Runtime's maintained float16 converter (``onnxruntime.transformers.float16``);
    ``proto`` itself is left unchanged.
    """

    block = sorted(predictor_region(proto, predictor_params)) if keep_predictor_fp32 else []
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet():
            copy = onnx.ModelProto()
            copy.CopyFrom(proto)
            out = float16.convert_float_to_float16(copy, keep_io_types=True, node_block_list=block)
    except Exception as exc:
        raise ExportError(f"fp16 conversion failed: {exc}") from exc
    return out


class _Reader:
    """ONNX Runtime CalibrationDataReader over a list of input arrays."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._it: Iterator = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by the calibrators we call
        pass


def to_int8(
    proto,
    calibration: list[np.ndarray],
    *,
    input_name: str = "images",
    keep_predictor_fp32: bool = True,
    predictor_params: Iterable[np.ndarray] | None = None,
    method: str = "minmax",
):
    """Static int8 QDQ quantisation calibrated on ``calibration`` batches ([B, 3, H, W] float32).

    Symmetric int8 activations and per-channel weights (what TensorRT expects from Q/DQ),
    Conv / MatMul / Gemm quantised; the predictor and pruner excluded by default.
    """

    if not calibration:
        raise InputError("int8 export needs calibration images (--calib-images >= 1)")
    if method not in CALIB_METHODS:
        raise InputError(f"calibration method must be one of {sorted(CALIB_METHODS)}, got {method!r}")
    exclude = sorted(predictor_region(proto, predictor_params)) if keep_predictor_fp32 else []
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        try:
            with contextlib.redirect_stdout(io.StringIO()), _quiet():
                ort_quant.quantize_static(
                    str(src),
                    str(dst),
                    _Reader(input_name, calibration),
                    quant_format=ort_quant.QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=ort_quant.QuantType.QInt8,
                    weight_type=ort_quant.QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                    nodes_to_exclude=exclude,
                    calibrate_method=getattr(ort_quant.CalibrationMethod, CALIB_METHODS[method]),
                    # biases stay fp32: ORT would store them as INT32 behind a DequantizeLinear,
                    # which TensorRT's ONNX parser rejects (found by `cass-deploy check`)
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
                )
        except Exception as exc:
            raise ExportError(f"int8 quantisation failed: {exc}") from exc
        return onnx.load(dst)


@contextlib.contextmanager
def _quiet():
    lg = logging.getLogger()
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)
