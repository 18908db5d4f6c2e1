"""One self-contained HTML report (images embedded) plus JSON, from a run directory.

It collects what the other commands wrote under ``RUN_DIR`` (any depth):
``history.json`` (train), ``diagnostics.json`` + ``heatmaps/*.png`` (diagnose), ``verify*.json``,
``profile.json`` + ``sweep.png``, ``validate*.json``, ``tune.json`` + ``pareto.png`` (tune);
label-free ``validate --json`` results (``kind: "label-free"``, any ``validate*.json`` or
``label-free*.json``) make the "camera frames" section: agreement with the teacher and a few
frames drawn with the teacher's boxes, the deployed model's boxes and the dropped patches shaded;
missing sections are listed, not invented. Recall is shown with its 95 % interval (bars with error
bars), drops with their paired interval, latency medians and speed-ups with theirs (SPEC §7a).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from cass_deploy.config import FIELDS
from cass_deploy.errors import InputError
from cass_deploy.io_utils import Output, cell, latency_cells, latency_headers, write_json

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.pass{color:#0a7a28;font-weight:600}
.fail{color:#b00020;font-weight:600}.muted{color:#777}img{max-width:100%;border:1px solid #eee;margin:.3rem 0}
code{background:#f6f6f6;padding:0 .2rem}.grid{display:grid;grid-template-columns:1fr 1fr;gap:.6rem}
"""


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        raise InputError(f"cannot read {path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"cannot read {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- input structure
# What each section reads from its JSON, checked before any is rendered: a file that parses but
# does not have this shape is an InputError naming the file and the field (``results[0].batch``).
# A dict lists the keys a section uses (``Opt``: may be absent or null; other keys are ignored),
# ``[x]`` a list of ``x``, a type (tuple) the value's. Extend these tables with the keys a new
# section reads.


class Opt:
    """A key that may be absent or null, with ``schema`` when present."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema


NUM = (int, float)
#: a number > 0 (a latency the report divides by)
POSITIVE = "positive"
SCHEMAS: dict[str, Any] = {
    "accept": {
        "verdict": str,
        "candidate": Opt(str),
        "backend": Opt(str),
        "checks": Opt([{"stage": str, "passed": bool, "message": str}]),
        "notes": Opt([str]),
    },
    "tune": {
        "table": Opt([{"config": str, "status": str, "speedup": Opt(NUM), "mac_bound": Opt(NUM)}]),
        "profile_yaml": Opt(str),
    },
    "train": [
        {
            "epoch": Opt(int),
            **{k: Opt(NUM) for k in ("loss", "det", "cass", "cass_weight", "map50", "seconds")},
        }
    ],
    "verify": {
        "candidates": Opt(
            [
                {
                    "name": str,
                    "precision": str,
                    **{k: Opt(NUM) for k in ("keep_iou_mean", "keep_iou_min", "plain_iou_mean", "mask_agreement")},
                    "score_max_abs": NUM,
                    "failures": Opt([str]),
                }
            ]
        ),
    },
    "profile": {
        "environment": Opt(dict),
        "results": Opt(
            [
                {
                    "label": str,
                    "backend": str,
                    "device": str,
                    "batch": int,
                    "latency_ms": {
                        "mean": POSITIVE,
                        **{k: NUM for k in ("p50", "p90", "p95", "p99", "max", "throughput_fps")},
                    },
                }
            ]
        ),
    },
    "validate": {
        "result": Opt({"by_field": Opt({f: Opt({"recall": Opt(NUM), "retention_mean": Opt(NUM)}) for f in FIELDS})}),
        "reference": Opt({"by_field": Opt({f: Opt({"recall": Opt(NUM)}) for f in FIELDS}), "name": Opt(str)}),
        "gates": Opt([{"message": Opt(str)}]),
    },
    "camera": {
        "kind": str,
        "measure": str,
        "agreement": Opt({"by_field": Opt({f: Opt({"agreement": Opt(NUM)}) for f in FIELDS})}),
        "camera_frames": Opt(
            [
                {
                    "name": str,
                    "jpeg_base64": str,
                    **{k: [[NUM]] for k in ("teacher_boxes", "deployed_boxes", "dropped_patches")},
                }
            ]
        ),
    },
    "diagnose": {
        "breakdowns": Opt(
            [
                {
                    "normalization": str,
                    "area_gamma": Opt(NUM),
                    "by_band": {f: {"loss_share": NUM, "grad_share": NUM} for f in FIELDS},
                    "by_field": {f: {"grad_share_per_object": Opt(NUM)} for f in FIELDS},
                }
            ]
        ),
    },
}


def check_structure(data: Any, schema: Any, where: str = "") -> None:
    """Raise ``ValueError("<field>: <what>")`` where ``data`` does not have the shape ``schema``."""
    name = where or "the top level"
    if isinstance(schema, dict):
        if not isinstance(data, dict):
            raise ValueError(f"{name} must be a JSON object, got {_kind(data)}")
        for key, sub in schema.items():
            path = f"{where}.{key}" if where else key
            if isinstance(sub, Opt):
                if data.get(key) is not None:
                    check_structure(data[key], sub.schema, path)
            elif key not in data:
                raise ValueError(f"{path} is missing")
            else:
                check_structure(data[key], sub, path)
    elif isinstance(schema, list):
        if not isinstance(data, list):
            raise ValueError(f"{name} must be a JSON list, got {_kind(data)}")
        for i, item in enumerate(data):
            check_structure(item, schema[0], f"{where}[{i}]")
    elif schema == POSITIVE:
        check_structure(data, NUM, where)
        if data <= 0:
            raise ValueError(f"{name} must be a number > 0, got {data}")
    else:
        numeric = schema is NUM or schema is int
        if isinstance(data, bool) and numeric or not isinstance(data, schema):
            raise ValueError(f"{name} must be {_wanted(schema)}, got {_kind(data)} {json.dumps(data)[:40]}")
        if isinstance(data, float) and not math.isfinite(data):
            raise ValueError(f"{name} must be a finite number, got {data}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _wanted(schema: Any) -> str:
    return {NUM: "a number", int: "an integer", str: "a string", dict: "an object"}.get(schema, str(schema))


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Find every known artefact under ``run_dir`` -> {section: [(relative path, data)]}."""
    root = Path(run_dir)
    if not root.is_dir():
        raise InputError(f"run directory {root} does not exist")
    found: dict[str, list] = {
        "train": [],
        "diagnose": [],
        "verify": [],
        "profile": [],
        "validate": [],
        "accept": [],
        "tune": [],
        "camera": [],
    }
    patterns = {
        "camera": "label-free*.json",
        "accept": "accept.json",
        "train": "history.json",
        "diagnose": "diagnostics.json",
        "verify": "verify*.json",
        "profile": "profile.json",
        "validate": "validate*.json",
        "tune": "tune.json",
    }
    for section, pattern in patterns.items():
        for p in sorted(root.rglob(pattern)):
            if any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            data = _load(p)
            if section == "validate" and isinstance(data, dict) and data.get("kind") == "label-free":
                section = "camera"  # noqa: PLW2901 - a label-free result is read by the camera section
            try:
                check_structure(data, SCHEMAS[section])
            except ValueError as exc:
                raise InputError(f"{p} is not a {section} result cass-deploy can read: {exc}") from None
            found[section].append((str(p.relative_to(root)), data))
    if not any(found.values()):
        raise InputError(
            f"{root} holds none of history.json, diagnostics.json, verify*.json, profile.json, "
            "validate*.json: run train / diagnose / verify / profile / validate with --out/--json there"
        )
    return found


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _notes_and_plot(notes: list[str], plot: Path) -> str:
    """A section's notes as a muted list, then its plot where the run drew one ("" for what is not there)."""
    listed = "<ul>" + "".join(f"<li class=muted>{html.escape(n)}</li>" for n in notes) + "</ul>" if notes else ""
    return listed + (_img(plot) if plot.is_file() else "")


def _fig_img(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else html.escape(str(c))}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{h}</tr>{body}</table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _field_chart(results: list[tuple[str, dict]], key: str, title: str) -> str:
    fig = Figure(figsize=(5.2, 3.2))
    ax = fig.subplots()
    width = 0.8 / max(1, len(results))
    for n, (label, res) in enumerate(results):
        reps = [((res.get("by_field") or {}).get(f) or {}) for f in FIELDS]
        vals = [r.get(key) for r in reps]
        heights = [v if v is not None else 0 for v in vals]
        err = None
        if key == "recall":  # the Wilson interval as an error bar (none where a field has no objects)
            err = [
                [max(0.0, h - r["recall_lo"]) if r.get("recall_lo") is not None else 0 for h, r in zip(heights, reps)],
                [max(0.0, r["recall_hi"] - h) if r.get("recall_hi") is not None else 0 for h, r in zip(heights, reps)],
            ]
        ax.bar(np.arange(3) + n * width, heights, width, label=label, yerr=err, capsize=3 if err else 0)
    ax.set_xticks(np.arange(3) + width * (len(results) - 1) / 2, FIELDS)
    ax.set_ylim(0, 1.05)
    ax.set_title(title + (" (95% CI)" if key == "recall" else ""))
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _fig_img(fig)


def _section_train(items) -> str:
    out = []
    for rel, hist in items:
        rows = [
            [
                h.get("epoch", i) + 1,
                cell(h.get("loss")),
                cell(h.get("det")),
                cell(h.get("cass")),
                cell(h.get("cass_weight"), 2),
                cell(h.get("map50")),
                cell(h.get("seconds"), 0),
            ]
            for i, h in enumerate(hist)
        ]
        out.append(
            f"<p class=muted>{html.escape(rel)}</p>"
            + _table(["epoch", "loss", "detection", "CASS", "CASS weight", "val mAP@0.5", "s"], rows)
        )
    return "".join(out)


def _section_accept(items) -> str:
    """``accept.json``: the verdict and one row per check."""
    out = []
    for rel, rec in items:
        verdict = "ACCEPTED" if rec.get("verdict") == "pass" else "REJECTED"
        rows = [[c["stage"], "pass" if c["passed"] else "FAIL", c["message"]] for c in rec.get("checks", [])]
        notes = "".join(f"<li>{html.escape(str(n))}</li>" for n in rec.get("notes", []))
        out.append(
            f"<p><b>{verdict}</b>: {html.escape(str(rec.get('candidate')))} ({html.escape(str(rec.get('backend')))}, "
            f"{html.escape(rel)})</p>"
            + _table(["stage", "result", "check"], rows)
            + (f"<ul>{notes}</ul>" if notes else "")
        )
    return "".join(out)


#: verify.json's fidelity figures of a candidate, shown to 4 decimals
_VERIFY_FIDELITY = ("keep_iou_mean", "keep_iou_min", "plain_iou_mean", "mask_agreement")


def _verify_row(c: dict) -> list[Any]:
    """One candidate of verify.json as a row of :func:`_section_verify`'s table."""
    row = [c["name"], c["precision"], *(cell(c[k], 4) for k in _VERIFY_FIDELITY), f"{c['score_max_abs']:.2e}"]
    if c.get("passed"):
        return [*row, _Raw('<span class="pass">pass</span>')]
    return [*row, _Raw(f'<span class="fail">FAIL</span> {html.escape("; ".join(c.get("failures", [])))}')]


def _section_verify(items) -> str:
    out = []
    for rel, rep in items:
        rows = [_verify_row(c) for c in rep.get("candidates", [])]
        out.append(
            f"<p class=muted>{html.escape(rel)}: reference {html.escape(str(rep.get('reference')))}, "
            f"{rep.get('images')} images</p>"
            + _table(
                [
                    "candidate",
                    "precision",
                    "keep IoU mean (tie-aware)",
                    "min",
                    "plain IoU",
                    "mask agreement",
                    "score max abs err",
                    "result",
                ],
                rows,
            )
        )
    return "".join(out)


def _section_profile(items, root: Path) -> str:
    out = []
    for rel, prof in items:
        rows = []
        res = prof.get("results", [])
        base = res[0]["latency_ms"]["mean"] if res else None
        comp = prof.get("comparison") or {}
        speed = {x["b"]: x for x in comp.get("speedups", [])}
        for r in res:
            s = r["latency_ms"]
            ci = r.get("p50_ci_ms") or {}
            sp = speed.get(r["label"])
            rows.append(
                [
                    r["label"],
                    f"{r['backend']}/{r['device']}",
                    r["batch"],
                    *latency_cells(s, base),
                    _ci(ci.get("lo"), ci.get("hi")),
                    f"{sp['ratio']:.2f}x {_ci(sp['lo'], sp['hi'], 2)}" if sp else "-",
                    f"{sp['mac_bound']:.2f}x" if sp and sp.get("mac_bound") else "-",
                    f"{100 * sp['share_of_mac_bound']:.0f}%" if sp and sp.get("share_of_mac_bound") else "-",
                ]
            )
        env = prof.get("environment", {})
        mode = "interleaved in rounds, paired" if comp.get("paired") else "one configuration after another"
        headers = ["config", "backend", "batch", *latency_headers("mean ms", "speed-up vs first")]
        headers += ["p50 95% CI", "p50 speed-up [95% CI]", "MAC bound", "of bound"]
        out.append(
            f"<p class=muted>{html.escape(rel)} ({mode}): {html.escape(json.dumps(env))}</p>" + _table(headers, rows)
        )
        out.append(_notes_and_plot(comp.get("warnings") or [], (root / rel).parent / "sweep.png"))
    return "".join(out)


def _section_validate(items) -> str:
    out, recall_series, retention_series = [], [], []
    for rel, v in items:
        res, ref = v.get("result") or {}, v.get("reference")
        label = Path(rel).stem
        recall_series.append((label, res))
        if res.get("pruned"):
            retention_series.append((label, res))
        rows = []
        drops = v.get("drops") or {}
        for f in FIELDS + ("all",):
            r = (res.get("by_field") or {}).get(f) or {}
            rr = ((ref or {}).get("by_field") or {}).get(f) or {}
            d = drops.get(f) or {}
            rows.append(
                [
                    f,
                    r.get("n_gt", "-"),
                    f"{cell(r.get('recall'))} {_ci(r.get('recall_lo'), r.get('recall_hi'))}",
                    f"{cell(rr.get('recall'))} {_ci(rr.get('recall_lo'), rr.get('recall_hi'))}" if rr else "-",
                    f"{cell(d.get('point'))} {_ci(d.get('lo'), d.get('hi'))}" if d.get("point") is not None else "-",
                    cell(r.get("retention_mean")),
                    cell(r.get("retention_share_ge_50")),
                ]
            )
        gates = v.get("gates") or []
        gate_html = "".join(
            f"<li class={'pass' if g.get('passed') else 'fail'}>"
            f"{_gate_label(g)}: {html.escape(str(g.get('message')))}</li>"
            for g in gates
        )
        out.append(
            f"<h3>{html.escape(label)}</h3><p class=muted>{html.escape(str(v.get('model')))}; mAP@0.5 "
            f"{cell(res.get('map50'))} (reference {cell((ref or {}).get('map50'))})</p>"
            + _table(
                [
                    "field",
                    "objects",
                    "recall [95% CI]",
                    "reference recall [95% CI]",
                    "drop [95% CI, paired]",
                    "retention mean",
                    "objects >= 50% kept",
                ],
                rows,
            )
            + (f"<ul>{gate_html}</ul>" if gate_html else "")
        )
        ref_label = f"reference ({ref.get('name', '?')})" if ref else None
        if ref and not any(label2 == ref_label for label2, _ in recall_series):
            recall_series.append((ref_label, ref))
    charts = ""
    if recall_series:
        charts += _field_chart(recall_series, "recall", "vehicle recall @ IoU 0.5 by field")
    if retention_series:
        charts += _field_chart(retention_series, "retention_mean", "pruner retention by field")
    return f"<div class=grid>{charts}</div>" + "".join(out)


def _section_camera(items) -> str:
    """Label-free results: agreement with the teacher by field, then the drawn frames."""
    out = []
    for rel, v in items:
        res, ref, drops = v.get("agreement") or {}, v.get("teacher_agreement") or {}, v.get("drops") or {}
        rows = []
        for f in FIELDS + ("all",):
            r, d = (res.get("by_field") or {}).get(f) or {}, drops.get(f) or {}
            rows.append(
                [
                    f,
                    r.get("n_gt", "-"),
                    f"{cell(r.get('agreement'))} {_ci(r.get('agreement_lo'), r.get('agreement_hi'))}",
                    cell(((ref.get("by_field") or {}).get(f) or {}).get("agreement")),
                    f"{cell(d.get('point'))} {_ci(d.get('lo'), d.get('hi'))}" if d.get("point") is not None else "-",
                    cell(r.get("retention_mean")),
                ]
            )
        frames = v.get("frames") or {}
        fails = frames.get("failures") or []
        gates = "".join(
            f"<li class={'pass' if g.get('passed') else 'fail'}>{_gate_label(g)}: "
            f"{html.escape(str(g.get('message')))}</li>"
            for g in v.get("gates") or []
        )
        measure = html.escape(v["measure"])
        out.append(
            f"<h3>{html.escape(Path(rel).stem)}: {measure}</h3><p class=muted>{html.escape(str(v.get('model')))} on "
            f"{frames.get('n_frames', '?')} frames of {html.escape(str(frames.get('source')))}; teacher boxes scoring "
            f">= {v.get('teacher_score')} are the pseudo ground truth"
            + (f"; {len(fails)} frame(s) did not decode" if fails else "")
            + ". The teacher's own misses are invisible here.</p>"
            + _table(
                ["field", "teacher boxes", f"{measure} [95% CI]", "teacher self", "drop [95% CI, paired]", "retention"],
                rows,
            )
            + (f"<ul>{gates}</ul>" if gates else "")
            + "<div class=grid>"
            + "".join(_camera_frame(fr) for fr in v.get("camera_frames") or [])
            + "</div>"
        )
    return "".join(out)


def _camera_frame(fr: dict) -> str:
    """One drawn frame: dropped patches shaded, teacher boxes green, deployed boxes dashed orange."""
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(fr["jpeg_base64"]))).convert("RGB"))
    fig = Figure(figsize=(5.2, 5.2 * image.shape[0] / image.shape[1] + 0.4))
    ax = fig.subplots()
    ax.imshow(image)

    def rects(boxes, **style):
        b = np.asarray(boxes, dtype=float).reshape(-1, 4)
        patches = [Rectangle((x1, y1), x2 - x1, y2 - y1) for x1, y1, x2, y2 in b]
        ax.add_collection(PatchCollection(patches, **style))

    rects(fr["dropped_patches"], facecolor="black", alpha=0.35, edgecolor="none")
    rects(fr["teacher_boxes"], facecolor="none", edgecolor="#2ecc40", linewidth=1.6)
    rects(fr["deployed_boxes"], facecolor="none", edgecolor="#ff851b", linewidth=1.2, linestyle="--")
    ax.set_axis_off()
    when = f" at {fr['timestamp']:.2f} s" if fr.get("timestamp") is not None else ""
    ax.set_title(
        f"{fr['name']}{when}: {fr.get('missed', '?')} of {fr.get('teacher_objects', '?')} teacher boxes missed\n"
        "green teacher, dashed orange deployed, shaded: dropped patches",
        fontsize=8,
    )
    fig.tight_layout()
    return _fig_img(fig)


def _ci(lo: Any, hi: Any, digits: int = 3) -> str:
    return "" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _gate_label(g: dict) -> str:
    status = g.get("status") or ("pass" if g.get("passed") else "fail")
    if status == "inconclusive":
        return "INCONCLUSIVE (allowed)" if g.get("passed") else "INCONCLUSIVE (fails closed)"
    return {"pass": "PASS", "skipped": "SKIP"}.get(status, "FAIL")


#: tune.json's estimates with their 95% intervals: (figure, its interval)
_TUNE_ESTIMATES = (("near_recall", "near_recall_ci"), ("near_drop", "near_drop_ci"), ("p50_ms", "p50_ci"))


def _tune_row(r: dict) -> list[Any]:
    """One operating point of tune.json's table as a row of :func:`_section_tune`'s table."""
    sp, status = r.get("speedup"), r["status"]
    return [
        r["config"],
        cell(r.get("keep_iou"), 4),
        *(f"{cell(r.get(k))} {_ci(*(r.get(ci) or [None, None]))}" for k, ci in _TUNE_ESTIMATES),
        "-" if sp is None else f"{sp:.2f}x {_ci(*(r.get('speedup_ci') or [None, None]), 2)}",
        "-" if not r.get("mac_bound") else f"{r['mac_bound']:.2f}x",
        _Raw(
            f'<span class="{"pass" if status == "pass" else "fail"}">{html.escape(status)}</span>'
            + (" <b>recommended</b>" if r.get("recommended") else "")
        ),
    ]


def _section_tune(items, root: Path) -> str:
    out = []
    for rel, t in items:
        rows = [_tune_row(r) for r in t.get("table", [])]
        rec = t.get("recommended")
        out.append(
            f"<p class=muted>{html.escape(rel)}: recommended {html.escape(str(rec))}"
            + (f", profile {html.escape(str(t.get('profile_yaml')))}" if t.get("profile_yaml") else "")
            + "</p>"
            + _table(
                [
                    "config",
                    "keep IoU",
                    "near recall [95% CI]",
                    "near drop [95% CI]",
                    "p50 ms [95% CI]",
                    "speed-up vs dense [95% CI]",
                    "MAC bound",
                    "gates",
                ],
                rows,
            )
        )
        out.append(_notes_and_plot(t.get("notes") or [], (root / rel).parent / "pareto.png"))
    return "".join(out)


def _section_diagnose(items, root: Path) -> str:
    out = []
    for rel, d in items:
        rows = []
        for b in d.get("breakdowns", []):
            label = b["normalization"] + (f" γ={b['area_gamma']:g}" if b["normalization"] == "object" else "")
            cells = [
                f"{100 * b['by_band'][f]['loss_share']:.1f} / {100 * b['by_band'][f]['grad_share']:.1f}" for f in FIELDS
            ]
            per_obj = [b["by_field"][f]["grad_share_per_object"] for f in FIELDS]
            rows.append([label, *cells, *[("-" if v is None else f"{100 * v:.2f}") for v in per_obj]])
        out.append(
            f"<p class=muted>{html.escape(rel)} (logits: {html.escape(str(d.get('logits')))})</p>"
            + _table(
                [
                    "normalisation",
                    "far band loss/grad %",
                    "mid band",
                    "near band",
                    "far: grad % per object",
                    "mid",
                    "near",
                ],
                rows,
            )
        )
        maps = sorted(((root / rel).parent / "heatmaps").glob("*.png"))[:6]
        out.append("".join(_img(p) for p in maps))
    return "".join(out)


def build_report(run_dir: str | Path, out_html: str | Path | None = None, force: bool = False) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``run_dir`` (or beside ``out_html``)."""

    root = Path(run_dir)
    out_html = Path(out_html) if out_html else root / "report.html"
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--out {out_html} must be an .html path (the JSON is written beside it)")
    out_json = out_html.with_suffix(".json")
    outputs = [Output(p, force=force, flag="--out").check() for p in (out_html, out_json)]
    found = collect(root)
    sections = [("Acceptance", _section_accept(found["accept"]))] if found["accept"] else []
    sections += [
        ("Training", _section_train(found["train"])),
        ("Recall and retention by field", _section_validate(found["validate"])),
        ("Camera frames (label-free: agreement with a teacher)", _section_camera(found["camera"])),
        ("Keep-mask fidelity", _section_verify(found["verify"])),
        ("Latency", _section_profile(found["profile"], root)),
        ("Operating point (tune)", _section_tune(found["tune"], root)),
        ("CASS bias diagnostics", _section_diagnose(found["diagnose"], root)),
    ]
    missing = [name for name, body in sections if not body]
    body = "".join(f"<h2>{name}</h2>{content}" for name, content in sections if content)
    if missing:
        body += f"<p class=muted>Not in this run: {', '.join(missing)}.</p>"
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cass-deploy report: {html.escape(root.name)}"
        f"</title><style>{CSS}</style></head><body><h1>cass-deploy report: {html.escape(root.name)}</h1>"
        f"{body}</body></html>"
    )
    with contextlib.ExitStack() as stack:  # both or neither: each is renamed into place after both are written
        tmp_html, tmp_json = (stack.enter_context(o.writing()) for o in outputs)
        tmp_html.write_text(doc, encoding="utf-8")
        write_json(tmp_json, {"run_dir": str(root), **{k: dict(v) for k, v in found.items()}}, force=True)
    return out_html, out_json
