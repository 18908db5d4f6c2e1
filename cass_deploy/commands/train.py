"""``cass-deploy train``: train a pruning-aware detector with CASS (multi-process via torchrun)."""

from __future__ import annotations

import argparse

from cass_deploy.commands.common import add_force, add_out, add_training_config
from cass_deploy.training.train import train_from_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_config(
        p,
        "YAML/JSON training config (e.g. configs/demo.yaml)",
        overrides_help="override a config value, e.g. --set cass.normalization=patch (repeatable)",
    )
    p.add_argument(
        "--preset",
        choices=("seed", "corrected"),
        help="CASS preset and pruner applied before --set overrides (seed: patch mean, global top-k; "
        "corrected: object normalisation, area_gamma 1, band pruner)",
    )
    add_out(p, "runs/train", "output directory for last.pt, best.pt, history.json")
    p.add_argument("--resume", help="checkpoint (last.pt) to continue from")
    add_force(p, "overwrite an output directory that holds files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    result = train_from_config(
        args.config,
        args.overrides,
        args.out,
        preset=args.preset,
        resume=args.resume,
        force=args.force,
        progress=not args.no_progress,
    )
    best = result.metrics.get("best_map50")
    print(
        f"trained in {result.seconds:.0f} s; best val mAP@0.5 {best:.3f}; checkpoints: {result.best_path}, "
        f"{result.last_path}"
    )
    return 0
