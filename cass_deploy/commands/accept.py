"""``cass-deploy accept``: on the target, build / check / profile / validate one export, one verdict."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from cass_deploy.commands.common import (
    add_class_map,
    add_fields,
    add_force,
    add_gate_arguments,
    add_out,
    add_providers,
    add_seed,
    add_verify_hash,
    gates_from_args,
    non_negative_float,
    non_negative_int,
    options_from,
    positive_int,
    unit_interval,
)
from cass_deploy.config import FieldConfig
from cass_deploy.data.classes import parse_class_map
from cass_deploy.errors import GateFailed
from cass_deploy.reporting.acceptance import BACKENDS, AcceptOptions, run_accept, verdict_lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", help="the export directory copied from the workstation (model.onnx, manifest.json)")
    p.add_argument("--data", required=True, help="'synthetic' or the labelled COCO / KITTI dataset directory")
    p.add_argument(
        "--reference",
        required=True,
        type=Path,
        help="REF.json: the workstation's `validate EXPORT --json REF.json` of this export",
    )
    p.add_argument(
        "--reference-outputs",
        type=Path,
        default=None,
        help="the workstation's `verify --save-polygraphy DIR` (default: reference-outputs/ beside REF.json)",
    )
    p.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="auto: TensorRT when installed, else ONNX Runtime"
    )
    p.add_argument(
        "--images", type=positive_int, default=None, help="images to validate (default: as many as REF.json)"
    )
    add_gate_arguments(
        p,
        max_recall_drop=0.02,
        drop_help="max recall drop per field vs the workstation's result in REF.json, on the 95%% upper bound "
        "(default 0.02)",
    )
    p.add_argument("--min-map50", type=unit_interval, default=None)
    p.add_argument("--max-p50-ms", type=non_negative_float, default=None, help="latency gate on the p50 (ms)")
    p.add_argument("--allow-unlocked-clocks", action="store_true", help="on a Jetson, accept without jetson_clocks")
    p.add_argument("--warmup", type=non_negative_int, default=20)
    p.add_argument("--iters", type=positive_int, default=200)
    # the engine build when the export has none (argparse's default: None)
    p.add_argument("--timing-cache", type=Path, help="default: EXPORT_DIR.timing.cache beside it")
    p.add_argument("--engine-dir", type=Path, help="where the engine is built when absent (default: EXPORT_DIR-engine)")
    p.add_argument("--workspace", type=positive_int, metavar="MIB", help="TensorRT workspace when building")
    add_fields(p, "field split by box bottom edge as fractions of image height (default 0.5 0.75)")
    p.add_argument("--iou", type=unit_interval, default=0.5)
    p.add_argument("--score-thr", type=unit_interval, default=0.3)
    add_providers(p, "ONNX Runtime providers for the ONNX candidate (cpu,cuda,tensorrt)")
    p.add_argument("--resize", action="store_true", help="resize dataset images to the model input (boxes scaled)")
    add_class_map(p)
    add_seed(p)
    add_out(p, default=None, help="report directory (default: EXPORT_DIR-accept)")
    add_force(p, "overwrite --out")
    add_verify_hash(p)


def run(args: argparse.Namespace) -> int:
    gates = gates_from_args(args, min_map50=args.min_map50)
    opts = options_from(
        AcceptOptions,
        args,
        out=Path(args.out) if args.out else None,
        gates=gates,
        fields=FieldConfig(*args.fields),
        iou_thr=args.iou,
        workspace_mib=args.workspace,
        providers=tuple(s for s in args.providers.split(",") if s),
        class_map=parse_class_map(args.class_map),
    )
    console = Console(width=max(120, Console().width))
    result = run_accept(Path(args.export_dir), opts, log=lambda s: console.print(s, highlight=False))
    for line in verdict_lines(result):
        console.print(line, highlight=False, markup=False)
    if not result:
        raise GateFailed("acceptance failed: " + "; ".join(c.message for c in result.checks if not c.passed))
    return 0
