"""Where a pruned graph's work runs, part by part (issue 22): MACs and, on ONNX Runtime, time.

A token-pruning graph has four parts, found from the graph alone (any SPEC §6b export, not only
the reference detector's):

- ``before the pruner``: everything that does not depend on a pruner output (stem, early
  blocks, importance predictor, the pruner's TopK itself);
- ``gather / scatter``: the Gather / Scatter nodes whose indices come from a pruner output, and
  the index arithmetic before them (nodes fed by ``keep_idx`` alone, no token data);
- ``pruned blocks``: the nodes on the kept tokens (after a gather, before the scatter-back);
- ``after scatter-back``: everything downstream of a Scatter that writes kept tokens back into
  the full grid (head, in-graph decode).

A graph without pruner outputs, or where nothing runs on the kept tokens (dense), has no parts
(``{}``). A pruner that exports a mask and no
gather (``threshold``) has no scatter-back: its head counts in ``pruned blocks``.

Time by part comes from ONNX Runtime's own profiler, run on the session's optimised graph: the
nodes it fused or inserted (Gelu, NCHWc reorders) are classified on that graph, so every
microsecond lands in a part.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.backends.probe import lazy_import
from cass_deploy.model.interface import INPUT_NAME, stage_names_in
from cass_deploy.runtime.ort_runner import session_options

onnx = lazy_import("onnx")
ort = lazy_import("onnxruntime", backend="onnxruntime", purpose="time by part")

PARTS = ("before the pruner", "gather / scatter", "pruned blocks", "after scatter-back")
GATHERS = frozenset({"Gather", "GatherElements", "GatherND"})
SCATTERS = frozenset({"ScatterElements", "ScatterND", "Scatter"})


def node_key(node: Any) -> str:
    """The name a node is known by (its name; its first output where it has none)."""
    return node.name or node.output[0]


def pruner_outputs(graph: Any) -> dict[str, int]:
    """``graph``'s pruner outputs (``keep_idx`` / ``keep_mask`` of each SPEC §6c stage) -> their
    stage, 1-based; ``{}`` for a graph without any."""
    stages = stage_names_in([o.name for o in graph.output])
    return {t: s for s, st in enumerate(stages, start=1) for t in (st.get("keep_idx"), st.get("keep_mask")) if t}


def node_parts(graph: Any) -> dict[str, str]:
    """``graph`` (an ONNX GraphProto, nodes in topological order) -> {:func:`node_key`: part}, one
    of :data:`PARTS` per node; ``{}`` for a graph without pruner outputs."""
    marks = set(pruner_outputs(graph))
    if not marks:
        return {}
    data = {i.name for i in graph.input}  # tensors that carry token / image data
    pruned: set[str] = set(marks)  # tensors downstream of a pruner output
    after: set[str] = set()  # tensors downstream of the scatter-back
    parts: dict[str, str] = {}
    for node in graph.node:
        ins = [t for t in node.input if t]
        is_pruned = any(t in pruned for t in ins)
        has_data = any(t in data for t in ins)
        by_index = node.op_type in GATHERS | SCATTERS and len(ins) > 1 and ins[1] in pruned and ins[1] not in data
        if any(t in after for t in ins):
            part = PARTS[3]
        elif by_index or (is_pruned and not has_data):
            part = PARTS[1]
        else:
            part = PARTS[2] if is_pruned else PARTS[0]
        parts[node_key(node)] = part
        outs = [t for t in node.output if t and t not in marks]
        if has_data:
            data.update(outs)
        if is_pruned:
            pruned.update(outs)
        if part == PARTS[3] or (by_index and node.op_type in SCATTERS and has_data):
            after.update(outs)
    return parts if PARTS[2] in parts.values() else {}


def share_lines(by_part: dict[str, float], unit: str, digits: int = 2) -> str:
    """``{part: amount}`` -> ``"before the pruner 150.08 (48%), ..."`` in :data:`PARTS` order."""
    total = sum(by_part.values()) or 1.0
    return ", ".join(
        f"{p} {by_part[p]:.{digits}f}{unit} ({100 * by_part[p] / total:.0f}%)" for p in PARTS if p in by_part
    )


def time_by_part(
    path: str | Path,
    *,
    image_size: Sequence[int],
    batch: int = 1,
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
) -> dict[str, float] | None:
    """Mean time per run (ms) of each part of the ONNX model at ``path`` on ONNX Runtime CPU, from
    its profiler over ``runs`` runs after ``warmup`` -> {part: ms} in :data:`PARTS` order (plus
    ``"not attributed"`` for any kernel the optimised graph does not name); None for a graph
    without parts. The profiler adds a little time to every node: compare the parts with each
    other, not with the timed latency."""
    with tempfile.TemporaryDirectory(prefix="cass-parts-") as tmp:
        saved = os.path.join(tmp, "optimised.onnx")
        options = session_options(threads, optimised_to=saved, profile_to=os.path.join(tmp, "ort"))
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        parts = node_parts(onnx.load(saved, load_external_data=False).graph)
        if not parts:
            return None
        h, w = image_size
        feed = {INPUT_NAME: np.random.default_rng(0).random((batch, 3, h, w), dtype=np.float32)}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return _sum_events(events, parts, runs, warmup)


def _sum_events(events: list[dict[str, Any]], parts: dict[str, str], runs: int, warmup: int) -> dict[str, float]:
    """ONNX Runtime profiler events -> mean ms per run by part (the first ``warmup`` runs dropped)."""
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(kernels) // max(1, warmup + runs)
    out = dict.fromkeys(PARTS, 0.0)
    for e in kernels[warmup * per_run :]:
        part = parts.get(e["name"][: -len("_kernel_time")], "not attributed")
        out[part] = out.get(part, 0.0) + e["dur"] / 1000.0
    return {p: v / runs for p, v in out.items()}


__all__ = ["PARTS", "node_parts", "node_key", "pruner_outputs", "share_lines", "time_by_part"]
