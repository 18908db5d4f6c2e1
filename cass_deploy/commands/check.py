"""``cass-deploy check``: protocol, trace and per-target operator check of a model or ONNX file (SPEC §7c)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from cass_deploy.backends.limits import PRECISIONS, TARGETS
from cass_deploy.commands.common import add_model_source, add_verify_hash, keep_ratio, positive_int
from cass_deploy.export.check import check_to, report_tables


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None, help="an export directory, a model.onnx or a checkpoint")
    add_model_source(p)
    p.add_argument(
        "--target",
        action="append",
        choices=list(TARGETS),
        default=None,
        help="a deployment target (repeat for several); default: every target but the DLA one",
    )
    p.add_argument(
        "--dynamic-batch",
        nargs=3,
        type=positive_int,
        metavar=("MIN", "OPT", "MAX"),
        help="a dynamic batch: a model is exported with it; a plain .onnx is checked against this profile "
        "(an export directory uses its manifest's)",
    )
    p.add_argument("--no-gpu-fallback", action="store_true", help="DLA without GPU fallback: non-DLA layers fail")
    p.add_argument("--image-size", nargs=2, type=positive_int, metavar=("H", "W"), help="export a model at this size")
    p.add_argument("--keep-ratio", type=keep_ratio, default=None, help="export a model at this keep ratio")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="export a model at this precision (fp32)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH", help="the report as JSON (stdout: -)")
    p.add_argument("--force", action="store_true", help="overwrite the --json file")
    add_verify_hash(p)


def run(args: argparse.Namespace) -> int:
    quiet = args.json == "-"
    report = check_to(
        Path(args.source) if args.source else None,
        json_out=args.json,
        force=args.force,
        model=args.model_spec,
        weights=Path(args.weights) if args.weights else None,
        model_args=args.model_args,
        targets=args.target,
        dynamic_batch=args.dynamic_batch,
        gpu_fallback=not args.no_gpu_fallback,
        export_args={
            "image_size": tuple(args.image_size) if args.image_size else None,
            "keep_ratio": args.keep_ratio,
            "precision": args.precision,
        },
        log=(lambda s: print(s, file=sys.stderr)) if quiet else print,
    )
    if quiet:
        print(json.dumps(report.to_dict(), indent=1, default=str))
        return report.exit_code
    console = Console(width=max(140, Console().width))
    if report.protocol:
        console.print(f"protocol: {report.protocol}")
    for table in report_tables(report):
        console.print(table)
    for n in report.notes:
        console.print(f"note: {n}")
    ok = [v.target for v in report.verdicts if v.can_build]
    bad = [v.target for v in report.verdicts if not v.can_build]
    console.print(f"can build: {', '.join(ok) or 'none'}" + (f"; cannot: {', '.join(bad)}" if bad else ""))
    return report.exit_code
