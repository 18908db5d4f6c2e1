"""``cass-deploy validate``: near-field vehicle recall and retention of the deployed model, gated."""

from __future__ import annotations

import argparse

from rich.console import Console

from cass_deploy.commands.common import add_device, add_fields, add_force, add_providers, add_seed
from cass_deploy.config import FieldConfig
from cass_deploy.evaluation import validate as vr
from cass_deploy.evaluation.gates import Gates, raise_if_failed
from cass_deploy.evaluation.scoring import format_comparison_table
from cass_deploy.io_utils import check_writable, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint (.pt), export directory, .onnx or .engine (a --parts full export)")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a COCO / KITTI dataset directory")
    p.add_argument("--images", type=int, default=64, help="images to evaluate (default 64)")
    p.add_argument(
        "--reference",
        default=None,
        help="dense (default when the source checkpoint is known), source, none, a model path, or the "
        "JSON of an earlier validate --json run (its reference), e.g. made on the workstation",
    )
    add_fields(p, "field split by box bottom edge as fractions of image height (default 0.5 0.75)")
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument("--score-thr", type=float, default=0.3, help="detection score threshold for recall")
    p.add_argument("--min-near-recall", type=float, default=None)
    p.add_argument("--max-recall-drop", type=float, default=None, help="max recall drop vs the reference, per field")
    p.add_argument("--min-near-retention", type=float, default=None)
    p.add_argument("--min-map50", type=float, default=None)
    p.add_argument(
        "--gate-on",
        choices=("bound", "point"),
        default="bound",
        help="bound (default): recall gates decide on the 95%% interval's bound (drop: upper bound <= "
        "the allowed drop; near recall: lower bound >= the minimum); point: on the point estimates",
    )
    p.add_argument(
        "--allow-inconclusive",
        action="store_true",
        help="pass a gate the set is too small to decide (reported as inconclusive; default: exit 1)",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the intervals (default 0.95)")
    p.add_argument(
        "--resamples", type=int, default=2000, help="paired bootstrap resamples for recall drops (default 2000)"
    )
    add_providers(p, "ONNX Runtime providers (cpu,cuda,tensorrt)")
    add_device(p, "torch device for checkpoints")
    p.add_argument(
        "--resize",
        action="store_true",
        help="resize dataset images to the model input (boxes scaled); without it a size mismatch is an error",
    )
    add_seed(p)
    p.add_argument("--json", dest="json_out", help="write the results and gate checks as JSON")
    add_force(p, "overwrite the --json file")


def status_label(check) -> str:
    """PASS / FAIL / INCONCLUSIVE (allowed or not) / SKIP, coloured for the console."""
    if check.status == "inconclusive":
        return "[yellow]INCONCLUSIVE (allowed)[/]" if check.passed else "[red]INCONCLUSIVE -> FAIL[/]"
    if check.status == "skipped":
        return "[dim]SKIP[/]"
    return "[green]PASS[/]" if check.passed else "[red]FAIL[/]"


def run(args: argparse.Namespace) -> int:
    if args.json_out:
        check_writable(args.json_out, args.force)
    gates = Gates(
        min_near_recall=args.min_near_recall,
        max_recall_drop=args.max_recall_drop,
        min_near_retention=args.min_near_retention,
        min_map50=args.min_map50,
        gate_on=args.gate_on,
        allow_inconclusive=args.allow_inconclusive,
        confidence=args.confidence,
        resamples=args.resamples,
        seed=args.seed,
    )
    run = vr.run_validate(
        args.model,
        data=args.data,
        images=args.images,
        reference=args.reference,
        fields=FieldConfig(*args.fields),
        iou_thr=args.iou,
        score_thr=args.score_thr,
        gates=gates,
        providers=[s for s in args.providers.split(",") if s],
        device=args.device,
        resize=args.resize,
        seed=args.seed,
    )
    console = Console(width=max(160, Console().width))
    console.print(format_comparison_table(run.result, run.reference, drops=run.drops))
    for c in run.checks:
        console.print(status_label(c) + " " + c.message)
    if args.json_out:
        write_json(args.json_out, run.to_dict(), force=args.force)
    raise_if_failed(run.checks)
    return 0
