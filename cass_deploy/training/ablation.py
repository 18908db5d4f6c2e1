"""The bias ablation: which CASS setting keeps near-field vehicles after pruning?

Every variant trains on the same synthetic split with the same seeds; each trained model is
evaluated at keep 0.5 and 0.25 (same weights, pruner swapped) for recall and retention per field
and per size bin and mAP@0.5, against the dense model of the same seed. ``select`` applies the
rule that sets the ``corrected`` preset (issue 4):

1. near-field recall within ``near_tol`` (1 point) of dense;
2. far-field recall at most ``far_tol`` (2 points) below dense;
3. mAP@0.5 within ``map_tol`` (1 point) of dense;
4. among those, the highest minimum over fields of mean retention.

The ``corrected`` preset is object normalisation by definition (SPEC §4), so the preset is chosen
among the ``object`` variants and the band pruner; the other normalisations are measured and
reported for comparison (``area`` leaves background unsupervised, ``seed_object`` is the seed's
plan 1 as written).
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

from cass_deploy.config import FIELDS
from cass_deploy.errors import InputError
from cass_deploy.io_utils import atomic_path, write_json
from cass_deploy.model.checkpoint import load_checkpoint
from cass_deploy.training.train import build_datasets, evaluate_model, load_train_config, make_loader, train

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
DENSE = ["model.pruner.mode=none", "cass.cass_weight=0.0"]
BAND = ["model.pruner.mode=band", "model.pruner.band_quotas=proportional"]


@dataclass
class RunResult:
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _summarise(variant: str, seed: int, keep: float | None, seconds: float, res) -> RunResult:
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
    )


def train_and_evaluate(
    base: list[str],
    config: str | None,
    variant: str,
    overrides: list[str],
    seed: int,
    out: Path,
    keep_ratios: Sequence[float],
    val_images: int,
    log: Callable[[str], None],
) -> list[RunResult]:
    """Train one variant and evaluate it at each keep ratio (or dense once)."""

    cfg = load_train_config(config, base + overrides + [f"seed={seed}", f"data.val_images={val_images}"])
    run_dir = out / f"{_slug(variant)}-s{seed}"
    t0 = time.perf_counter()
    res = train(cfg, run_dir, force=True, progress=False, log=lambda s: None)
    seconds = time.perf_counter() - t0
    model = load_checkpoint(res.last_path).model
    _, val = build_datasets(cfg)
    loader = make_loader(val, cfg.batch_size, shuffle=False, seed=seed)
    rows = []
    if model.pruner_mode == "none":
        rows.append(
            _summarise(variant, seed, None, seconds, evaluate_model(model, loader, cfg.fields, cfg.eval_score_thr))
        )
    else:
        for r in keep_ratios:
            m = model.with_pruner(keep_ratio=r)
            rows.append(
                _summarise(variant, seed, r, seconds, evaluate_model(m, loader, cfg.fields, cfg.eval_score_thr))
            )
    log(
        f"{variant} seed {seed}: "
        + ", ".join(
            f"keep {r.keep_ratio}: recall near {_p(r.recall['near'])} far {_p(r.recall['far'])}, retention near "
            f"{_p(r.retention['near'])} far {_p(r.retention['far'])}, mAP {_p(r.map50)}"
            for r in rows
        )
        + f" [{seconds:.0f}s]"
    )
    return rows


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _p(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def aggregate(rows: Sequence[RunResult]) -> dict[tuple[str, float | None], dict[str, Any]]:
    """Mean and spread (std over seeds) of every metric per (variant, keep ratio)."""
    groups: dict[tuple[str, float | None], list[RunResult]] = {}
    for r in rows:
        groups.setdefault((r.variant, r.keep_ratio), []).append(r)

    def stat(values):
        vals = [v for v in values if v is not None]
        if not vals:
            return {"mean": None, "std": None, "n": 0}
        return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}

    out = {}
    for key, rs in groups.items():
        out[key] = {
            "map50": stat(r.map50 for r in rs),
            "train_seconds": stat(r.train_seconds for r in rs),
            **{f"recall_{f}": stat(r.recall[f] for r in rs) for f in FIELDS + ("all",)},
            **{f"retention_{f}": stat(r.retention[f] for r in rs) for f in FIELDS},
            **{f"retention_ge50_{f}": stat(r.retention_ge_50[f] for r in rs) for f in FIELDS},
            **{f"recall_size_{s}": stat(r.recall_by_size.get(s) for r in rs) for s in ("small", "medium", "large")},
            **{
                f"retention_size_{s}": stat(r.retention_by_size.get(s) for r in rs)
                for s in ("small", "medium", "large")
            },
        }
    return out


def preset_candidate(variant: str) -> bool:
    """Variants the corrected preset may be set to: object normalisation, with any pruner."""
    return variant.startswith("object") or variant.startswith("band + object")


def select(
    agg: dict,
    keep_ratio: float = 0.5,
    near_tol: float = 0.01,
    far_tol: float = 0.02,
    map_tol: float = 0.01,
    exclude: Sequence[str] = ("cass_off",),
    eligible: Callable[[str], bool] = lambda v: True,
) -> tuple[str | None, list[dict]]:
    """Apply the selection rule at ``keep_ratio`` -> (winner among ``eligible`` variants or None,
    verdicts for every variant)."""
    dense = agg.get(("dense", None))
    if dense is None:
        raise InputError("the ablation needs the dense model to select against")

    def m(entry, key):
        return entry[key]["mean"]

    verdicts = []
    for (variant, keep), entry in agg.items():
        if keep != keep_ratio or variant in exclude:
            continue
        checks = {
            "near recall within tol": m(entry, "recall_near") is not None
            and m(entry, "recall_near") >= m(dense, "recall_near") - near_tol,
            "far recall within tol": m(entry, "recall_far") is not None
            and m(entry, "recall_far") >= m(dense, "recall_far") - far_tol,
            "mAP within tol": m(entry, "map50") is not None and m(entry, "map50") >= m(dense, "map50") - map_tol,
        }
        min_ret = min(
            (m(entry, f"retention_{f}") for f in FIELDS if m(entry, f"retention_{f}") is not None), default=None
        )
        verdicts.append(
            {"variant": variant, "checks": checks, "passes": all(checks.values()), "min_field_retention": min_ret}
        )
    ok = [v for v in verdicts if v["passes"] and eligible(v["variant"])]
    winner = max(ok, key=lambda v: v["min_field_retention"] or 0)["variant"] if ok else None
    return winner, verdicts


def markdown_table(agg: dict, keep_ratios: Sequence[float]) -> str:
    """The README table: recall and retention per field, mAP and training time, mean ± std."""

    def cell(entry, key, scale=100.0, digits=1):
        s = entry[key]
        if s["mean"] is None:
            return "-"
        txt = f"{scale * s['mean']:.{digits}f}"
        return txt + (f" ± {scale * s['std']:.{digits}f}" if s["n"] > 1 else "")

    order = sorted(agg, key=lambda k: (k[1] is not None, -(k[1] or 0), k[0] != "dense"))
    keys = [k for k in order if k[1] is None or k[1] in keep_ratios]

    def table(columns: list[tuple[str, str, float, int]]) -> str:
        head = "| variant | keep | " + " | ".join(c[0] for c in columns) + " |\n"
        rule = "|---|---|" + "---|" * len(columns) + "\n"
        rows = [
            f"| {v} | {'dense' if keep is None else keep} | "
            + " | ".join(cell(agg[(v, keep)], key, scale, digits) for _, key, scale, digits in columns)
            + " |"
            for v, keep in keys
        ]
        return head + rule + "\n".join(rows) + "\n"

    by_field = (
        [(f"recall {f}", f"recall_{f}", 100.0, 1) for f in FIELDS]
        + [(f"retention {f}", f"retention_{f}", 100.0, 1) for f in FIELDS]
        + [("mAP@0.5", "map50", 100.0, 1), ("train s", "train_seconds", 1.0, 0)]
    )
    by_size = [(f"recall {s}", f"recall_size_{s}", 100.0, 1) for s in ("small", "medium", "large")] + [
        (f"retention {s}", f"retention_size_{s}", 100.0, 1) for s in ("small", "medium", "large")
    ]
    return table(by_field) + "\n" + table(by_size)


def band_runs(
    base: list[str],
    config: str | None,
    loss: str,
    seeds: Sequence[int],
    out: Path,
    keep_ratios: Sequence[float],
    val_images: int,
    log: Callable[[str], None],
    done: set[tuple[str, int]] = frozenset(),
) -> list[RunResult]:
    """The band pruner (quotas proportional to the training set's positive patches) with ``loss``."""
    rows: list[RunResult] = []
    for seed in seeds:
        if (f"band + {loss}", seed) not in done:
            rows += train_and_evaluate(
                base, config, f"band + {loss}", LOSS_VARIANTS[loss] + BAND, seed, out, keep_ratios, val_images, log
            )
    return rows


def run_ablation(
    *,
    config: str | None,
    base: list[str],
    seeds: Sequence[int],
    out: Path,
    variants: Sequence[str] | None = None,
    keep_ratios: Sequence[float] = (0.5, 0.25),
    val_images: int = 128,
    band: bool = True,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Dense + every loss variant (+ the band pruner with the winning loss) over ``seeds``.

    ``resume``: keep the runs already in ``out/runs.json`` (same variant and seed) and train
    only the missing ones, so an interrupted ablation continues where it stopped.
    """

    names = list(variants) if variants else list(LOSS_VARIANTS)
    unknown = [n for n in names if n not in LOSS_VARIANTS]
    if unknown:
        raise InputError(f"unknown ablation variant(s) {unknown}; known: {list(LOSS_VARIANTS)}")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[RunResult] = []
    if resume and (out / "runs.json").is_file():
        try:
            rows = [RunResult(**r) for r in json.loads((out / "runs.json").read_text())]
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(f"--resume: {out / 'runs.json'} is not a runs file of this ablation: {exc}") from None
        log(f"resuming: {len({(r.variant, r.seed) for r in rows})} runs already in {out / 'runs.json'}")
    done = {(r.variant, r.seed) for r in rows}
    t0 = time.perf_counter()
    for seed in seeds:
        for name, overrides in [("dense", DENSE)] + [(n, LOSS_VARIANTS[n]) for n in names]:
            if (name, seed) not in done:
                rows += train_and_evaluate(base, config, name, overrides, seed, out, keep_ratios, val_images, log)
                write_json(out / "runs.json", [r.to_dict() for r in rows], force=True)
    agg = aggregate(rows)
    loss_winner, verdicts = select(agg, eligible=lambda v: v.startswith("object"))
    objects = [v for v in verdicts if v["variant"].startswith("object")]
    best_loss = loss_winner or (
        max(objects, key=lambda v: v["min_field_retention"] or 0)["variant"] if objects else "object g=0"
    )
    winner, verdicts = select(agg, eligible=preset_candidate)
    if band:
        rows += band_runs(base, config, best_loss, seeds, out, keep_ratios, val_images, log, done)
        write_json(out / "runs.json", [r.to_dict() for r in rows], force=True)
        agg = aggregate(rows)
        winner, verdicts = select(agg, eligible=preset_candidate)
    result = {
        "seeds": list(seeds),
        "keep_ratios": list(keep_ratios),
        "val_images": val_images,
        "base_overrides": base,
        "config": config,
        "winner": winner,
        "verdicts": verdicts,
        "aggregate": {f"{k[0]} @ {k[1]}": v for k, v in agg.items()},
        "runs": [r.to_dict() for r in rows],
        "seconds": time.perf_counter() - t0,
        "markdown": markdown_table(agg, keep_ratios),
    }
    write_json(out / "ablation.json", result, force=True)
    with atomic_path(out / "ablation.md", force=True) as tmp:
        tmp.write_text(result["markdown"])
    return result
