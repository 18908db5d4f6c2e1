"""Small ONNX rewrites that let the runtimes fuse what the exporter spelled differently.

torch's exporter writes the exact GELU (``nn.GELU()``, ``F.gelu``) at opset 17 as
``x * (0.5 * (1 + erf(x / sqrt 2)))``: the 0.5 is multiplied into ``1 + erf`` before ``x``.
ONNX Runtime's ``GeluFusion`` only recognises ``(x * (1 + erf(x / sqrt 2))) * 0.5`` (or
``(x * 0.5) * (1 + erf)``), so every GELU ran as five element-wise kernels (Div, Erf, Add, Mul,
Mul) instead of one: on the reference detector, dense at 256x448 on 2 CPU threads, ~15 % of the
run. :func:`reorder_gelu` swaps the two multiplications. Multiplying by 0.5 is exact in binary
floating point, so the rewritten graph computes bit-for-bit the same values; it is standard ONNX
(TensorRT sees the same five operators it always fused).
"""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import numpy_helper

SQRT2 = 1.4142135381698608  # float32(sqrt 2), the constant the exporter writes


def _scalar(init: dict[str, onnx.TensorProto], name: str) -> float | None:
    """The value of a one-element initializer ``name`` (None: not a one-element initializer)."""
    t = init.get(name)
    if t is None:
        return None
    a = numpy_helper.to_array(t)
    return float(a.reshape(-1)[0]) if a.size == 1 else None


def _other(node: onnx.NodeProto, name: str) -> str | None:
    """The input of a two-input ``node`` that is not ``name`` (None: ``name`` is not an input)."""
    ins = list(node.input)
    if len(ins) != 2 or name not in ins:
        return None
    return ins[1] if ins[0] == name else ins[0]


def reorder_gelu(proto: onnx.ModelProto) -> int:
    """Rewrite, in place, every ``Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(0.5, .) -> Mul(x, .)``
    of ``proto``'s main graph into ``Mul(x, Add) -> Mul(., 0.5)`` (the form ONNX Runtime fuses
    into one Gelu kernel) -> the number of GELUs rewritten. Node order stays topological: the
    first Mul now reads ``x`` and the Add, both computed before it."""
    g = proto.graph
    init = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)

    def only_consumer(name: str, op: str) -> onnx.NodeProto | None:
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    rewritten = 0
    for erf in [n for n in g.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or _scalar(init, div.input[1]) != SQRT2:
            continue
        x = div.input[0]
        add = only_consumer(erf.output[0], "Add")
        half_mul = add and only_consumer(add.output[0], "Mul")
        if add is None or half_mul is None or _scalar(init, _other(add, erf.output[0]) or "") != 1.0:
            continue
        half = _other(half_mul, add.output[0])
        x_mul = only_consumer(half_mul.output[0], "Mul")
        if half is None or _scalar(init, half) != 0.5 or x_mul is None or _other(x_mul, half_mul.output[0]) != x:
            continue
        half_mul.input[:] = [x, add.output[0]]
        x_mul.input[:] = [half_mul.output[0], half]
        rewritten += 1
    return rewritten


__all__ = ["reorder_gelu"]
