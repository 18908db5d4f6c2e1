"""``cass-deploy validate``: near-field vehicle recall and retention of the deployed model, gated."""

from __future__ import annotations

import argparse

from rich.console import Console

from cass_deploy.commands.common import (
    adapter,
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
    open_unit,
    positive_float,
    positive_int,
    unit_interval,
)
from cass_deploy.config import FieldConfig
from cass_deploy.data.classes import parse_class_map
from cass_deploy.evaluation import label_free as lf
from cass_deploy.evaluation.dispatch import validate_to
from cass_deploy.evaluation.gates import raise_if_failed
from cass_deploy.evaluation.scoring import format_comparison_table


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
    p.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic', a COCO / KITTI / YOLO dataset directory, or (label-free, see --teacher) a folder "
        "of camera frames or a video file",
    )
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
    add_label_free_arguments(p)
    p.add_argument("--json", dest="json_out", help="write the results and gate checks as JSON")
    add_force(p, "overwrite the --json file")
    add_verify_hash(p)


def add_label_free_arguments(p: argparse.ArgumentParser) -> None:
    """Label-free validation: the teacher, its score threshold, video sampling, drawn frames."""
    g = p.add_argument_group("label-free validation (agreement with a teacher on unlabelled frames)")
    g.add_argument(
        "--teacher",
        default=None,
        help="the teacher whose detections are the pseudo ground truth: dense (the export's source with the "
        "pruner off; the default for unlabelled data), a checkpoint, an export directory, or an ONNX / engine "
        "with num_dets / det_boxes / det_scores / det_classes; giving it makes validation label-free",
    )
    g.add_argument("--teacher-model", metavar="SPEC", default=None, help="a --model SPEC as the teacher")
    g.add_argument("--teacher-weights", metavar="FILE", default=None, help="--teacher-model's weights")
    g.add_argument("--teacher-model-args", metavar="FILE|JSON", default=None, help="--teacher-model's arguments")
    g.add_argument(
        "--teacher-classes",
        default=None,
        help="the teacher's class names in id order when its file has none: coco, or a comma list",
    )
    g.add_argument(
        "--teacher-score",
        type=open_unit,
        default=0.5,
        help="teacher detections scoring at least this become pseudo ground truth (default 0.5)",
    )
    g.add_argument(
        "--labels",
        choices=("auto", "none"),
        default="auto",
        help="none: ignore the dataset's labels and validate label-free against the teacher",
    )
    g.add_argument("--every", type=positive_int, default=None, help="video: take every N-th frame")
    g.add_argument("--fps", type=positive_float, default=None, help="video: take this many frames a second")
    g.add_argument(
        "--draw", type=int, default=4, help="frames drawn for the report's camera-frames section (default 4)"
    )


def shared_options(args: argparse.Namespace, gates, source) -> dict:
    """The options labelled and label-free validation take alike."""
    return dict(
        images=args.images,
        fields=FieldConfig(*args.fields),
        iou_thr=args.iou,
        score_thr=args.score_thr,
        gates=gates,
        providers=[s for s in args.providers.split(",") if s],
        device=args.device,
        resize=args.resize or False,
        seed=args.seed,
        source=source,
        grid=args.grid,
    )


def finish(console: Console, run) -> int:
    """Print the notes and the gate checks, exit 1 on a failed gate."""
    for n in run.notes:
        console.print(f"note: {n}")
    for c in run.checks:
        console.print(status_label(c) + " " + c.message)
    raise_if_failed(run.checks)
    return 0


def status_label(check) -> str:
    """PASS / FAIL / INCONCLUSIVE (allowed or not) / SKIP, coloured for the console."""
    if check.status == "inconclusive":
        return "[yellow]INCONCLUSIVE (allowed)[/]" if check.passed else "[red]INCONCLUSIVE -> FAIL[/]"
    if check.status == "skipped":
        return "[dim]SKIP[/]"
    return "[green]PASS[/]" if check.passed else "[red]FAIL[/]"


def run(args: argparse.Namespace) -> int:
    gates = gates_from_args(args, min_map50=args.min_map50)
    teacher_source = (
        adapter.source_from(None, args.teacher_model, args.teacher_weights, args.teacher_model_args)
        if args.teacher_model
        else None
    )
    run = validate_to(
        args.model,
        data=args.data,
        json_out=args.json_out,
        force=args.force,
        teacher_source=teacher_source,
        label_free=dict(
            teacher_names=lf.teacher_classes(args.teacher_classes),
            teacher_score=args.teacher_score,
            every=args.every,
            fps=args.fps,
            draw=max(0, args.draw),
        ),
        labels=args.labels,
        reference=args.reference,
        teacher=args.teacher,
        class_map=parse_class_map(args.class_map),
        **shared_options(args, gates, model_source(args, args.model)),
    )
    console = Console(width=max(160, Console().width))
    if isinstance(run, lf.LabelFreeRun):
        console.print(format_comparison_table(run.result, run.reference, drops=run.drops, measure=run.measure))
        frames = run.frames
        console.print(
            f"{frames['n_frames']} frames of {frames['source']}; teacher boxes scoring >= {run.teacher_score:g}"
        )
        for f in frames["failures"]:
            console.print(f"[yellow]frame {f['frame']} did not decode:[/] {f['error']}")
    else:
        console.print(format_comparison_table(run.result, run.reference, drops=run.drops))
    return finish(console, run)
