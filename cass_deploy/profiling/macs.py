"""Multiply-accumulates counted in an ONNX graph (SPEC §7a): the bound a speed-up is shown beside.

Shapes come from ONNX shape inference (``onnx.shape_inference.infer_shapes`` with data
propagation), so the count is of the graph that is deployed — after TopK fixed ``k``, the late
blocks' MatMuls run on ``[B, k, D]`` — not of the torch modules. Counted ops:

- ``MatMul`` / ``MatMulInteger`` / ``QLinearMatMul``: ``prod(Y.shape) * K`` with ``K = A.shape[-1]``
  (batched and broadcast matmuls included: the output shape carries the batch);
- ``Gemm``: ``M * N * K`` (``K`` from A, honouring ``transA``);
- ``Conv`` / ``ConvInteger`` / ``QLinearConv``: ``prod(Y.shape) * prod(W.shape[1:])``
  (``W`` is ``[C_out, C_in / group, k...]``);
- ``ConvTranspose``: ``prod(X.shape) * prod(W.shape[1:])`` (each input pixel scatters
  ``C_out / group * k...`` products).

Everything else (elementwise, softmax, normalisation, TopK, gathers) is not counted: its cost
is memory traffic, not multiply-accumulates. A counted op whose shapes are not all static
(a symbolic batch, a data-dependent count) is listed in ``unresolved`` instead of guessed;
``symbols={"batch": 1}`` fixes named dimensions.

onnx only: no torch, no ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import InputError
from cass_deploy.profiling.parts import PARTS, node_key, node_parts, pruner_outputs

onnx = lazy_import("onnx")

#: op type -> (index of A / X, index of B / W) among the node's inputs
MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
COUNTED = (*MATMUL_OPS, *CONV_OPS, "Gemm", "ConvTranspose")


@dataclass
class MacCount:
    """MACs of one graph: ``total`` and per op type; ``unresolved``: counted-op nodes whose shapes
    were not static (their MACs are not in ``total``)."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    unresolved: list[str] = field(default_factory=list)
    #: SPEC 6c: MACs by the pruning stage whose tokens they run on: ``"dense"`` (before the first
    #: pruner), ``"stage 1"``, ... — a node counts for the latest stage among its ancestors
    by_stage: dict[str, int] = field(default_factory=dict)
    #: MACs by part of a pruned graph (:data:`~cass_deploy.profiling.parts.PARTS`: before the
    #: pruner, gather / scatter, pruned blocks, after scatter-back); ``{}`` for a dense graph
    by_part: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.unresolved

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "gmacs": self.total / 1e9,
            "by_op": dict(self.by_op),
            "nodes": self.nodes,
            "unresolved": list(self.unresolved),
            "by_stage": dict(self.by_stage),
            "by_part": dict(self.by_part),
        }


def _dims(tt: Any, symbols: Mapping[str, int]) -> tuple[int, ...] | None:
    if not tt.HasField("shape"):
        return None
    out = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param in symbols:
            out.append(int(symbols[d.dim_param]))
        else:
            return None
    return tuple(out)


def _shapes(model: Any, symbols: Mapping[str, int]) -> dict[str, tuple[int, ...] | None]:
    g = model.graph
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            shapes[vi.name] = _dims(vi.type.tensor_type, symbols)
    for init in g.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def _load(model: Any) -> Any:
    if isinstance(model, (str, Path)):
        p = Path(model)
        if not p.is_file():
            raise InputError(f"ONNX file {p} does not exist")
        try:
            return onnx.load(str(p), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends
            raise InputError(f"cannot read ONNX file {p}: {exc}") from None
    return model


def count_macs(model: Any, symbols: Mapping[str, int] | None = None) -> MacCount:
    """Multiply-accumulates of ``model`` (an ``onnx.ModelProto`` or a path) for one forward pass
    at its input shapes -> :class:`MacCount` (see the module docstring for what is counted)."""
    proto = _load(model)
    symbols = dict(symbols or {})
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:
        raise InputError(f"ONNX shape inference failed: {exc}") from None
    shapes = _shapes(inferred, symbols)
    total, by_op, nodes, unresolved = 0, {}, 0, []
    stage_of = _stage_levels(inferred.graph)
    by_stage: dict[str, int] = {}
    part_of = node_parts(inferred.graph)
    by_part: dict[str, int] = dict.fromkeys(PARTS, 0) if part_of else {}

    def shape(name: str) -> tuple[int, ...] | None:
        return shapes.get(name)

    for node in inferred.graph.node:
        op = node.op_type
        if op not in COUNTED:
            continue
        y = shape(node.output[0])
        macs: int | None = None
        if op in MATMUL_OPS:
            ia, _ = MATMUL_OPS[op]
            a = shape(node.input[ia])
            if y is not None and a:
                macs = math.prod(y) * a[-1]
        elif op in CONV_OPS:
            _, iw = CONV_OPS[op]
            w = shape(node.input[iw])
            if y is not None and w:
                macs = math.prod(y) * math.prod(w[1:])
        elif op == "Gemm":
            a = shape(node.input[0])
            trans_a = next((int(at.i) for at in node.attribute if at.name == "transA"), 0)
            if y is not None and a and len(a) == 2:
                macs = math.prod(y) * (a[0] if trans_a else a[1])
        elif op == "ConvTranspose":
            x, w = shape(node.input[0]), shape(node.input[1])
            if x and w:
                macs = math.prod(x) * math.prod(w[1:])
        if macs is None:
            unresolved.append(f"{op} {node.name or node.output[0]}")
            continue
        nodes += 1
        total += int(macs)
        by_op[op] = by_op.get(op, 0) + int(macs)
        if stage_of:
            level = max((stage_of.get(t, 0) for t in node.input), default=0)
            key = f"stage {level}" if level else "dense"
            by_stage[key] = by_stage.get(key, 0) + int(macs)
        if part_of:
            by_part[part_of[node_key(node)]] += int(macs)
    return MacCount(total, by_op, nodes, unresolved, by_stage, by_part)


def _stage_levels(graph: Any) -> dict[str, int]:
    """Tensor name -> the latest pruning stage among its ancestors (0: none), from the graph's
    ``keep_idx`` / ``keep_idx_s`` outputs (``keep_mask`` ones in threshold mode); ``{}`` for a
    graph without pruner outputs. Nodes are in topological order (ONNX requires it)."""
    marks = pruner_outputs(graph)
    if not marks:
        return {}
    level: dict[str, int] = {}
    for node in graph.node:
        lv = max((level.get(t, 0) for t in node.input), default=0)
        for t in node.output:
            level[t] = max(lv, marks.get(t, 0))
    return level


def mac_bound(reference: MacCount, candidate: MacCount) -> float | None:
    """The speed-up ``candidate`` could reach over ``reference`` if time followed MACs:
    ``reference.total / candidate.total`` (None when either count is incomplete or empty)."""
    if not (reference.complete and candidate.complete) or candidate.total <= 0 or reference.total <= 0:
        return None
    return reference.total / candidate.total


__all__ = ["MacCount", "count_macs", "mac_bound", "COUNTED"]
