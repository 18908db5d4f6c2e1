"""Every node of an ONNX graph that a deployment target cannot take or restricts (SPEC §7c), no torch.

:func:`check_graph` walks the graph once per target against that target's TensorRT operator matrix
(``backends/trt_ops``, NVIDIA's onnx-tensorrt ``docs/operators.md`` of a release branch) and returns a
:class:`TargetVerdict` of :class:`Finding` rows:

- ``error``: the target cannot build the graph: an op the matrix marks N or does not list, a custom
  domain op, a tensor type outside the op's supported types, an input the matrix says must be an
  initializer (or build-time constant) that is computed at run time, an attribute the matrix fixes
  (TopK ``sorted`` = 1), TopK's ``K`` over the limit, a dynamic dimension no optimisation profile covers;
- ``restricted``: a restriction the matrix states that this check cannot decide from the graph
  (its text verbatim), DOUBLE cast down to FLOAT, a data-dependent output shape;
- ``gpu-fallback``: on a DLA target, a node that is not a DLA layer and runs on the GPU.

Restrictions it could test and found met are counted (``checked``), not listed. ONNX Runtime targets
have no operator matrix: only custom-domain ops are reported there.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from cass_deploy.backends import limits, trt_ops
from cass_deploy.backends.probe import is_available
from cass_deploy.errors import LimitError

ERROR, RESTRICTED, FALLBACK = "error", "restricted", "gpu-fallback"
GRAPH = "(graph)"
#: ONNX element type -> the matrix's type names
TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.INT4: "INT4",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.STRING: "STRING",
}
#: ops whose output shape depends on the data (TensorRT builds them, our runners need static shapes)
DATA_DEPENDENT = ("NonZero", "NonMaxSuppression", "Unique", "Compress")


@dataclass(frozen=True)
class Finding:
    """One row of a target's table: ``node`` (name, or ``(graph)`` / an input name), its ``op``,
    ``level`` (error | restricted | gpu-fallback), ``what`` (short category) and ``detail``."""

    node: str
    op: str
    level: str
    what: str
    detail: str


@dataclass
class TargetVerdict:
    """A target's findings; ``can_build`` when none is an error. ``matrix`` cites the operator matrix."""

    target: str
    matrix: str | None = None
    matrix_note: str = ""
    findings: list[Finding] = field(default_factory=list)
    checked: int = 0
    nodes: int = 0

    @property
    def can_build(self) -> bool:
        return not any(f.level == ERROR for f in self.findings)

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the target and its verdict, the operator matrix used, then what was checked and found."""
        verdict = {"target": self.target, "can_build": self.can_build}
        matrix = {"matrix": self.matrix, "matrix_note": self.matrix_note}
        found = {"restrictions_checked_and_met": self.checked, "findings": [asdict(f) for f in self.findings]}
        return {**verdict, **matrix, "nodes": self.nodes, **found}


class _Graph:
    """Lookups over a shape-inferred graph: tensor types and shapes, initializer values, constants."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # noqa: BLE001 - a graph shape inference cannot read is checked without shapes
            pass
        g = model.graph
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.info = {v.name: v.type.tensor_type for v in [*g.input, *g.output, *g.value_info]}
        self.types = {name: t.elem_type for name, t in self.info.items()}
        self.types.update({i.name: i.data_type for i in g.initializer})
        self.io = {v.name for v in [*g.input, *g.output]}
        self._const: dict[str, bool] = {}

    def shape(self, name: str) -> list[int | None] | None:
        t = self.info.get(name)
        if t is None or not t.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]

    def is_initializer(self, name: str) -> bool:
        return name in self.values

    def is_build_time_constant(self, name: str, depth: int = 0) -> bool:
        """An initializer, a Constant, the Shape of a static tensor, or computed from those only."""
        if name in self._const:
            return self._const[name]
        node = self.producer.get(name)
        if name in self.values:
            ok = True
        elif node is None or depth > 64:
            ok = False
        elif node.op_type == "Shape":
            shape = self.shape(node.input[0])
            ok = shape is not None and all(d is not None for d in shape)
        else:
            ok = all(self.is_build_time_constant(i, depth + 1) for i in node.input if i)
        self._const[name] = ok
        return ok


def _schema(op: str, opset: int):
    try:
        return onnx.defs.get_schema(op, opset, "")
    except Exception:  # noqa: BLE001 - an op unknown to this onnx: no named inputs to check
        return None


def _attr(node: onnx.NodeProto, name: str, schema) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    default = schema.attributes[name].default_value if schema is not None and name in schema.attributes else None
    return onnx.helper.get_attribute_value(default) if default is not None and default.name else None


def _node_type(g: _Graph, node: onnx.NodeProto) -> str | None:
    """The matrix's type name of the node's data: its first input's element type (else first output's)."""
    for name in [*node.input[:1], *node.output[:1]]:
        if name and g.types.get(name):
            return TYPE_NAMES.get(g.types[name], onnx.TensorProto.DataType.Name(g.types[name]))
    return None


def _check_types(g: _Graph, node: onnx.NodeProto, row, out: list[Finding]) -> int:
    allowed = row.get("types") or []
    t = _node_type(g, node)
    if not allowed or t is None or t in allowed:
        return 1 if allowed and t else 0
    name, op = node.name or node.output[0], node.op_type
    if t == "DOUBLE":
        out.append(Finding(name, op, RESTRICTED, "type", "DOUBLE is cast down to FLOAT (clamped to +-FLT_MAX)"))
    else:
        out.append(Finding(name, op, ERROR, "type", f"{t} is not among {op}'s supported types ({', '.join(allowed)})"))
    return 0


def _check_rules(g: _Graph, node: onnx.NodeProto, row, out: list[Finding]) -> int:
    """The restrictions the matrix states as rules; returns how many were checked and met."""
    rules, schema = row.get("rules") or {}, _schema(node.op_type, g.opset)
    ctx = _Node(g, node, schema)
    met = 0
    for formal, kind in (rules.get("constant_inputs") or {}).items():
        t = ctx.tensor(formal)
        if t is not None:  # absent, or an attribute at this opset (attributes are constants)
            ok = g.is_initializer(t) if kind == "initializer" else g.is_build_time_constant(t)
            met += ctx.verdict(
                ok, out, "initializer", f"input `{formal}` ({t}) must be {_a(kind)}; it is computed at run time"
            )
    for formal, want in (rules.get("attribute_equals") or {}).items():
        got = ctx.value(formal)
        if got is not None:
            ok = bool(np.all(np.asarray(got) == want))
            met += ctx.verdict(
                ok, out, formal, f"`{formal}` is {np.asarray(got).tolist()}; {node.op_type} needs {want}"
            )
    for formal, allowed in (rules.get("attribute_in") or {}).items():
        got = ctx.value(formal)
        got = got.decode() if isinstance(got, bytes) else got
        if got is not None:
            met += ctx.verdict(got in allowed, out, formal, f"`{formal}` is {got!r}; supported: {', '.join(allowed)}")
    for formal in rules.get("all_ones") or []:
        got = ctx.value(formal)
        if got is not None:
            met += ctx.verdict(
                all(v == 1 for v in got), out, formal, f"`{formal}` is {list(got)}; must be empty or all ones"
            )
    for formal, bound in (rules.get("input_less_than") or {}).items():
        got = _value(g, ctx.tensor(formal))
        if got is None:
            if ctx.tensor(formal) is not None:
                out.append(
                    ctx.finding(RESTRICTED, formal, f"`{formal}` is computed at run time: cannot check it is < {bound}")
                )
            continue
        k = int(np.max(got))
        met += ctx.verdict(k < bound, out, formal, f"`{formal}` = {k}; {node.op_type} needs {formal} < {bound}")
    met += _check_presence(ctx, rules, out)
    if rules.get("static_input_shapes"):
        dyn = [i for i in node.input if i and any(d is None for d in (g.shape(i) or [None]))]
        met += ctx.verdict(
            not dyn, out, "dynamic shape", f"inputs {dyn} have dynamic shapes; {node.op_type} needs static ones"
        )
    out.extend(ctx.finding(RESTRICTED, "restriction", text) for text in rules.get("unchecked") or [])
    return met


def _check_presence(ctx: _Node, rules, out: list[Finding]) -> int:
    """Inputs / outputs / attributes the matrix calls unsupported must be absent; ranks, first output only."""
    met, node = 0, ctx.node
    used = {
        "inputs": {p for p in rules.get("unsupported_inputs") or [] if ctx.tensor(p)},
        "outputs": {p for p in rules.get("unsupported_outputs") or [] if ctx.tensor(p, outputs=True)},
        "attributes": {a.name for a in node.attribute} & set(rules.get("unsupported_attributes") or []),
    }
    for kind, names in used.items():
        if rules.get(f"unsupported_{kind}"):
            met += ctx.verdict(not names, out, kind, f"uses unsupported {kind} {sorted(names)}")
    if rules.get("first_output_only"):
        extra = [o for o in node.output[1:] if o]
        met += ctx.verdict(not extra, out, "outputs", f"only the first output is supported; {extra} are used")
    if rules.get("input_ranks") and node.input:
        rank = len(ctx.g.shape(node.input[0]) or [])
        if rank:
            met += ctx.verdict(
                rank in rules["input_ranks"], out, "rank", f"input rank {rank}; supported: 2D or 3D (rank 4 or 5)"
            )
    return met


class _Node:
    """A node with its schema: formal input/output names to tensors, attribute or constant values."""

    def __init__(self, g: _Graph, node: onnx.NodeProto, schema) -> None:
        self.g, self.node, self.schema = g, node, schema
        self.name = node.name or node.output[0]

    def tensor(self, formal: str, outputs: bool = False) -> str | None:
        if self.schema is None:
            return None
        params, names = (self.schema.outputs, self.node.output) if outputs else (self.schema.inputs, self.node.input)
        i = next((i for i, p in enumerate(params) if p.name == formal), None)
        return names[i] if i is not None and i < len(names) and names[i] else None

    def value(self, formal: str) -> Any:
        """An attribute's value (or its schema default), else a constant input's value, else None."""
        if (
            self.schema is not None
            and formal in self.schema.attributes
            or any(a.name == formal for a in self.node.attribute)
        ):
            return _attr(self.node, formal, self.schema)
        return _value(self.g, self.tensor(formal))

    def finding(self, level: str, what: str, detail: str) -> Finding:
        return Finding(self.name, self.node.op_type, level, what, detail)

    def verdict(self, ok: bool, out: list[Finding], what: str, detail: str) -> int:
        if not ok:
            out.append(self.finding(ERROR, what, detail))
        return int(ok)


def _a(kind: str) -> str:
    return "an initializer" if kind == "initializer" else "a build-time constant"


def _value(g: _Graph, name: str | None):
    return None if name is None else g.values.get(name)


def _check_topk_limit(g: _Graph, node: onnx.NodeProto, row, target: limits.TargetLimits, out: list[Finding]) -> int:
    """TopK's k against the target's ITopKLayer limit (k <= 3840) when the matrix states no bound."""
    if node.op_type != "TopK" or (row.get("rules") or {}).get("input_less_than") or target.max_topk_k is None:
        return 0
    k = _value(g, node.input[1]) if len(node.input) > 1 else _attr(node, "k", None)
    if k is None:
        return 0
    if int(np.max(k)) > target.max_topk_k:
        out.append(
            Finding(
                node.name or node.output[0],
                "TopK",
                ERROR,
                "K",
                f"K = {int(np.max(k))}; TensorRT's TopK takes k <= {target.max_topk_k}",
            )
        )
        return 0
    return 1


def _check_node(g: _Graph, node: onnx.NodeProto, target: limits.TargetLimits, matrix, out: list[Finding]) -> int:
    name, op = node.name or node.output[0], node.op_type
    if node.domain not in ("", "ai.onnx"):
        out.append(
            Finding(
                name, op, ERROR, "custom op", f"{node.domain}::{op} is not a standard ONNX op: needs a TensorRT plugin"
            )
        )
        return 0
    row = matrix.row(op)
    if row is None:
        out.append(Finding(name, op, ERROR, "unsupported op", f"not in the operator matrix of {matrix.label}"))
        return 0
    if not row["supported"]:
        detail = f"marked N (unsupported) in the operator matrix of {matrix.label}"
        out.append(
            Finding(
                name, op, ERROR, "unsupported op", detail + (f": {row['restrictions']}" if row["restrictions"] else "")
            )
        )
        return 0
    met = (
        _check_types(g, node, row, out) + _check_rules(g, node, row, out) + _check_topk_limit(g, node, row, target, out)
    )
    if op in DATA_DEPENDENT:
        out.append(
            Finding(
                name,
                op,
                RESTRICTED,
                "data-dependent shape",
                "its output shape depends on the data: TensorRT "
                "allocates it at run time; cass-deploy's TensorRT runner needs static output shapes",
            )
        )
    if target.dla and op not in target.dla_ops:
        out.append(Finding(name, op, FALLBACK, "DLA", "not a DLA layer (trt_ops/dla_layers.json): runs on the GPU"))
    return met


def _check_inputs(g: _Graph, target: limits.TargetLimits, dynamic_batch: Sequence[int] | None) -> list[Finding]:
    """Dynamic input dimensions against the optimisation profile (cass-deploy's covers the batch only)."""
    out = []
    for v in g.model.graph.input:
        dyn = [i for i, d in enumerate(g.shape(v.name) or []) if d is None]
        if v.name in g.values or not dyn:
            continue
        problems = []
        if [i for i in dyn if i != 0]:
            problems.append(
                f"dimensions {[i for i in dyn if i != 0]} of {v.name} are dynamic; cass-deploy builds an "
                "optimisation profile for the batch (dimension 0) only: export a fixed size"
            )
        if 0 in dyn and dynamic_batch is None:
            problems.append(f"{v.name} has a dynamic batch but no optimisation profile is given: pass --dynamic-batch")
        elif 0 in dyn and target.dla and dynamic_batch[0] != dynamic_batch[-1]:
            problems.append(f"DLA has no dynamic dimensions; profile {list(dynamic_batch)} must have min = opt = max")
        out += [Finding(v.name, "input", ERROR, "dynamic shape", p) for p in problems]
    return out


def check_graph(
    model: onnx.ModelProto,
    target: str,
    *,
    dynamic_batch: Sequence[int] | None = None,
    gpu_fallback: bool = True,
    graph: _Graph | None = None,
) -> TargetVerdict:
    """Every node of ``model`` that ``target`` cannot take or restricts. ``dynamic_batch`` is the
    optimisation profile ``(min, opt, max)`` of the batch dimension (``None``: a fixed batch)."""
    t = limits.get_target(target)
    g = graph or _Graph(model)
    verdict = TargetVerdict(target=target, nodes=len(g.model.graph.node))
    if t.op_matrix is None:
        verdict.findings = [
            Finding(
                n.name or n.output[0],
                n.op_type,
                ERROR,
                "custom op",
                f"{n.domain}::{n.op_type} is not a standard ONNX op",
            )
            for n in g.model.graph.node
            if n.domain not in ("", "ai.onnx", "com.microsoft")
        ]
        return verdict
    matrix = trt_ops.load_matrix(t.op_matrix)
    verdict.matrix, verdict.matrix_note = matrix.cite(), t.matrix_note
    out = _check_inputs(g, t, dynamic_batch)
    for node in g.model.graph.node:
        verdict.checked += _check_node(g, node, t, matrix, out)
    if t.dla and not gpu_fallback:
        out = [
            Finding(f.node, f.op, ERROR, f.what, f.detail + " and GPU fallback is off") if f.level == FALLBACK else f
            for f in out
        ]
    verdict.findings = out
    return verdict


def check_targets(
    model: onnx.ModelProto,
    targets: Sequence[str],
    *,
    dynamic_batch: Sequence[int] | None = None,
    gpu_fallback: bool = True,
) -> list[TargetVerdict]:
    """:func:`check_graph` for each target (the graph is prepared once)."""
    g = _Graph(model)
    return [check_graph(model, t, dynamic_batch=dynamic_batch, gpu_fallback=gpu_fallback, graph=g) for t in targets]


def refusal(verdict: TargetVerdict, limit: int = 8) -> str:
    """One line naming the nodes that stop ``verdict.target`` (for ``export --target tensorrt*``)."""
    errs = verdict.errors()
    listed = "; ".join(f"{f.node} ({f.op}): {f.detail}" for f in errs[:limit])
    more = f"; and {len(errs) - limit} more" if len(errs) > limit else ""
    return (
        f"target {verdict.target} cannot build this graph ({len(errs)} node(s), per {verdict.matrix}): {listed}{more}. "
        "Run `cass-deploy check` for the full table"
    )


def polygraphy_unsupported(onnx_path: Path, run=subprocess.run) -> dict[str, str] | None:
    """``polygraphy inspect capability ONNX`` (needs TensorRT): the nodes TensorRT's ONNX parser
    rejects, ``{node name: "Op: reason"}`` from its ``results.txt`` summary (``Stack trace | Operator |
    Node | Reason``; no file when the graph is fully supported). ``None`` when Polygraphy cannot run."""
    exe = shutil.which("polygraphy")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="cass-deploy-capability-") as tmp:
        out = Path(tmp) / "capability"
        res = run([exe, "inspect", "capability", str(onnx_path), "-o", str(out)], capture_output=True, text=True)
        if res.returncode != 0:
            return None
        results = out / "results.txt"
        if not results.is_file():
            return {}
        rows = {}
        for line in results.read_text().splitlines():
            cells = [c.strip() for c in line.split(" | ")]
            if len(cells) >= 4 and cells[1] not in ("Operator", "") and not set(line) <= {"-"}:
                rows[cells[2]] = f"{cells[1]}: {' | '.join(cells[3:])}"
        return rows


def disagreements(verdict: TargetVerdict, parser_rejects: dict[str, str]) -> list[str]:
    """Where the operator-matrix check and TensorRT's own parser (Polygraphy) disagree, one line each."""
    ours = {f.node: f for f in verdict.errors() if f.node != GRAPH and f.op != "input"}
    lines = [
        f"disagreement: TensorRT's parser rejects {node} ({why}); the {verdict.target} operator matrix check did not"
        for node, why in parser_rejects.items()
        if node not in ours
    ]
    lines += [
        f"disagreement: the operator matrix check refuses {node} ({f.op}: {f.detail}); TensorRT's parser accepts it"
        for node, f in ours.items()
        if node not in parser_rejects
    ]
    return lines


def refuse_unbuildable(
    model: onnx.ModelProto, target: str, log: Callable[[str], None] = print, **check: Any
) -> TargetVerdict:
    """``export --target tensorrt*``: the check of ``cass-deploy check`` first (``check``: the keyword
    arguments of :func:`check_graph`); a :class:`LimitError` naming every node that stops ``target``.
    Where TensorRT is installed, ``polygraphy inspect capability`` runs too and every disagreement with
    the matrix check is printed."""
    verdict = check_graph(model, target, **check)
    if is_available("tensorrt"):
        with tempfile.TemporaryDirectory(prefix="cass-deploy-check-") as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
            rejects = polygraphy_unsupported(path)
        if rejects is None:
            log("note: polygraphy inspect capability could not run; the operator matrix check stands alone")
        for line in disagreements(verdict, rejects or {}):
            log(line)
    if not verdict.can_build:
        raise LimitError(refusal(verdict))
    return verdict
