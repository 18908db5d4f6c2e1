"""CASS loss cost: normalisations against each other and vectorised code against per-box loops.

All ratios come from one run on one machine (shared machines are noisy; absolute times are
not comparable across runs). Default case (issue 3): B=8, grid 48x80 (P=3840, a 768x1280
input at patch 16), 64 roadside-like boxes per image, forward + backward, median of repeats.

    python benchmarks/bench_loss.py [--device cuda] [--repeats 15] [--json out.json]

Targets: object / patch <= 1.5; seed plan 1 literal loop / vectorised object >= 20;
per-box-loop target mask / vectorised target mask >= 20.
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import torch
from common import bench_parser  # also puts the repository on sys.path

from cass_deploy.cass.loops import seed_plan1_loop, target_mask_loop
from cass_deploy.cass.losses import cass_loss
from cass_deploy.cass.targets import soft_target_mask
from cass_deploy.config import CassConfig  # noqa: E402


def roadside_boxes(num_images: int, per_image: int, image_size: tuple[int, int], seed: int = 0):
    """Boxes like a roadside view: most small near the horizon (top-left heavy), a few large near."""
    g = torch.Generator().manual_seed(seed)
    H, W = image_size
    out = []
    for _ in range(num_images):
        n_near = max(1, per_image // 16)
        n_far = per_image - n_near
        # far field: small boxes, bottom edge in the upper half, denser to the left
        fw = 6 + 30 * torch.rand(n_far, generator=g)
        fx = (torch.rand(n_far, generator=g) ** 1.5) * (W - fw)
        fy = 0.3 * H + 0.2 * H * torch.rand(n_far, generator=g)
        far = torch.stack([fx, fy - 0.7 * fw, fx + fw, fy], 1)
        nw = 200 + 300 * torch.rand(n_near, generator=g)
        nx = torch.rand(n_near, generator=g) * (W - nw)
        ny = H - 5 - 0.2 * H * torch.rand(n_near, generator=g)
        near = torch.stack([nx, ny - 0.8 * nw, nx + nw, ny], 1)
        b = torch.cat([far, near])
        b[:, 0::2] = b[:, 0::2].clamp(0, W)
        b[:, 1::2] = b[:, 1::2].clamp(0, H)
        out.append(b)
    return out


def median_ms(fn, repeats: int, warmup: int = 2, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(device: str, repeats: int, B: int, grid: tuple[int, int], per_image: int, loop_repeats: int) -> dict:
    Hp, Wp = grid
    image_size = (Hp * 16, Wp * 16)
    boxes_cpu = roadside_boxes(B, per_image, image_size)
    boxes = [b.to(device) for b in boxes_cpu]
    logits0 = torch.randn(B, Hp * Wp, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def fwd_bwd(cfg):
        def step():
            x = logits0.clone().requires_grad_(True)
            cass_loss(x, boxes, grid, image_size, cfg).total.backward()

        return step

    results = {}
    for name in ("patch", "area", "seed_object", "object"):
        results[f"{name} fwd+bwd"] = median_ms(fwd_bwd(CassConfig(normalization=name)), repeats, sync=sync)
    results["object gamma=1 fwd+bwd"] = median_ms(
        fwd_bwd(CassConfig(normalization="object", area_gamma=1.0)), repeats, sync=sync
    )

    def seed_loop():
        x = logits0.detach().cpu().clone().requires_grad_(True)
        seed_plan1_loop(x, boxes_cpu, grid, image_size, CassConfig(normalization="seed_object")).backward()

    results["seed plan 1 per-box loop fwd+bwd (CPU)"] = median_ms(seed_loop, loop_repeats, warmup=1)
    results["target mask vectorised"] = median_ms(lambda: soft_target_mask(boxes, grid, image_size), repeats, sync=sync)
    results["target mask per-box loop (CPU)"] = median_ms(
        lambda: target_mask_loop(boxes_cpu, grid, image_size), loop_repeats, warmup=1
    )
    ratios = {
        "object / patch": (results["object fwd+bwd"] / results["patch fwd+bwd"], "<= 1.5"),
        "seed plan 1 loop / object": (
            results["seed plan 1 per-box loop fwd+bwd (CPU)"] / results["object fwd+bwd"],
            ">= 20",
        ),
        "per-box target loop / vectorised": (
            results["target mask per-box loop (CPU)"] / results["target mask vectorised"],
            ">= 20",
        ),
    }
    return {
        "times_ms": results,
        "ratios": {k: {"value": v, "target": t, "met": _met(v, t)} for k, (v, t) in ratios.items()},
    }


def _met(value: float, target: str) -> bool:
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def main(argv=None) -> int:
    ap = bench_parser(__doc__, threads=None, json=None)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--loop-repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--grid", type=int, nargs=2, default=(48, 80))
    ap.add_argument("--boxes", type=int, default=64)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.device, args.repeats, args.batch, tuple(args.grid), args.boxes, args.loop_repeats)
    res["setup"] = {
        "device": args.device,
        "batch": args.batch,
        "grid": list(args.grid),
        "boxes_per_image": args.boxes,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }
    print(
        f"CASS loss benchmark: B={args.batch} grid={args.grid[0]}x{args.grid[1]} "
        f"boxes/image={args.boxes} device={args.device} threads={torch.get_num_threads()}"
    )
    print(f"{'measurement':<44}{'median ms':>12}")
    for k, v in res["times_ms"].items():
        print(f"{k:<44}{v:>12.2f}")
    print(f"\n{'ratio':<36}{'value':>10}  {'target':<8}{'met':>5}")
    for k, r in res["ratios"].items():
        print(f"{k:<36}{r['value']:>10.2f}  {r['target']:<8}{'yes' if r['met'] else 'NO':>5}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all(r["met"] for r in res["ratios"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
