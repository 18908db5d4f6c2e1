"""``cass-deploy train``: train a pruning-aware detector with CASS (multi-process via torchrun)."""

from __future__ import annotations

import argparse

from cass_deploy.commands.common import add_config, add_force, add_out, add_overrides
from cass_deploy.config import PRESET_PRUNER, PRESETS
from cass_deploy.training.train import load_train_config, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p, "YAML/JSON training config (e.g. configs/demo.yaml)")
    add_overrides(p, "override a config value, e.g. --set cass.normalization=patch (repeatable)")
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

    overrides = list(args.overrides)
    if args.preset:
        overrides = (
            [f"cass.{k}={v}" for k, v in PRESETS[args.preset].items()]
            + [f"model.pruner.{k}={v}" for k, v in PRESET_PRUNER[args.preset].items()]
            + overrides
        )
    cfg = load_train_config(args.config, overrides)
    result = train(cfg, args.out, resume=args.resume, force=args.force, progress=not args.no_progress)
    best = result.metrics.get("best_map50")
    print(
        f"trained in {result.seconds:.0f} s; best val mAP@0.5 {best:.3f}; checkpoints: {result.best_path}, "
        f"{result.last_path}"
    )
    return 0
