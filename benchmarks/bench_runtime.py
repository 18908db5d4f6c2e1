"""Runtime cost of pruning on ONNX Runtime (CPU) and torch, all ratios from one run (issue 5).

    python benchmarks/bench_runtime.py [--device cpu|cuda] [--iters 40] [--json out.json]

One model, one set of (random) weights, every configuration timed back to back:

* dense detector vs the pruned detector at keep 0.25 / 0.5 / 0.75 (ONNX Runtime);
  target: keep 0.5 at least 1.5x faster than dense;
* predictor + pruner cost as a share of the dense model, measured in torch eager as
  t(embed + early + predictor + pruner) - t(embed + early), and counted in FLOPs;
  target: <= 5 %;
* ONNX Runtime vs torch eager for the same pruned graph.

The benchmark model is deployment-shaped (most compute after the pruner, as in DynamicViT's
pruning after the early stage): 384x672 input (1008 patches), width 192, 2 early and 6 late
blocks. The demo model is smaller and prunes less of its compute; its own sweep is in the demo
report.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from common import bench_parser  # also puts the repository on sys.path

from cass_deploy.model.detector import ModelConfig, PrunedDetector
from cass_deploy.model.pruner import PrunerConfig  # noqa: E402
from cass_deploy.profiling.latency import profile_onnx_of, profile_torch
from cass_deploy.profiling.timing import LatencyStats, time_callable


def bench_model(image_size=(384, 672)) -> PrunedDetector:
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=tuple(image_size),
        embed_dim=192,
        num_heads=6,
        early_depth=2,
        late_depth=6,
        pruner=PrunerConfig(mode="global", keep_ratio=0.5),
    )
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


def main(argv=None) -> int:
    ap = bench_parser(__doc__, threads=2, json=Path("benchmarks/results/runtime.json"))
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--image-size", type=int, nargs=2, default=(384, 672))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = bench_model(args.image_size)
    it = dict(batch=1, warmup=args.warmup, iters=args.iters)
    rows = {}
    dense = model.with_pruner(mode="none")
    if args.device == "cpu":
        rows["ORT dense"] = profile_onnx_of(dense, "dense", threads=args.threads, **it)
        for r in (0.25, 0.5, 0.75):
            rows[f"ORT keep {r}"] = profile_onnx_of(
                model.with_pruner(keep_ratio=r), f"keep {r}", threads=args.threads, **it
            )
    rows["torch dense"] = profile_torch(dense, "torch dense", device=args.device, **it)
    rows["torch keep 0.5"] = profile_torch(model, "torch keep 0.5", device=args.device, **it)

    # predictor + pruner cost: t(predict) - t(embed) in torch eager, same input, back to back
    x = torch.rand(1, 3, *model.image_size, device=args.device)
    model.to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    with torch.no_grad():
        t_embed = LatencyStats.from_samples(
            time_callable(lambda: model.embed(x), sync=sync, **{k: it[k] for k in ("warmup", "iters")})
        )
        t_pred = LatencyStats.from_samples(
            time_callable(lambda: model.predict(x), sync=sync, **{k: it[k] for k in ("warmup", "iters")})
        )
    # min over samples: the least-disturbed run of each, since the difference of two noisy medians is noisier
    share_time = max(0.0, t_pred.min - t_embed.min) / rows["torch dense"].latency.min
    share_flops = predictor_flop_share(model.cpu())

    ratios = {}
    if "ORT dense" in rows:
        for r in (0.25, 0.5, 0.75):
            ratios[f"ORT dense / keep {r}"] = rows["ORT dense"].latency.p50 / rows[f"ORT keep {r}"].latency.p50
        ratios["torch eager / ORT (keep 0.5)"] = rows["torch keep 0.5"].latency.p50 / rows["ORT keep 0.5"].latency.p50
    ratios["torch dense / keep 0.5"] = rows["torch dense"].latency.p50 / rows["torch keep 0.5"].latency.p50
    targets = {"ORT dense / keep 0.5": (">=", 1.5)}
    print(
        f"runtime benchmark: {args.image_size[0]}x{args.image_size[1]} input, P={model.num_patches}, "
        f"device={args.device}, threads={args.threads}, iters={args.iters}"
    )
    print(f"{'configuration':<22}{'p50 ms':>10}{'mean ms':>10}{'p90 ms':>10}")
    for name, m in rows.items():
        s = m.latency
        print(f"{name:<22}{s.p50:>10.2f}{s.mean:>10.2f}{s.p90:>10.2f}")
    print(f"{'torch embed+early':<22}{t_embed.p50:>10.2f}\n{'torch +predictor+pruner':<22}{t_pred.p50:>10.2f}")
    print(f"\n{'ratio':<34}{'value':>8}  target")
    for k, v in ratios.items():
        t = targets.get(k)
        met = "" if not t else ("met" if (v >= t[1] if t[0] == ">=" else v <= t[1]) else "NOT met")
        print(f"{k:<34}{v:>8.2f}  {'' if not t else f'{t[0]} {t[1]} {met}'}")
    met_share = share_time <= 0.05
    print(
        f"{'predictor+pruner / dense (time)':<34}{100 * share_time:>7.2f}%  <= 5% {'met' if met_share else 'NOT met'}"
    )
    print(f"{'predictor MLP / dense (FLOPs)':<34}{100 * share_flops:>7.2f}%")
    out = {
        "setup": {
            "device": args.device,
            "threads": args.threads,
            "iters": args.iters,
            "image_size": list(args.image_size),
            "patches": model.num_patches,
            "machine": platform.processor() or platform.machine(),
            "torch": str(torch.__version__),
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "latency": {k: v.to_dict() for k, v in rows.items()},
        "torch_embed_ms": t_embed.to_dict(),
        "torch_predict_ms": t_pred.to_dict(),
        "ratios": ratios,
        "predictor_share_time": share_time,
        "predictor_share_flops": share_flops,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
