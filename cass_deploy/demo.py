"""The end-to-end demo on CPU: train → diagnose → export (fp32, int8) → verify → profile →
validate (gated) → report, on built-in synthetic roadside scenes. ``make demo`` runs it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from cass_deploy.config import FieldConfig
from cass_deploy.errors import InputError
from cass_deploy.evaluation import validate as vr
from cass_deploy.evaluation.diagnostics import run_diagnose
from cass_deploy.evaluation.gates import Gates
from cass_deploy.evaluation.verify import run_verify
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest
from cass_deploy.io_utils import Output, write_json
from cass_deploy.profiling.latency import (
    ProfileOptions,
    check_stopping_rule,
    environment,
    latency_comparison,
    ort_config,
    profile_checkpoint,
    profile_record,
    sweep_plot,
    time_configs,
)
from cass_deploy.reporting.report import build_report
from cass_deploy.runtime.manifest import ONNX_NAME, Manifest
from cass_deploy.training.train import load_train_config, train


@dataclass
class DemoOptions:
    """What ``cass-deploy demo`` runs (one field per flag of the same name)."""

    config: str | None = "configs/demo.yaml"
    """the training config; ``overrides`` (``--set KEY=VALUE``) apply on top"""
    out: str | None = None
    force: bool = False
    overrides: list[str] = field(default_factory=list)
    verify_images: int = 16
    """scenes on which each export's keep masks and scores are compared with the checkpoint's"""
    validate_images: int = 160
    """160 scenes hold ~320 near-field objects: the paired interval on a near-field drop is then
    ~7 points wide, so the 10-point gate is one the set resolves (SPEC §7a; README "How to read it")"""
    profile_iters: int = 30
    profile_until_ci: float = 0.05
    """the sweep's stopping rule (issue 22): after ``profile_iters`` rounds, more until every
    speed-up's paired interval is within +-5 % or ``profile_max_time`` (45 s) has passed
    (0: exactly ``profile_iters`` rounds)"""
    profile_max_time: float = 45.0
    calib_images: int = 16
    """int8 calibration scenes"""
    min_near_recall: float | None = None
    max_recall_drop: float | None = 0.10
    min_near_retention: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:  # before training, not after it
        check_stopping_rule(self.profile_until_ci, self.profile_max_time, ("--profile-until-ci", "--profile-max-time"))


def default_out() -> Path:
    return Path("runs") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_demo(opts: DemoOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step into one run directory; return the summary (raises GateFailed at the end
    if a validation gate failed, after the report is written)."""

    out = Path(opts.out) if opts.out else default_out()
    target = Output(out, force=opts.force, kind="dir", flag="--out").check()
    if opts.config and not Path(opts.config).is_file():
        raise InputError(f"demo config {opts.config} not found (run from the repository root or pass --config)")
    cfg = load_train_config(opts.config, opts.overrides)
    # --force: the old run directory is moved aside and removed only when this run finished, so no
    # stale result is reported and a failed or interrupted run loses nothing (and leaves nothing)
    with target.in_place():
        return _run_steps(opts, out, cfg, log)


def _run_steps(opts: DemoOptions, out: Path, cfg: Any, log: Callable[[str], None]) -> dict[str, Any]:
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with _step("train", timings, log):
        res = train(cfg, out / "train", force=opts.force, progress=opts.progress, log=log)
        ckpt = res.best_path
    with _step("diagnose", timings, log):
        run_diagnose(
            out / "diagnose",
            checkpoint=ckpt,
            data="synthetic",
            num_images=2,
            normalizations="patch,object,object:1",
            force=True,
        )
    with _step("export", timings, log):
        exports = _export_both(opts, out, ckpt, log)
    with _step("verify", timings, log):
        report = _verify_exports(opts, out, ckpt, exports, log)
    with _step("profile", timings, log):
        sweep, deployed = _profile_all(opts, out, ckpt, exports, log)
    with _step("validate", timings, log):
        validated = _validate_exports(opts, out, cfg, exports)
    with _step("report", timings, log):
        html_path, _ = build_report(out, force=True)
    timings_all = {**timings, "total": time.perf_counter() - t_all}
    summary = _summary(out, html_path, timings_all, res, report, sweep, deployed, validated)
    write_json(out / "summary.json", summary, force=True)
    return summary


@contextlib.contextmanager
def _step(name: str, timings: dict[str, float], log: Callable[[str], None]) -> Iterator[None]:
    """Announce step ``name`` and record its seconds in ``timings`` (when it finishes)."""
    log(f"\n== {name}")
    timings[name] = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - timings[name]


def _export_both(opts: DemoOptions, out: Path, ckpt: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """Export ``ckpt`` (full detector) at fp32 and int8 -> precision -> export directory."""
    exports = {}
    for prec in ("fp32", "int8"):
        d = out / f"export-{prec}"
        run_export(
            ExportRequest(
                checkpoint=ckpt, out=d, parts="full", precision=prec, calib_images=opts.calib_images, force=opts.force
            ),
            log=log,
        )
        exports[prec] = d
    return exports


def _verify_exports(opts: DemoOptions, out: Path, ckpt: Path, exports: dict[str, Path], log: Callable[[str], None]):
    """Compare each export's keep mask and scores with the checkpoint's; write ``verify.json`` -> the report."""
    report, notes = run_verify(str(ckpt), [str(p) for p in exports.values()], images=opts.verify_images)
    write_json(out / "verify.json", {**report.to_dict(), "notes": notes}, force=True)
    for c in report.candidates:
        log(
            f"{c.name}: keep IoU {c.keep_iou_mean:.4f} (min {c.keep_iou_min:.4f}), score err {c.score_max_abs:.2e}"
            f" -> {'pass' if c else 'FAIL: ' + '; '.join(c.failures)}"
        )
    return report


def _profile_all(opts: DemoOptions, out: Path, ckpt: Path, exports: dict[str, Path], log: Callable[[str], None]):
    """The keep-ratio sweep of ``ckpt`` on ONNX Runtime, then the exports interleaved with each other;
    write ``profile/`` -> (sweep results, export results)."""
    timing = ProfileOptions(
        backend="onnxruntime",
        sweep=(0.25, 0.5, 0.75),
        warmup=5,
        iters=opts.profile_iters,
        threads=2,  # pinned ORT sessions (fixed threads, sequential, spinning only in a run): docs/latency-method.md
        order="alternate",
        until_ci=opts.profile_until_ci,
        max_time=opts.profile_max_time,
    )
    sweep = profile_checkpoint(str(ckpt), timing, log=log)
    with contextlib.ExitStack() as stack:  # the deployed exports, interleaved with each other
        timed = []
        for p, d in exports.items():
            man = Manifest.read(d)
            timed.append(
                ort_config(
                    None,
                    stack,
                    label=f"onnx {p}",
                    pruner_mode=man.pruner_mode,
                    keep_ratio=man.keep_ratio,
                    image_size=man.image_size,
                    batch=man.batch_step,
                    path=d / ONNX_NAME,
                )
            )
        deployed = time_configs(timed, warmup=5, rounds=opts.profile_iters)
    (out / "profile").mkdir(parents=True, exist_ok=True)
    sweep_plot(sweep, out / "profile" / "sweep.png")
    write_json(out / "profile" / "profile.json", profile_record(ckpt, environment("cpu"), sweep + deployed), force=True)
    return sweep, deployed


@dataclass
class _Validated:
    """The validate step: the dense reference's result, and per export its result, drops and gate checks."""

    reference: Any
    results: dict[str, Any]
    drops: dict[str, Any]
    checks: list[tuple[str, Any]]  # (export, gate check)


def _validate_exports(opts: DemoOptions, out: Path, cfg: Any, exports: dict[str, Path]) -> _Validated:
    """Recall by field of each export against the dense reference, gated; write ``validate-<prec>.json``."""
    fields = FieldConfig(*(cfg.fields.far_max, cfg.fields.near_min))
    gates = Gates(
        min_near_recall=opts.min_near_recall,
        max_recall_drop=opts.max_recall_drop,
        min_near_retention=opts.min_near_retention,
    )
    first = vr.open_model(str(exports["fp32"]))
    batches = vr.load_batches("synthetic", first.image_size, opts.validate_images, seed=7)
    reference = vr.evaluate_deployed(vr.reference_model("dense", first), batches, fields=fields)
    all_checks, results, all_drops = [], {}, {}
    for prec, d in exports.items():
        model = vr.open_model(str(d))
        result = vr.evaluate_deployed(model, batches, fields=fields)
        drops, checks = vr.compare(result, reference, gates)
        all_checks += [(prec, c) for c in checks]
        results[prec] = result
        all_drops[prec] = drops
        write_json(
            out / f"validate-{prec}.json",
            vr.validation_record(d, result, reference, checks, drops, gates),
            force=True,
        )
    return _Validated(reference, results, all_drops, all_checks)


def _summary(
    out: Path, html_path: Path, seconds: dict[str, float], res, report, sweep, deployed, validated: _Validated
) -> dict[str, Any]:
    """``summary.json``: every step's numbers with their intervals, the failed gates and ``ok``."""
    results, reference, all_checks = validated.results, validated.reference, validated.checks
    summary = {
        "run_dir": str(out),
        "report": str(html_path),
        "seconds": seconds,
        "train": {"best_map50": res.metrics.get("best_map50"), "seconds": res.seconds},
        "verify": {
            c.name: {"keep_iou_mean": c.keep_iou_mean, "detections": c.detections, "passed": bool(c)}
            for c in report.candidates
        },
        "latency_ms_p50": {r.label: r.latency.p50 for r in sweep + deployed},
        "latency_ms_p50_ci": {r.label: [r.median_ci.lo, r.median_ci.hi] for r in sweep + deployed if r.median_ci},
        "speedups": {
            c.baseline: [s.to_dict() | {"mac_bound": c.mac_bounds.get(s.b)} for s in c.speedups]
            for c in (latency_comparison(sweep), latency_comparison(deployed))
            if c is not None
        },
        "recall": {
            p: {f: r.by_field[f].recall for f in ("far", "mid", "near", "all")}
            for p, r in {**results, "dense": reference}.items()
        },
        "recall_ci": {
            p: {f: [r.by_field[f].recall_lo, r.by_field[f].recall_hi] for f in ("far", "mid", "near", "all")}
            for p, r in {**results, "dense": reference}.items()
        },
        "drop_ci": {p: {g: [d.point, d.lo, d.hi] for g, d in drops.items()} for p, drops in validated.drops.items()},
        "retention": {p: {f: r.by_field[f].retention_mean for f in ("far", "mid", "near")} for p, r in results.items()},
        "map50": {p: r.map50 for p, r in {**results, "dense": reference}.items()},
        "gates": [{"export": p, **c.to_dict()} for p, c in all_checks],
    }
    failed = [f"{p}: {c.message}" for p, c in all_checks if not c.passed]
    if not report:
        failed.append("verify: " + "; ".join(f for c in report.candidates for f in c.failures))
    summary["failed_gates"] = failed
    summary["ok"] = not failed
    return summary


def summary_table(summary: dict[str, Any]):

    t = Table(title=f"cass-deploy demo: {summary['run_dir']}")
    t.add_column("")
    for col in ("far", "mid", "near", "all / note"):
        t.add_column(col, justify="right")

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    def with_ci(v, ci):
        return fmt(v) if v is None or not ci or ci[0] is None else f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"

    cis = summary.get("recall_ci", {})
    for name, rec in summary["recall"].items():
        ci = cis.get(name, {})
        t.add_row(f"recall ({name})", *[with_ci(rec[f], ci.get(f)) for f in ("far", "mid", "near", "all")])
    for name, drops in summary.get("drop_ci", {}).items():
        t.add_row(
            f"drop vs dense ({name})",
            *[
                "-"
                if drops.get(f, [None])[0] is None
                else f"{drops[f][0]:+.3f} [{drops[f][1]:+.2f}, {drops[f][2]:+.2f}]"
                for f in ("far", "mid", "near", "all")
            ],
        )
    for name, ret in summary["retention"].items():
        t.add_row(f"retention ({name})", *[fmt(ret[f]) for f in ("far", "mid", "near")], "")
    for name, v in summary["map50"].items():
        t.add_row(f"mAP@0.5 ({name})", "", "", "", fmt(v))
    for name, v in summary["verify"].items():
        t.add_row(
            f"verify {Path(name.split(':', 1)[1]).parent.name}",
            "",
            "",
            "",
            f"keep IoU {v['keep_iou_mean']:.4f} {'pass' if v['passed'] else 'FAIL'}",
        )
    lat_ci = summary.get("latency_ms_p50_ci", {})
    for label, v in summary["latency_ms_p50"].items():
        ci = lat_ci.get(label)
        t.add_row(f"p50 latency: {label}", "", "", "", f"{v:.2f} ms" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
    for base, speedups in summary.get("speedups", {}).items():
        for s in speedups:
            bound = f", MAC bound {s['mac_bound']:.2f}x" if s.get("mac_bound") else ""
            t.add_row(
                f"speed-up {s['b']} vs {base}", "", "", "", f"{s['ratio']:.2f}x [{s['lo']:.2f}, {s['hi']:.2f}]{bound}"
            )
    for g in summary["gates"]:
        if g.get("status") in ("fail", "inconclusive"):
            t.add_row(f"gate {g['export']} {g['name']} {g.get('field') or ''}", "", "", "", g["status"].upper())
    sec = summary["seconds"]
    t.add_row("time", "", "", "", f"train {sec['train']:.0f} s, total {sec['total']:.0f} s")
    return t
