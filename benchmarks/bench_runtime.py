"""Runtime cost of pruning on ONNX Runtime (CPU) and torch, all ratios from one run (issues 5, 11).

    python benchmarks/bench_runtime.py [--device cpu|cuda] [--iters 40] [--json out.json]

One model, one set of (random) weights, the configurations of each backend timed **interleaved in
rounds** (dense, keep 0.25, 0.5, 0.75, dense, ... — SPEC §7a), so machine noise lands on all of
them alike; every ratio is a ratio of medians with its 95 % paired bootstrap interval over rounds,
and each speed-up is printed beside its bound from the multiply-accumulates counted in the ONNX
graph (``profiling.macs``) and the share of that bound reached:

* dense detector vs the pruned detector at keep 0.25 / 0.5 / 0.75 (ONNX Runtime);
  target: keep 0.5 at least 1.5x faster than dense (on the interval's lower bound);
* the control, per thread count: the late blocks alone on all tokens and on keep 0.5's
  (``profiling.control``), the share of a MAC bound this runtime gives a pure cut in tokens,
  beside keep 0.5's share of its own;
* predictor + pruner cost as a share of the dense model, measured in torch eager as
  t(embed + early + predictor + pruner) - t(embed + early), and counted in FLOPs;
  target: <= 5 %;
* ONNX Runtime vs torch eager for the same pruned graph.

The benchmark model is the reference detector v2 at the demo size (issue 22: 256x448, 448
patches, width 96, 1 early and 6 late blocks — 77 % of the dense MACs after the pruner — and the
stride-8 head; the model defaults; ``--set head_stride=4 --set head_skip=true`` for the stride-4
head), random weights: speed does not depend on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
from pathlib import Path

import numpy as np
import torch
from common import bench_parser, run_main  # also puts the repository on sys.path

from cass_deploy.config import apply_overrides, from_dict
from cass_deploy.model.detector import ModelConfig, PrunedDetector
from cass_deploy.profiling.control import blocks_control
from cass_deploy.profiling.interleave import time_interleaved
from cass_deploy.profiling.latency import (
    ProfileOptions,
    add_part_times,
    latency_comparison,
    part_notes,
    time_configs,
    variant_configs,
)
from cass_deploy.profiling.timing import LatencyStats
from cass_deploy.resampling import percentile_interval, resample_indices


def bench_model(image_size=(256, 448), overrides=()) -> PrunedDetector:
    """The reference detector v2 (model defaults), global pruner at keep 0.5, random weights;
    ``overrides``: ``KEY=VALUE`` strings on its ``ModelConfig`` (e.g. ``head_stride=8``)."""
    torch.manual_seed(0)
    base = {"image_size": list(image_size), "pruner": {"mode": "global", "keep_ratio": 0.5}}
    cfg = from_dict(ModelConfig, apply_overrides(base, overrides), prefix="model.")
    return PrunedDetector(cfg).eval()


def predictor_flop_share(model: PrunedDetector) -> float:
    """Multiply-adds of the predictor MLP (+ LayerNorm) over those of the dense forward, by hooks."""
    macs = {"total": 0, "predictor": 0}

    def hook(name):
        def f(mod, inp, out):
            n = 0
            if isinstance(mod, torch.nn.Linear):
                n = inp[0].numel() // mod.in_features * mod.in_features * mod.out_features
            elif isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                k = mod.weight[0].numel()
                n = out.numel() * k if isinstance(mod, torch.nn.Conv2d) else inp[0].numel() * mod.weight[0].numel()
            macs["total"] += n
            if name.startswith("predictor"):
                macs["predictor"] += n

        return f

    dense = model.with_pruner(mode="none")
    handles = [
        m.register_forward_hook(hook(n))
        for n, m in dense.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]
    # attention matmuls (q @ k^T and attn @ v) are not modules: 2 * P^2 * D per block
    P, D = dense.num_patches, dense.cfg.embed_dim
    with torch.no_grad():
        dense(torch.rand(1, 3, *dense.image_size))
    for h in handles:
        h.remove()
    attn = 2 * P * P * D * (dense.cfg.early_depth + dense.cfg.late_depth)
    return macs["predictor"] / (macs["total"] + attn)


def _parser():
    ap = bench_parser(__doc__, threads=2, json=Path("benchmarks/results/runtime.json"))
    ap.add_argument("--iters", type=int, default=40, help="interleaved rounds (each times every configuration once)")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--image-size", type=int, nargs=2, default=(256, 448))
    ap.add_argument(
        "--ort-threads",
        type=int,
        nargs="*",
        default=[1],
        help="also time ONNX Runtime at these thread counts, each as its own interleaved set (default 1)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the model's config, e.g. --set head_stride=8 --set head_skip=false (repeatable)",
    )
    return ap


def time_backends(model: PrunedDetector, args) -> tuple[dict, dict]:
    """-> ({row name: Measurement}, {backend: LatencyComparison}): ONNX Runtime (CPU) at
    ``args.threads`` and each of ``args.ort_threads``, then torch, each an interleaved set."""
    rows, comparisons = {}, {}
    with contextlib.ExitStack() as stack:
        for threads in dict.fromkeys([args.threads, *args.ort_threads]) if args.device == "cpu" else ():
            # one interleaved set per thread count: at 1 thread no operator waits for another thread
            opts = ProfileOptions(backend="onnxruntime", sweep=(0.25, 0.5, 0.75), threads=threads)
            configs, _ = variant_configs(model, opts, "onnxruntime", 1, "cpu", "full", stack)
            ort = time_configs(configs, warmup=args.warmup, rounds=args.iters)
            add_part_times(ort, configs)  # ORT's profiler, after the timing: where each pruned graph's time goes
            backend = "ORT" if threads == args.threads else f"ORT {threads}T"
            comparisons[backend] = latency_comparison(ort)
            rows.update({f"{backend} {m.label.replace('global ', '')}": m for m in ort})
            # the control: the late blocks alone on all tokens and on keep 0.5's, no pruning machinery
            comparisons[f"{backend} blocks"] = blocks_control(
                model, 0.5, threads=threads, warmup=args.warmup, rounds=args.iters
            )
        opts = ProfileOptions(backend="torch", sweep=(0.5,))
        configs, sync = variant_configs(model, opts, "torch", 1, args.device, "full", stack)
        tt = time_configs(configs, warmup=args.warmup, rounds=args.iters, sync=sync)
        comparisons["torch"] = latency_comparison(tt)
        rows.update({f"torch {m.label.replace('global ', '')}": m for m in tt})
    return rows, comparisons


def predictor_share(model: PrunedDetector, args, dense_p50: float) -> dict:
    """Predictor + pruner cost over the dense p50: t(predict) - t(embed) in torch eager, same
    input, interleaved -> {embed, predict: LatencyStats, time, time_ci: (lo, hi), flops}."""
    x = torch.rand(1, 3, *model.image_size, device=args.device)
    model.to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    with torch.no_grad():
        ms = time_interleaved(
            [lambda: model.embed(x), lambda: model.predict(x)], rounds=args.iters, warmup=args.warmup, sync=sync
        )
    # the median of the per-round differences (the two run back to back in each round, so noise
    # common to a round cancels) over the dense p50, with a bootstrap interval over rounds (the
    # dense p50's own uncertainty is not in it); may be < 0 (noise)
    diff = np.asarray(ms[:, 1] - ms[:, 0], dtype=np.float64)
    lo, hi = percentile_interval(np.median(diff[resample_indices(len(diff))], axis=1) / dense_p50)
    return {
        "embed": LatencyStats.from_samples(ms[:, 0].tolist()),
        "predict": LatencyStats.from_samples(ms[:, 1].tolist()),
        "time": float(np.median(diff)) / dense_p50,
        "time_ci": (lo, hi),
        "flops": predictor_flop_share(model.cpu()),
    }


def print_speedups(comparisons: dict) -> dict:
    """Print each speed-up beside its MAC bound (and item 2's targets for ORT keep 0.5) -> the rows as JSON."""
    print(f"\n{'speed-up (ratio of p50s)':<38}{'value':>7}  {'95% CI':<16}{'MAC bound':>10}{'of bound':>10}  target")
    out_ratios = {}
    for backend, comp in comparisons.items():
        if comp is None:
            continue
        for r in comp.speedups:
            name = f"{backend} {r.a} / {r.b.replace('global ', '')}"
            bound = comp.mac_bounds.get(r.b)
            share = comp.share_of_bound(r.b)
            target = ""
            if backend.startswith("ORT") and r.b.endswith("keep 0.5"):
                target = f">= 1.5 {'met' if r.lo >= 1.5 else ('NOT met' if r.hi < 1.5 else 'not resolved')}"
                target += f", >= 90% of bound {'met' if share and share >= 0.9 else 'NOT met'}"
            print(
                f"{name:<38}{r.ratio:>7.2f}  [{r.lo:.2f}, {r.hi:.2f}]{'':<4}"
                f"{(f'{bound:.2f}x' if bound else '-'):>10}{(f'{100 * share:.0f}%' if share else '-'):>10}  {target}"
            )
            out_ratios[name] = {**r.to_dict(), "mac_bound": bound, "share_of_mac_bound": share}
        for w in comp.warnings:
            print(f"warning ({backend}): {w}")
    for line in ceiling_lines(comparisons):
        print(line)
    return out_ratios


def ceiling_lines(comparisons: dict) -> list[str]:
    """One line per ONNX Runtime thread count: keep 0.5's share of its MAC bound beside the share the
    late blocks alone reach (the runtime's ceiling for a pure token cut), and the one over the other."""
    lines = []
    for backend, comp in comparisons.items():
        control = comparisons.get(f"{backend} blocks")
        if comp is None or control is None:  # a control has no control of its own
            continue
        label = next((r.b for r in comp.speedups if r.b.endswith("keep 0.5")), None)
        whole, ceiling = comp.share_of_bound(label), control.share_of_bound(control.speedups[0].b)
        if whole and ceiling:
            lines.append(
                f"{backend} keep 0.5: {100 * whole:.0f}% of its MAC bound; the late blocks alone reach "
                f"{100 * ceiling:.0f}% of theirs, so the pruned graph gets {100 * whole / ceiling:.0f}% of what "
                "this runtime gives a pure cut in tokens"
            )
    return lines


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model = bench_model(args.image_size, args.overrides)
    rows, comparisons = time_backends(model, args)
    share = predictor_share(model, args, rows["torch dense"].latency.p50)
    print(
        f"runtime benchmark: {args.image_size[0]}x{args.image_size[1]} input, P={model.num_patches}, "
        f"device={args.device}, threads={args.threads}, {args.iters} interleaved rounds after {args.warmup} warm-up"
    )
    print(f"{'configuration':<20}{'p50 ms':>9}  {'95% CI':<18}{'IQR':>7}{'GMACs':>8}")
    for name, m in rows.items():
        ci = m.median_ci
        gmacs = f"{m.macs.total / 1e9:.3f}" if m.macs and m.macs.complete else "-"
        print(f"{name:<20}{m.latency.p50:>9.2f}  [{ci.lo:.2f}, {ci.hi:.2f}]{'':<4}{ci.iqr:>7.2f}{gmacs:>8}")
    print(f"{'torch embed+early':<20}{share['embed'].p50:>9.2f}")
    print(f"{'torch +predictor+pruner':<20}{share['predict'].p50:>6.2f}")
    out_ratios = print_speedups(comparisons)
    for line in part_notes([dataclasses.replace(m, label=name) for name, m in rows.items() if name.startswith("ORT ")]):
        print(line)
    if "ORT keep 0.5" in rows:
        a, b = rows["torch keep 0.5"].latency.p50, rows["ORT keep 0.5"].latency.p50
        print(f"{'torch eager / ORT (keep 0.5)':<38}{a / b:>7.2f}  (different runs of the two backends: no interval)")
    lo, hi = share["time_ci"]
    verdict = "met" if hi <= 0.05 else ("NOT met" if lo > 0.05 else "not resolved")
    print(
        f"{'predictor+pruner / dense (time)':<38}{100 * share['time']:>6.2f}%  "
        f"[{100 * lo:.2f}, {100 * hi:.2f}] %  <= 5% {verdict}"
    )
    print(f"{'predictor MLP / dense (FLOPs)':<38}{100 * share['flops']:>6.2f}%")
    out = {
        "setup": {
            "device": args.device,
            "threads": args.threads,
            "rounds": args.iters,
            "warmup": args.warmup,
            "interleaved": True,
            "image_size": list(args.image_size),
            "model_overrides": list(args.overrides),
            "patches": model.num_patches,
            "machine": platform.processor() or platform.machine(),
            "torch": str(torch.__version__),
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "latency": {k: v.to_dict() for k, v in rows.items()},
        "comparisons": {k: v.to_dict() for k, v in comparisons.items() if v is not None},
        "torch_embed_ms": share["embed"].to_dict(),
        "torch_predict_ms": share["predict"].to_dict(),
        "ratios": out_ratios,
        "predictor_share_time": share["time"],
        "predictor_share_time_ci": [lo, hi],
        "predictor_share_flops": share["flops"],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
