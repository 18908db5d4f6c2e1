"""``cass-deploy verify``: does the deployed keep mask match the trained one?"""

from __future__ import annotations

import argparse

from rich.console import Console

from cass_deploy.commands.common import (
    add_data,
    add_force,
    add_grid,
    add_model_source,
    add_providers,
    add_resize,
    add_verify_hash,
    model_source,
    non_negative_float,
    positive_int,
    unit_interval,
)
from cass_deploy.errors import GateFailed
from cass_deploy.evaluation.verify import report_table, verify_to


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", default=None, help="the trained checkpoint (.pt); or give --model")
    add_model_source(p)
    add_grid(p)
    p.add_argument(
        "--candidate",
        action="append",
        required=True,
        metavar="PATH",
        help="export directory, .onnx or .engine (repeatable)",
    )
    p.add_argument("--images", type=positive_int, default=16, help="images to compare (default 16)")
    add_data(p, "'synthetic' or a dataset directory")
    add_resize(p)
    add_providers(p, "ONNX Runtime providers, comma list of cpu,cuda,tensorrt")
    p.add_argument(
        "--tie-tol", type=non_negative_float, default=None, help="score tolerance that makes patches interchangeable"
    )
    p.add_argument("--min-keep-iou", type=unit_interval, default=None, help="minimum mean tie-aware keep-set IoU")
    p.add_argument("--max-score-err", type=non_negative_float, default=None, help="maximum absolute score error")
    p.add_argument(
        "--min-det-match",
        type=unit_interval,
        default=None,
        help="minimum share of the reference's detections the candidate has, and the other way round",
    )
    p.add_argument("--json", dest="json_out", help="write the report as JSON to this file")
    p.add_argument(
        "--save-polygraphy",
        metavar="DIR",
        default=None,
        help="save the reference inputs and torch outputs in Polygraphy's JSON format (inputs.json, outputs.json, "
        "keep.json, index.json with the `polygraphy run` commands) for checking the engine on the device",
    )
    add_force(p, "overwrite the --json file and the --save-polygraphy directory")
    add_verify_hash(p)


def run(args: argparse.Namespace) -> int:
    report, notes = verify_to(
        args.reference,
        args.candidate,
        json_out=args.json_out,
        source=model_source(args, args.reference),
        grid=args.grid,
        images=args.images,
        data=args.data,
        providers=[s.strip() for s in args.providers.split(",") if s.strip()],
        tie_tol=args.tie_tol,
        min_keep_iou=args.min_keep_iou,
        max_score_abs=args.max_score_err,
        min_det_match=args.min_det_match,
        save_polygraphy=args.save_polygraphy,
        force=args.force,
        resize=args.resize or False,
    )
    console = Console(width=max(140, Console().width))
    console.print(report_table(report))
    for n in notes:
        console.print(f"note: {n}")
    if not report:
        failed = [f"{c.name}: {'; '.join(c.failures)}" for c in report.candidates if not c]
        raise GateFailed("verification failed: " + " | ".join(failed))
    return 0
