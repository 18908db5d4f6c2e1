"""``cass-deploy validate``: near-field vehicle recall and retention of the deployed model, gated."""

from __future__ import annotations

import argparse

from rich.console import Console

from cass_deploy.commands.common import (
    add_class_map,
    add_device,
    add_fields,
    add_force,
    add_gate_arguments,
    add_grid,
    add_model_source,
    add_providers,
    add_resize,
    add_seed,
    add_verify_hash,
    gates_from_args,
    model_source,
    positive_int,
    unit_interval,
)
from cass_deploy.config import FieldConfig
from cass_deploy.data.classes import parse_class_map
from cass_deploy.evaluation import validate as vr
from cass_deploy.evaluation.gates import raise_if_failed
from cass_deploy.evaluation.scoring import format_comparison_table
from cass_deploy.io_utils import Output, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="checkpoint (.pt), export directory, .onnx or .engine (a --parts full export, or any ONNX with "
        "num_dets, det_boxes, det_scores, det_classes and keep_mask); omit it with --model",
    )
    add_model_source(p)
    add_grid(p)
    p.add_argument("--data", default="synthetic", help="'synthetic' or a COCO / KITTI dataset directory")
    p.add_argument("--images", type=positive_int, default=64, help="images to evaluate (default 64)")
    p.add_argument(
        "--reference",
        default=None,
        help="dense (default when the source checkpoint is known), source, none, a model path, or the "
        "JSON of an earlier validate --json run (its reference), e.g. made on the workstation",
    )
    add_fields(p, "field split by box bottom edge as fractions of image height (default 0.5 0.75)")
    p.add_argument("--iou", type=unit_interval, default=0.5)
    p.add_argument("--score-thr", type=unit_interval, default=0.3, help="detection score threshold for recall")
    add_gate_arguments(
        p, max_recall_drop=None, drop_help="gate: max recall drop vs the reference, per field, on the 95%% upper bound"
    )
    p.add_argument("--min-map50", type=unit_interval, default=None)
    add_providers(p, "ONNX Runtime providers (cpu,cuda,tensorrt)")
    add_device(p, "torch device for checkpoints")
    add_resize(p)
    add_class_map(p)
    add_seed(p)
    p.add_argument("--json", dest="json_out", help="write the results and gate checks as JSON")
    add_force(p, "overwrite the --json file")
    add_verify_hash(p)


def status_label(check) -> str:
    """PASS / FAIL / INCONCLUSIVE (allowed or not) / SKIP, coloured for the console."""
    if check.status == "inconclusive":
        return "[yellow]INCONCLUSIVE (allowed)[/]" if check.passed else "[red]INCONCLUSIVE -> FAIL[/]"
    if check.status == "skipped":
        return "[dim]SKIP[/]"
    return "[green]PASS[/]" if check.passed else "[red]FAIL[/]"


def run(args: argparse.Namespace) -> int:
    json_out = Output(args.json_out, force=args.force, flag="--json").check() if args.json_out else None
    gates = gates_from_args(args, min_map50=args.min_map50)
    source = model_source(args, args.model)
    run = vr.run_validate(
        args.model,
        source=source,
        grid=args.grid,
        data=args.data,
        images=args.images,
        reference=args.reference,
        fields=FieldConfig(*args.fields),
        iou_thr=args.iou,
        score_thr=args.score_thr,
        gates=gates,
        providers=[s for s in args.providers.split(",") if s],
        device=args.device,
        resize=args.resize or False,
        seed=args.seed,
        class_map=parse_class_map(args.class_map),
    )
    console = Console(width=max(160, Console().width))
    console.print(format_comparison_table(run.result, run.reference, drops=run.drops))
    for n in run.notes:
        console.print(f"note: {n}")
    for c in run.checks:
        console.print(status_label(c) + " " + c.message)
    if json_out:
        with json_out.writing() as tmp:
            write_json(tmp, run.to_dict(), force=True)
    raise_if_failed(run.checks)
    return 0
