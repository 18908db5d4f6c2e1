"""``cass-deploy verify``: does the deployed keep mask match the trained one?"""

from __future__ import annotations

import argparse

from rich.console import Console

from cass_deploy.commands.common import add_force, add_providers
from cass_deploy.errors import GateFailed
from cass_deploy.evaluation.verify import report_table, run_verify
from cass_deploy.io_utils import check_writable, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", required=True, help="the trained checkpoint (.pt)")
    p.add_argument(
        "--candidate",
        action="append",
        required=True,
        metavar="PATH",
        help="export directory, .onnx or .engine (repeatable)",
    )
    p.add_argument("--images", type=int, default=16, help="images to compare (default 16)")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a dataset directory")
    add_providers(p, "ONNX Runtime providers, comma list of cpu,cuda,tensorrt")
    p.add_argument("--tie-tol", type=float, default=None, help="score tolerance that makes patches interchangeable")
    p.add_argument("--min-keep-iou", type=float, default=None, help="minimum mean tie-aware keep-set IoU")
    p.add_argument("--max-score-err", type=float, default=None, help="maximum absolute score error")
    p.add_argument("--json", dest="json_out", help="write the report as JSON to this file")
    p.add_argument(
        "--save-polygraphy",
        metavar="DIR",
        default=None,
        help="save the reference inputs and torch outputs in Polygraphy's JSON format (inputs.json, outputs.json, "
        "keep.json, index.json with the `polygraphy run` commands) for checking the engine on the device",
    )
    add_force(p, "overwrite the --json file and the --save-polygraphy directory")


def run(args: argparse.Namespace) -> int:

    if args.json_out:
        check_writable(args.json_out, args.force)
    if args.save_polygraphy:
        check_writable(args.save_polygraphy, args.force)
    report, notes = run_verify(
        args.reference,
        args.candidate,
        images=args.images,
        data=args.data,
        providers=[s.strip() for s in args.providers.split(",") if s.strip()],
        tie_tol=args.tie_tol,
        min_keep_iou=args.min_keep_iou,
        max_score_abs=args.max_score_err,
        save_polygraphy=args.save_polygraphy,
        force=args.force,
    )
    console = Console(width=max(140, Console().width))
    console.print(report_table(report))
    for n in notes:
        console.print(f"note: {n}")
    if args.json_out:
        write_json(args.json_out, {**report.to_dict(), "notes": notes}, force=args.force)
    if not report:
        failed = [f"{c.name}: {'; '.join(c.failures)}" for c in report.candidates if not c]

        raise GateFailed("verification failed: " + " | ".join(failed))
    return 0
