"""torch → ONNX for any :class:`~cass_deploy.model.interface.PrunableModel` part.

Uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs onnxscript):
k is a Python int fixed at build time, so the graph has no data-dependent shapes (except the
``threshold`` pruner, which exports a mask and no gather). The batch can be fixed or dynamic
within ``(min, max)``. The result is checked with ``onnx.checker`` and optionally simplified
with onnxslim.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence

import onnx
import torch

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import ExportError, InputError, interrupt_in
from cass_deploy.export.graph_rewrite import reorder_gelu
from cass_deploy.model.interface import INPUT_NAME, PrunableModel

onnxslim = lazy_import("onnxslim")

DEFAULT_OPSET = 17


def export_part(
    model: PrunableModel,
    part: str,
    *,
    batch: int = 1,
    dynamic_batch: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
):
    """Export ``model``'s ``part`` (``predictor`` or ``full``) -> onnx.ModelProto (not saved).

    dynamic_batch: ``(min, opt, max)`` makes dim 0 of the input and outputs symbolic.
    """

    if not isinstance(model, PrunableModel):
        raise InputError(
            f"{type(model).__name__} does not implement the PrunableModel interface "
            "(image_size, patch_size, grid, k, pruner_mode, predictor_module, full_module, output_names)"
        )
    module = model.predictor_module() if part == "predictor" else model.full_module() if part == "full" else None
    if module is None:
        raise InputError(f"--parts must be 'predictor' or 'full', got {part!r}")
    if not 7 <= int(opset) <= 23:
        raise InputError(f"opset {opset} is outside what this exporter supports (7..23; 17 recommended)")
    H, W = model.image_size
    module.eval()
    example = torch.rand(batch, 3, H, W)
    dynamic_shapes = None
    if dynamic_batch is not None:
        lo, _, hi = (int(v) for v in dynamic_batch)
        dynamic_shapes = ({0: torch.export.Dim("batch", min=max(lo, 1), max=hi)},)
        example = torch.rand(max(2, min(batch, hi)), 3, H, W)
    proto = export_module(
        module,
        example,
        input_name=INPUT_NAME,
        output_names=model.output_names(part),
        opset=opset,
        dynamic_shapes=dynamic_shapes,
        what=f"the {part} part",
    )
    if dynamic_batch is not None:
        _name_batch_dim(proto)
    if simplify:
        proto = simplify_model(proto)
    return proto


def export_module(
    module: torch.nn.Module,
    example: torch.Tensor,
    *,
    input_name: str,
    output_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
    dynamic_shapes: tuple | None = None,
    what: str = "the module",
):
    """One module of one input ``example`` -> onnx.ModelProto checked by ``onnx.checker`` (not
    simplified, not saved); the exporter's chatter is kept out of the output, and a failure is an
    :class:`ExportError` naming ``what`` with the exporter's first line and last output."""
    sink = io.StringIO()
    kwargs = {} if dynamic_shapes is None else {"dynamic_shapes": dynamic_shapes}
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_loggers():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                opset_version=int(opset),
                input_names=[input_name],
                output_names=list(output_names),
                verbose=False,
                external_data=False,
                **kwargs,
            )
    except Exception as exc:
        if interrupt_in(exc):  # Ctrl-C during the trace, wrapped by torch: an interruption, not a failure
            raise KeyboardInterrupt from None
        raise ExportError(
            f"torch.onnx export of {what} failed: {str(exc).strip().splitlines()[0]}\n{sink.getvalue()[-2000:]}"
        ) from exc
    proto = program.model_proto
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported ONNX fails onnx.checker: {exc}") from None
    return proto


def simplify_model(proto):
    """Constant folding and graph clean-up with onnxslim, then the GELUs put in the form ONNX
    Runtime fuses (:func:`~cass_deploy.export.graph_rewrite.reorder_gelu`, bit-exact); the model
    must still pass the checker."""

    with contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
        slim = onnxslim.slim(proto)
    reorder_gelu(slim)
    onnx.checker.check_model(slim)
    return slim


def _name_batch_dim(proto) -> None:
    """Give the symbolic batch dim the same name ``batch`` on the input and every output."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


@contextlib.contextmanager
def _quiet_loggers():
    names = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def io_specs(proto) -> tuple[list[dict], list[dict]]:
    """Input and output name / shape / dtype of an ONNX model (symbolic dims as strings)."""

    def entry(v):
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return [entry(v) for v in proto.graph.input], [entry(v) for v in proto.graph.output]


def op_types(proto) -> set[str]:
    return {n.op_type for n in proto.graph.node}
