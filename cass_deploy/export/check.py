"""``cass-deploy check``: the first command on a new model or ONNX file (SPEC §7c).

:func:`run_check` takes a model (``--model SPEC --weights W`` or this project's checkpoint), an
export directory or a plain ``.onnx``. A model goes through the adapter protocol
(``model.adapter.check_adapter``) and an export (trace) to a temporary directory that is removed
afterwards; then, per target, :func:`~cass_deploy.export.graph_check.check_graph` lists every node the
target cannot take or restricts, and the export's facts (TopK k, precision, DLA, dynamic batch) go
through ``backends.limits.check_request``. Nothing is written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from rich.table import Table

from cass_deploy.backends import limits
from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import InputError, LimitError
from cass_deploy.export.graph_check import ERROR, FALLBACK, GRAPH, Finding, TargetVerdict, check_targets
from cass_deploy.export.graph_facts import GraphFacts
from cass_deploy.export.settings import request_from
from cass_deploy.io_utils import check_writable, write_json
from cass_deploy.runtime import manifest as mf
from cass_deploy.runtime.manifest import Manifest, load_onnx

# torch only for a model (an export directory or a .onnx needs none)
pipeline = lazy_import("cass_deploy.export.pipeline")
adapter = lazy_import("cass_deploy.model.adapter")

#: targets checked when none is named: every GPU / CPU target (DLA only when asked: it needs fp16/int8)
DEFAULT_TARGETS = tuple(name for name, t in limits.TARGETS.items() if not t.dla)


@dataclass
class CheckReport:
    """What ``check`` found: ``verdicts`` per target; ``exit_code`` 0 when every target can build."""

    source: str
    kind: str  # "model" | "export" | "onnx"
    protocol: str | None
    facts: dict[str, Any] | None
    verdicts: list[TargetVerdict]
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if all(v.can_build for v in self.verdicts) else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what was checked (source, kind, protocol, facts), then the verdict per target and the notes."""
        checked = {key: getattr(self, key) for key in ("source", "kind", "protocol", "facts")}
        verdicts = {"all_targets_can_build": self.exit_code == 0, "targets": [v.to_dict() for v in self.verdicts]}
        return {**checked, **verdicts, "notes": self.notes}


def _targets(targets: Sequence[str] | None) -> list[str]:
    names = list(dict.fromkeys(targets or DEFAULT_TARGETS))
    for t in names:
        limits.get_target(t)  # ConfigError naming the unknown target
    return names


def _from_model(
    checkpoint: Path | None, model: str | None, weights: Path | None, model_args: Any, export_args: dict, tmp: Path
) -> tuple[Path, str]:
    """Protocol check, then an export (trace) to ``tmp``; returns the export directory and the protocol verdict."""
    source = adapter.source_from(checkpoint, model, weights, model_args)
    loaded = adapter.load_model(source, **{k: export_args.get(k) for k in ("pruner_mode", "keep_ratio", "image_size")})
    adapter.check_adapter(loaded.model, model or str(checkpoint))
    req = request_from(
        checkpoint=checkpoint,
        model=model,
        weights=weights,
        model_args=model_args,
        out=tmp / "export",
        parts="full",
        target="onnxruntime-cpu",
        **export_args,
    )
    pipeline.run_export(req, log=lambda s: None)
    return tmp / "export", f"{type(loaded.model).__name__}: protocol ok, traced and exported (opset {req.opset})"


def _facts_findings(facts: GraphFacts, target: str, gpu_fallback: bool) -> list[Finding]:
    t = limits.get_target(target)
    try:
        facts.check(target, dla_core=0 if t.dla else None, gpu_fallback=gpu_fallback)
    except LimitError as exc:
        return [Finding(GRAPH, "-", ERROR, "limit", str(exc))]
    return []


def run_check(
    source: Path | None = None,
    *,
    model: str | None = None,
    weights: Path | None = None,
    model_args: Any = None,
    targets: Sequence[str] | None = None,
    dynamic_batch: Sequence[int] | None = None,
    gpu_fallback: bool = True,
    export_args: dict | None = None,
    log: Callable[[str], None] = print,
) -> CheckReport:
    """Check ``source`` (export dir, ``.onnx`` or checkpoint) or ``model`` + ``weights`` on ``targets``."""
    names = _targets(targets)
    if (source is None) == (model is None):
        raise InputError(
            "check needs one of: an export directory, a model.onnx, a checkpoint, --model SPEC --weights W"
        )
    if source is not None and not source.exists():
        raise InputError(f"{source} does not exist (give an export directory, a .onnx file or a checkpoint)")
    protocol, kind = None, "model"
    with tempfile.TemporaryDirectory(prefix="cass-deploy-check-") as tmp:
        path = source
        if model is not None or (source.is_file() and source.suffix != ".onnx"):
            log(f"checking {model or source}: protocol, trace, export to a temporary directory")
            ckpt = source if model is None else None
            exp = {**(export_args or {}), "dynamic_batch": tuple(dynamic_batch) if dynamic_batch else None}
            path, protocol = _from_model(ckpt, model, weights, model_args, exp, Path(tmp))
        if path.is_dir():
            man = Manifest.read(path / mf.MANIFEST_NAME)
            man.check_artefacts(path, ["onnx"])
            proto, facts = load_onnx(man.artefact_path("onnx", path)), GraphFacts.from_manifest(man)
            dynamic_batch = facts.dynamic_batch
            kind = kind if protocol else "export"
        else:
            proto, facts, kind = load_onnx(path), None, "onnx"
    checker = _checker_note(proto)
    verdicts = check_targets(proto, names, dynamic_batch=dynamic_batch, gpu_fallback=gpu_fallback)
    for v in verdicts:
        if facts is not None:
            v.findings[:0] = _facts_findings(facts, v.target, gpu_fallback)
    fact_dict = None if facts is None else {k: v for k, v in vars(facts).items()}
    notes = checker + [f"{v.target}: {v.matrix_note}" for v in verdicts if v.matrix_note]
    return CheckReport(str(model or source), kind, protocol, fact_dict, verdicts, notes)


def check_to(
    source: Path | None, *, json_out: str | None = None, force: bool = False, **check_args: Any
) -> CheckReport:
    """``cass-deploy check``: ``--json FILE`` checked before anything runs (``-``: stdout, printed
    by the command), :func:`run_check`, then the report written to the file atomically."""
    to_file = json_out not in (None, "", "-")
    if to_file:
        check_writable(json_out, force, kind="file", flag="--json")
    report = run_check(source, **check_args)
    if to_file:
        write_json(json_out, report.to_dict(), force=force)
    return report


def _checker_note(proto: onnx.ModelProto) -> list[str]:
    """What ``onnx.checker`` objects to (ONNX Runtime may still run it, e.g. nodes out of topological
    order after an fp16 conversion); a note, since the per-node check does not depend on node order."""
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        first = (str(exc).strip().splitlines() or [""])[0]
        return [f"onnx.checker: {first[:300]}"]
    return []


def _rows(v: TargetVerdict, show: int = 3) -> list[tuple[str, str, str, str, str]]:
    """Table rows: errors and restrictions one per node; DLA GPU-fallback nodes grouped by op."""
    rows = [(f.node, f.op, f.level, f.what, f.detail) for f in v.findings if f.level != FALLBACK]
    by_op: dict[str, list[str]] = {}
    for f in v.findings:
        if f.level == FALLBACK:
            by_op.setdefault(f.op, []).append(f.node)
    for op, nodes in sorted(by_op.items(), key=lambda kv: -len(kv[1])):
        listed = ", ".join(nodes[:show]) + (f", ... ({len(nodes)} nodes)" if len(nodes) > show else "")
        rows.append((listed, op, FALLBACK, "DLA", "not a DLA layer: runs on the GPU (GPU fallback)"))
    return rows


def report_tables(report: CheckReport) -> list[Any]:
    """One rich Table per target: every node it cannot take or restricts, with the verdict as title."""
    tables = []
    for v in report.verdicts:
        verdict = "can build" if v.can_build else f"CANNOT build ({len(v.errors())} error(s))"
        if v.matrix:
            where = f"{v.nodes} nodes, {v.checked} restrictions checked and met; matrix: {v.matrix}"
        else:
            where = f"{v.nodes} nodes; no operator matrix (ONNX Runtime: custom-domain ops only)"
        t = Table(title=f"{v.target}: {verdict} — {where}")
        for col in ("node", "op", "level", "what", "detail"):
            t.add_column(col, overflow="fold")
        for row in _rows(v):
            t.add_row(*row)
        if not v.findings:
            t.add_row("-", "-", "ok", "-", "nothing this target cannot take or restricts")
        tables.append(t)
    return tables
