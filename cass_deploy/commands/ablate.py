"""``cass-deploy ablate``: the CASS bias ablation (also benchmarks/bias_ablation.py)."""

from __future__ import annotations

import argparse

from cass_deploy.commands.common import (
    add_force,
    add_out,
    add_sweep,
    add_training_config,
    keep_ratio,
    positive_int,
    sweep_from,
)
from cass_deploy.errors import InputError
from cass_deploy.training.ablation import ablate


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_config(p, "base training config", default="configs/ablation.yaml")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    p.add_argument(
        "--variants",
        default=None,
        help="comma list of loss variants (default: patch (seed), object g=0, object g=1; the others "
        "were ruled out by the issue-4 ablation: cass_off, object g=0.5, area, seed_object, object g=0 + TV)",
    )
    p.add_argument("--keep-ratios", default="0.5,0.25", help="each pruned variant is trained at each of these")
    p.add_argument("--val-images", type=positive_int, default=256)
    p.add_argument("--no-band", action="store_true", help="skip the band-pruner run")
    add_sweep(p, "training")
    p.add_argument("--resume", action="store_true", help="keep the runs in OUT/runs.json, train only missing ones")
    p.add_argument(
        "--summarise",
        action="store_true",
        help="train nothing: recompute tables, intervals and the verdict from OUT/runs.json",
    )
    add_out(p, "runs/ablation")
    add_force(p)


def run(args: argparse.Namespace) -> int:
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        ratios = [keep_ratio(s) for s in args.keep_ratios.split(",") if s.strip()]
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise InputError(f"bad --seeds or --keep-ratios: {exc}") from None
    if not seeds or not ratios:
        raise InputError(
            f"--seeds and --keep-ratios need at least one value, got {args.seeds!r} and {args.keep_ratios!r}"
        )
    res = ablate(
        config=args.config or None,
        base=args.overrides,
        out=args.out,
        force=args.force,
        seeds=seeds,
        variants=[v.strip() for v in args.variants.split(",")] if args.variants else None,
        keep_ratios=ratios,
        val_images=args.val_images,
        band=not args.no_band,
        resume=args.resume,
        summarise_only=args.summarise,
        sweep=sweep_from(args),
    )
    print(res["markdown"])
    verdict = res["verdict"]
    print(f"rule: {verdict.get('rule', '-')}")
    print(
        f"selected: {res['winner'] or 'none'} ({verdict.get('reason', '')}); {res['runs_done']}/{res['runs_planned']} "
        f"runs, {res['seconds'] / 60:.1f} min this session; wrote {args.out}/ablation.json and ablation.md"
    )
    return 0
