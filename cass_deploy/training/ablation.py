"""The bias ablation: which CASS setting keeps near-field vehicles after pruning?

Every variant trains on the same synthetic split with the same seeds, and every pruned variant is
**trained at the keep ratio it is evaluated at** (0.5 and 0.25: two trainings per variant and
seed). Each run is evaluated on the same validation scenes for recall by field (far / mid / near)
and size, retention and mAP@0.5, and stores its per-image hit counts, so every cell carries an
interval: a Wilson 95 % interval on the recall pooled over seeds and images, and a paired
bootstrap 95 % interval on the recall drop against the dense model of the same seed (units:
(seed, image) pairs, resampled together).

``select`` applies the rule that sets the ``corrected`` preset (issue 12), one the intervals can
resolve:

1. **non-inferior at keep 0.5**: for every field, the upper end of the paired-bootstrap interval
   of the recall drop against dense is at most ``drop_tol`` (3 points);
2. among the eligible variants passing 1, the highest pooled near-field recall at keep 0.25 leads;
3. the lead is **resolved** when the paired-bootstrap interval of its near-field recall gain at
   keep 0.25 over each other passing variant excludes 0; if it is not resolved and the incumbent
   preset (``incumbent``) is among the passing variants tied with the leader, the incumbent stays —
   the preset changes only on evidence. Without a measurement of the incumbent there is no
   verdict. The verdict says which case applied.

The ``corrected`` preset is object normalisation by definition (SPEC §4), so it is chosen among
the ``object`` variants (with the global or the band pruner); ``patch (seed)`` is measured for
comparison.

Trimmed from the issue-4 ablation (its table, README): ``seed_object`` (near recall 13.7 ± 14.4
at keep 0.5 against 32.9 dense — ruled out), ``area`` (ablation only: background unsupervised),
``object g=0 + TV`` (within 0.5 points of ``object g=0`` everywhere), ``object g=0.5`` (between
g=0 and g=1 in every column) and ``cass_off`` (untrained predictor: spreads of ±10-40 points).
They stay runnable with ``--variants``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.config import FIELDS
from cass_deploy.errors import InputError, SweepFailed
from cass_deploy.io_utils import atomic_path, check_writable, write_json
from cass_deploy.model.checkpoint import load_checkpoint
from cass_deploy.sweeps.executor import Executor, SweepOptions, Unit, collect_files, scratch, write_files
from cass_deploy.training.recall import evaluate_with_hits, paired_bootstrap_drop, wilson_interval
from cass_deploy.training.train import build_datasets, load_train_config, make_loader, train

# name -> overrides on top of the base training config
LOSS_VARIANTS: dict[str, list[str]] = {
    "cass_off": ["cass.cass_weight=0.0"],
    "patch (seed)": ["cass.normalization=patch", "cass.ensure_center_patch=false"],
    "object g=0": ["cass.normalization=object", "cass.area_gamma=0.0"],
    "object g=0.5": ["cass.normalization=object", "cass.area_gamma=0.5"],
    "object g=1": ["cass.normalization=object", "cass.area_gamma=1.0"],
    "area": ["cass.normalization=area"],
    "seed_object": ["cass.normalization=seed_object", "cass.ensure_center_patch=false"],
    "object g=0 + TV": ["cass.normalization=object", "cass.area_gamma=0.0", "cass.tv_weight=0.1"],
}
#: what ``run_ablation`` trains by default (see the module docstring for the trimmed ones)
DEFAULT_VARIANTS = ("patch (seed)", "object g=0", "object g=1")
DENSE = ["model.pruner.mode=none", "cass.cass_weight=0.0"]
BAND = ["model.pruner.mode=band", "model.pruner.band_quotas=proportional"]
#: the band-pruner run: the current corrected preset (object normalisation, area_gamma 1)
BAND_LOSS = "object g=1"
INCUMBENT = "band + object g=1"


@dataclass
class RunResult:
    """One trained model evaluated at the keep ratio it was trained at (``None``: dense).

    ``hits`` / ``totals``: per validation image ``[far, mid, near]`` vehicles found at IoU 0.5 /
    present (the bootstrap's units; empty in results written before issue 12)."""

    variant: str
    seed: int
    keep_ratio: float | None
    train_seconds: float
    map50: float | None
    recall: dict[str, float | None]
    retention: dict[str, float | None]
    retention_ge_50: dict[str, float | None]
    recall_by_size: dict[str, float | None] = field(default_factory=dict)
    retention_by_size: dict[str, float | None] = field(default_factory=dict)
    hits: list[list[int]] = field(default_factory=list)
    totals: list[list[int]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int, float | None]:
        return (self.variant, self.seed, self.keep_ratio)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _summarise(variant: str, seed: int, keep: float | None, seconds: float, res, hits, totals) -> RunResult:
    bf, bs = res.by_field, res.by_size
    return RunResult(
        variant=variant,
        seed=seed,
        keep_ratio=keep,
        train_seconds=seconds,
        map50=res.map50,
        recall={f: bf[f].recall for f in FIELDS + ("all",)},
        retention={f: bf[f].retention_mean for f in FIELDS},
        retention_ge_50={f: bf[f].retention_share_ge_50 for f in FIELDS},
        recall_by_size={s: bs[s].recall for s in bs},
        retention_by_size={s: bs[s].retention_mean for s in bs},
        hits=np.asarray(hits).tolist(),
        totals=np.asarray(totals).tolist(),
    )


def train_and_evaluate(
    base: list[str],
    config: str | None,
    variant: str,
    overrides: list[str],
    seed: int,
    out: Path,
    keep_ratio: float | None,
    val_images: int,
    log: Callable[[str], None],
) -> RunResult:
    """Train one variant at ``keep_ratio`` (``None``: dense, pruner off) and evaluate it there."""

    keep = [] if keep_ratio is None else [f"model.pruner.keep_ratio={keep_ratio}"]
    cfg = load_train_config(config, base + overrides + keep + [f"seed={seed}"])
    run_dir = out / run_name(variant, keep_ratio, seed)
    res = train(cfg, run_dir, force=True, progress=False, log=lambda s: None)
    seconds = res.history[-1]["train_seconds"] if res.history else res.seconds
    model = load_checkpoint(res.last_path).model
    # the final evaluation on val_images scenes (the per-epoch one uses the config's smaller set)
    _, val = build_datasets(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_images=val_images)))
    loader = make_loader(val, cfg.batch_size, shuffle=False, seed=seed)
    ev, hits, totals = evaluate_with_hits(model, loader, cfg.fields, cfg.eval_score_thr, name=variant)
    r = _summarise(variant, seed, keep_ratio, seconds, ev, hits, totals)
    log(
        f"{variant} keep {keep_ratio if keep_ratio is not None else 'dense'} seed {seed}: recall far "
        f"{_p(r.recall['far'])} mid {_p(r.recall['mid'])} near {_p(r.recall['near'])}, retention near "
        f"{_p(r.retention['near'])} far {_p(r.retention['far'])}, mAP {_p(r.map50)} [train {seconds:.0f}s]"
    )
    return r


def run_name(variant: str, keep_ratio: float | None, seed: int) -> str:
    """The directory of one training under the ablation's ``out`` (also its unit's key)."""
    return f"{_slug(variant)}-k{keep_ratio if keep_ratio is not None else 'dense'}-s{seed}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _p(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _paired(rows: Sequence[RunResult], ref: dict[int, RunResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Concatenate (seed, image) units of ``rows`` and the ``ref`` run of the same seed ->
    (ref_hits, cand_hits, totals), each ``[U, 3]``; None when a seed lacks its reference or hits."""
    parts = []
    for r in rows:
        q = ref.get(r.seed)
        if q is None or not r.hits or not q.hits or np.asarray(r.totals).shape != np.asarray(q.totals).shape:
            return None
        if not np.array_equal(np.asarray(r.totals), np.asarray(q.totals)):
            raise InputError(f"{r.variant} seed {r.seed} and its reference were evaluated on different images")
        parts.append((np.asarray(q.hits), np.asarray(r.hits), np.asarray(r.totals)))
    if not parts:
        return None
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def aggregate(
    rows: Sequence[RunResult], resamples: int = 2000, confidence: float = 0.95
) -> dict[tuple[str, float | None], dict[str, Any]]:
    """Per (variant, keep ratio): mean and spread over seeds of every metric (``mean``, ``std``,
    ``n``); with per-image hits also ``pooled_{field}`` (recall over all seeds and images with its
    Wilson interval) and ``drop_{field}`` (recall drop against the dense run of the same seed,
    paired bootstrap over (seed, image) units: ``point``, ``lo``, ``hi``)."""
    groups: dict[tuple[str, float | None], list[RunResult]] = {}
    for r in rows:
        groups.setdefault((r.variant, r.keep_ratio), []).append(r)
    dense = {r.seed: r for r in groups.get(("dense", None), [])}

    def stat(values):
        vals = [v for v in values if v is not None]
        if not vals:
            return {"mean": None, "std": None, "n": 0}
        return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}

    out = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r.seed)
        entry = {
            "map50": stat(r.map50 for r in rs),
            "train_seconds": stat(r.train_seconds for r in rs),
            "seeds": [r.seed for r in rs],
            **{f"recall_{f}": stat(r.recall[f] for r in rs) for f in FIELDS + ("all",)},
            **{f"retention_{f}": stat(r.retention[f] for r in rs) for f in FIELDS},
            **{f"retention_ge50_{f}": stat(r.retention_ge_50[f] for r in rs) for f in FIELDS},
            **{f"recall_size_{s}": stat(r.recall_by_size.get(s) for r in rs) for s in ("small", "medium", "large")},
            **{
                f"retention_size_{s}": stat(r.retention_by_size.get(s) for r in rs)
                for s in ("small", "medium", "large")
            },
        }
        if all(r.hits for r in rs):
            h = np.concatenate([np.asarray(r.hits) for r in rs]).sum(0)
            n = np.concatenate([np.asarray(r.totals) for r in rs]).sum(0)
            lo, hi = wilson_interval(h, n, confidence)
            for k, f in enumerate(FIELDS):
                entry[f"pooled_{f}"] = {
                    "recall": float(h[k] / n[k]) if n[k] else None,
                    "lo": float(lo[k]) if n[k] else None,
                    "hi": float(hi[k]) if n[k] else None,
                    "hits": int(h[k]),
                    "n": int(n[k]),
                }
            paired = _paired(rs, dense) if key[0] != "dense" else None
            if paired is not None:
                ref, cand, tot = paired
                for k, f in enumerate(FIELDS):
                    point, dlo, dhi = paired_bootstrap_drop(
                        ref[:, k], cand[:, k], tot[:, k], resamples=resamples, seed=0, confidence=confidence
                    )
                    entry[f"drop_{f}"] = {"point": point, "lo": dlo, "hi": dhi}
        out[key] = entry
    return out


def preset_candidate(variant: str) -> bool:
    """Variants the corrected preset may be set to: object normalisation, with any pruner."""
    return variant.startswith("object") or variant.startswith("band + object")


def select(
    agg: dict,
    rows: Sequence[RunResult],
    keep_ratio: float = 0.5,
    rank_keep: float = 0.25,
    drop_tol: float = 0.03,
    eligible: Callable[[str], bool] = preset_candidate,
    incumbent: str = INCUMBENT,
    resamples: int = 2000,
) -> tuple[str | None, dict[str, Any]]:
    """The rule of the module docstring -> (winner or None, verdict).

    verdict: ``checks`` per variant (the upper drop bound per field at ``keep_ratio`` and whether
    it is within ``drop_tol``), ``ranking`` (passing eligible variants by pooled near recall at
    ``rank_keep``), ``gains`` (the leader's near-recall gain over each other passing variant at
    ``rank_keep``: point, lo, hi) and ``resolved`` / ``reason``."""
    if ("dense", None) not in agg:
        raise InputError("the ablation needs the dense model to select against")
    checks = {}
    for (variant, keep), entry in agg.items():
        if keep != keep_ratio or variant == "dense":
            continue
        bounds = {f: entry.get(f"drop_{f}", {}).get("hi") for f in FIELDS}
        ok = all(b is not None and b <= drop_tol for b in bounds.values())
        checks[variant] = {"drop_hi": bounds, "non_inferior": ok}
    passing = [v for v, c in checks.items() if c["non_inferior"] and eligible(v) and (v, rank_keep) in agg]
    ranking = sorted(passing, key=lambda v: -(agg[(v, rank_keep)].get("pooled_near", {}).get("recall") or 0.0))
    verdict: dict[str, Any] = {
        "rule": (
            f"non-inferior at keep {keep_ratio} (paired-bootstrap upper bound of every field's recall drop "
            f"vs dense <= {100 * drop_tol:g} points), then highest near recall at keep {rank_keep}; a lead "
            f"counts only when its paired-bootstrap gain interval excludes 0, else the incumbent "
            f"({incumbent}) stays if tied with the leader"
        ),
        "checks": checks,
        "ranking": ranking,
        "gains": {},
    }
    if incumbent not in checks or (incumbent, rank_keep) not in agg:
        verdict.update(resolved=False, reason=f"the incumbent {incumbent} is not measured (yet): no verdict")
        return None, verdict
    if not ranking:
        verdict.update(resolved=False, reason=f"no eligible variant is non-inferior at keep {keep_ratio}")
        return None, verdict
    by = {}
    for r in rows:
        if r.keep_ratio == rank_keep:
            by.setdefault(r.variant, {})[r.seed] = r
    leader = ranking[0]
    tied = []
    for other in ranking[1:]:
        paired = _paired(list(by[leader].values()), by[other])
        if paired is None:
            tied.append(other)
            continue
        ref, cand, tot = paired
        point, lo, hi = paired_bootstrap_drop(ref[:, 2], cand[:, 2], tot[:, 2], resamples=resamples, seed=0)
        # drop of ``other`` -> ``leader`` as ref - cand, so a gain of the leader is -drop
        verdict["gains"][other] = {"point": -point, "lo": -hi, "hi": -lo}
        if hi >= 0:  # the leader's gain interval reaches 0: not resolved against this one
            tied.append(other)
    if not tied:
        verdict.update(resolved=True, reason=f"{leader} leads every other passing variant, intervals exclude 0")
        return leader, verdict
    if incumbent in tied or incumbent == leader:
        verdict.update(
            resolved=False,
            reason=f"{leader} leads on the point estimate but is tied with {tied}; the incumbent {incumbent} stays",
        )
        return incumbent, verdict
    verdict.update(resolved=False, reason=f"{leader} leads on the point estimate, tied with {tied}; not resolved")
    return leader, verdict


def markdown_table(agg: dict, keep_ratios: Sequence[float]) -> str:
    """The README tables: recall per field (pooled, Wilson 95 %), its drop against dense (paired
    bootstrap 95 %), retention, mAP and training time (mean ± std over seeds)."""

    def cell(entry, key, scale=100.0, digits=1):
        s = entry[key]
        if s["mean"] is None:
            return "-"
        txt = f"{scale * s['mean']:.{digits}f}"
        return txt + (f" ± {scale * s['std']:.{digits}f}" if s["n"] > 1 else "")

    def pooled(entry, f):
        p = entry.get(f"pooled_{f}")
        if not p or p["recall"] is None:
            return cell(entry, f"recall_{f}")
        return f"{100 * p['recall']:.1f} [{100 * p['lo']:.1f}, {100 * p['hi']:.1f}]"

    def drop(entry, f):
        d = entry.get(f"drop_{f}")
        if not d:
            return "-"
        return f"{100 * d['point']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"

    order = sorted(agg, key=lambda k: (k[1] is not None, -(k[1] or 0), k[0] != "dense", k[0]))
    keys = [k for k in order if k[1] is None or k[1] in keep_ratios]

    def table(columns) -> str:
        head = "| variant | keep | seeds | " + " | ".join(c[0] for c in columns) + " |\n"
        rule = "|---|---|---|" + "---|" * len(columns) + "\n"
        rows = [
            f"| {v} | {'dense' if keep is None else keep} | {len(agg[(v, keep)]['seeds'])} | "
            + " | ".join(fn(agg[(v, keep)]) for _, fn in columns)
            + " |"
            for v, keep in keys
        ]
        return head + rule + "\n".join(rows) + "\n"

    recall_cols = [(f"recall {f}", lambda e, f=f: pooled(e, f)) for f in FIELDS]
    drop_cols = [(f"drop {f}", lambda e, f=f: drop(e, f)) for f in FIELDS]
    other = [(f"retention {f}", lambda e, f=f: cell(e, f"retention_{f}")) for f in FIELDS] + [
        ("mAP@0.5", lambda e: cell(e, "map50")),
        ("train s", lambda e: cell(e, "train_seconds", 1.0, 0)),
    ]
    by_size = [(f"recall {s}", lambda e, s=s: cell(e, f"recall_size_{s}")) for s in ("small", "medium", "large")]
    return table(recall_cols + drop_cols) + "\n" + table(other + by_size)


def plan(
    seeds: Sequence[int], variants: Sequence[str], keep_ratios: Sequence[float], band: bool = True
) -> list[tuple[str, list[str], int, float | None]]:
    """Every training of the ablation, seed-major (so a partial run has whole seeds first):
    (variant, overrides, seed, keep ratio or None for dense)."""
    jobs = []
    for seed in seeds:
        jobs.append(("dense", DENSE, seed, None))
        for name in variants:
            for r in keep_ratios:
                jobs.append((name, LOSS_VARIANTS[name], seed, r))
        if band:
            for r in keep_ratios:
                jobs.append((f"band + {BAND_LOSS}", LOSS_VARIANTS[BAND_LOSS] + BAND, seed, r))
    return jobs


def ablate(
    *, config: str | None, base: list[str], out: str | Path, force: bool = False, **options: Any
) -> dict[str, Any]:
    """:func:`run_ablation` as ``cass-deploy ablate`` runs it: ``out`` is refused when it holds files
    (unless ``force``, ``resume`` or ``summarise_only``) and a bad config is refused, both before
    anything is created. ``options``: the other :func:`run_ablation` keywords."""
    resumes = options.get("resume", False) or options.get("summarise_only", False)
    check_writable(out, force or resumes, kind="dir", flag="--out")
    load_train_config(config, base)  # a bad config is refused before anything is created
    return run_ablation(config=config, base=base, out=Path(out), **options)


def run_ablation(
    *,
    config: str | None,
    base: list[str],
    seeds: Sequence[int],
    out: Path,
    variants: Sequence[str] | None = None,
    keep_ratios: Sequence[float] = (0.5, 0.25),
    val_images: int = 256,
    band: bool = True,
    resume: bool = False,
    summarise_only: bool = False,
    sweep: SweepOptions | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Dense + each loss variant (+ the band pruner with ``BAND_LOSS``) over ``seeds``, every pruned
    variant trained at each keep ratio it is evaluated at.

    ``resume``: keep the runs already in ``out/runs.json`` (same variant, seed and keep ratio) and
    train only the missing ones, so an interrupted ablation continues where it stopped; the
    results are rewritten after every run. ``summarise_only``: train nothing, recompute the
    tables, intervals and verdict from ``out/runs.json`` (e.g. a partial ablation).
    ``sweep``: where the trainings run (:mod:`cass_deploy.sweeps.executor`; default: in this process, or
    on a local Ray / a cluster, the config's threads split between the trainings that run at
    once); each arrives as a returned object (its row, log lines and run directory's files),
    written to ``out`` at once. Trainings that still fail after their retries are reported
    (SweepFailed, exit 1) after the others are written.
    """

    names = list(variants) if variants else list(DEFAULT_VARIANTS)
    unknown = [n for n in names if n not in LOSS_VARIANTS]
    if unknown:
        raise InputError(f"unknown ablation variant(s) {unknown}; known: {list(LOSS_VARIANTS)}")
    if summarise_only and not (out / "runs.json").is_file():
        raise InputError(f"nothing to summarise: {out / 'runs.json'} does not exist")
    rows = _resumed_rows(out, log) if resume or summarise_only else []
    done = {r.key for r in rows}
    planned = plan(seeds, names, keep_ratios, band)
    t0 = time.perf_counter()
    todo = [] if summarise_only else [j for j in planned if (j[0], j[2], j[3]) not in done]
    state: dict[str, Any] = {}

    def finished(key: str, value: tuple[RunResult, list[str], dict[str, bytes]]) -> None:
        row, lines, files = value
        for line in lines:
            log(line)
        write_files(out / key, files)
        rows.append(row)
        write_json(out / "runs.json", [r.to_dict() for r in rows], force=True)
        state["result"] = _write_results(rows, out, seeds, keep_ratios, val_images, base, config, len(planned), t0)
        log(f"[{len(rows)}/{len(planned)} runs, {(time.perf_counter() - t0) / 60:.1f} min this session]")

    failures = []
    if todo:
        # a bad --address or resources are refused here, before anything is written
        with Executor(sweep or SweepOptions(), log=log) as ex:
            threads = ex.unit_threads(load_train_config(config, base).threads)
            wbase = [*base, f"threads={threads}"] if threads else list(base)
            cfg_path = str(Path(config).resolve()) if config else None
            units = [
                Unit(run_name(n, k, s), _train_unit, (wbase, cfg_path, n, o, s, k, val_images)) for n, o, s, k in todo
            ]
            log(ex.describe(len(units), "trainings", threads))
            out.mkdir(parents=True, exist_ok=True)
            failures = ex.run(units, finished)
    if not state:  # nothing arrived (all done earlier, --summarise, or every unit failed)
        out.mkdir(parents=True, exist_ok=True)
        state["result"] = _write_results(rows, out, seeds, keep_ratios, val_images, base, config, len(planned), t0)
    result = state["result"]
    if failures:
        raise SweepFailed(
            f"{len(failures)} of {len(todo)} trainings failed ({'; '.join(f.line() for f in failures)}); "
            f"the other results are in {out}; --resume trains the failed ones again"
        )
    return result


def _resumed_rows(out: Path, log: Callable[[str], None]) -> list[RunResult]:
    """The runs of ``out/runs.json`` that carry per-image hits (none when it does not exist)."""
    if not (out / "runs.json").is_file():
        return []
    try:
        rows = [RunResult(**r) for r in json.loads((out / "runs.json").read_text())]
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{out / 'runs.json'} is not a runs file of this ablation: {exc}") from None
    rows = [r for r in rows if r.hits]  # runs of the issue-4 format lack hits: train again
    log(f"resuming: {len(rows)} runs already in {out / 'runs.json'}")
    return rows


def _train_unit(base, config, name, overrides, seed, keep, val_images) -> tuple[RunResult, list[str], dict[str, bytes]]:
    """One ablation training, wherever the executor runs it: trained in a scratch directory of that
    node -> (its row, its log lines, the files of its run directory) for the driver to write."""
    lines: list[str] = []
    with scratch("cass-ablate-") as tmp:
        row = train_and_evaluate(base, config, name, overrides, seed, tmp, keep, val_images, lines.append)
        files = collect_files(tmp / run_name(name, keep, seed))
    return row, lines, files


def _write_results(rows, out, seeds, keep_ratios, val_images, base, config, planned, t0) -> dict[str, Any]:
    agg = aggregate(rows)
    winner, verdict = (None, {"reason": "no dense run yet"})
    if ("dense", None) in agg:
        winner, verdict = select(agg, rows, keep_ratio=max(keep_ratios), rank_keep=min(keep_ratios))
    result = {
        "seeds": list(seeds),
        "keep_ratios": list(keep_ratios),
        "val_images": val_images,
        "base_overrides": base,
        "config": config,
        "runs_done": len(rows),
        "runs_planned": planned,
        "complete": len(rows) >= planned,
        "winner": winner,
        "verdict": verdict,
        "aggregate": {f"{k[0]} @ {k[1]}": {kk: vv for kk, vv in v.items()} for k, v in agg.items()},
        "runs": [r.to_dict() for r in rows],
        "seconds": time.perf_counter() - t0,
        "markdown": markdown_table(agg, keep_ratios),
    }
    write_json(out / "ablation.json", result, force=True)
    with atomic_path(out / "ablation.md", force=True) as tmp:
        tmp.write_text(result["markdown"])
    return result
