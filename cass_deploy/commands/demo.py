"""``cass-deploy demo``: the whole path on CPU on synthetic roadside scenes, with a report."""

from __future__ import annotations

import argparse

from rich.console import Console

from cass_deploy.commands.common import (
    add_force,
    add_out,
    add_stopping_rule,
    add_training_config,
    options_from,
)
from cass_deploy.demo import DemoOptions, run_demo, summary_table
from cass_deploy.errors import GateFailed


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_config(
        p,
        "training config (default configs/demo.yaml)",
        default="configs/demo.yaml",
        overrides_help="training config override (repeatable)",
    )
    add_out(p, help="run directory (default runs/demo-<timestamp>)")
    add_force(p, "overwrite an existing run directory")
    p.add_argument(
        "--validate-images", type=int, default=160, help="validation scenes (default 160: ~320 near-field objects)"
    )
    p.add_argument("--verify-images", type=int, default=16)
    p.add_argument("--profile-iters", type=int, default=30, help="interleaved rounds before the stopping rule")
    add_stopping_rule(p, "profile-", until_ci=0.05, max_time=45.0)
    p.add_argument(
        "--max-recall-drop",
        type=float,
        default=0.10,
        help="gate: recall drop vs the dense model, per field, on the 95%% upper bound (default 0.10)",
    )
    p.add_argument("--min-near-recall", type=float, default=None)
    p.add_argument("--min-near-retention", type=float, default=None)
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    summary = run_demo(options_from(DemoOptions, args, progress=not args.no_progress))
    console = Console(width=max(150, Console().width))
    console.print(summary_table(summary))
    console.print(f"report: {summary['report']}")
    if not summary["ok"]:
        raise GateFailed("demo gates failed: " + " | ".join(summary["failed_gates"]))
    return 0
