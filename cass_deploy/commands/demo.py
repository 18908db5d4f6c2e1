"""``cass-deploy demo``: the whole path on CPU on synthetic roadside scenes, with a report."""

from __future__ import annotations

import argparse

from rich.console import Console

from cass_deploy.demo import DemoOptions, run_demo, summary_table
from cass_deploy.errors import GateFailed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/demo.yaml", help="training config (default configs/demo.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training config override (repeatable)",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/demo-<timestamp>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--validate-images", type=int, default=64)
    p.add_argument("--verify-images", type=int, default=16)
    p.add_argument("--profile-iters", type=int, default=30)
    p.add_argument(
        "--max-recall-drop",
        type=float,
        default=0.10,
        help="gate: recall drop vs the dense model, per field (default 0.10)",
    )
    p.add_argument("--min-near-recall", type=float, default=None)
    p.add_argument("--min-near-retention", type=float, default=None)
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:

    opts = DemoOptions(
        config=args.config,
        out=args.out,
        force=args.force,
        overrides=args.overrides,
        verify_images=args.verify_images,
        validate_images=args.validate_images,
        profile_iters=args.profile_iters,
        max_recall_drop=args.max_recall_drop,
        min_near_recall=args.min_near_recall,
        min_near_retention=args.min_near_retention,
        progress=not args.no_progress,
    )
    summary = run_demo(opts)
    console = Console(width=max(110, Console().width))
    console.print(summary_table(summary))
    console.print(f"report: {summary['report']}")
    if not summary["ok"]:
        raise GateFailed("demo gates failed: " + " | ".join(summary["failed_gates"]))
    return 0
