"""``cass-deploy tune``: the fastest keep ratio x precision on a backend that passes every gate (SPEC §7b)."""

from __future__ import annotations

import argparse

from rich.console import Console

from cass_deploy.commands.common import (
    add_class_map,
    add_fields,
    add_force,
    add_gate_arguments,
    add_model_source,
    add_out,
    add_providers,
    add_seed,
    add_sweep,
    gates_from_args,
    model_source,
    non_negative_float,
    non_negative_int,
    options_from,
    positive_int,
    sweep_from,
)
from cass_deploy.config import FieldConfig
from cass_deploy.data.classes import parse_class_map
from cass_deploy.errors import InputError
from cass_deploy.tuning import tune as tn


def _keeps(text: str) -> tuple:
    """``--keep``: keep ratios, each a number or a per-stage schedule ``0.7/0.5/0.3`` (SPEC 6c)."""
    try:
        return tuple(
            tuple(float(v) for v in x.split("/")) if "/" in x else float(x) for x in text.split(",") if x.strip()
        )
    except ValueError:
        raise InputError(
            f"--keep must be a comma list of keep ratios or per-stage schedules, e.g. 0.25,0.5 or 0.7/0.5/0.3; "
            f"got {text!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="trained checkpoint (.pt); omit it with --model")
    add_model_source(p)
    add_out(p, help="tune directory (resumable: run the same command again to continue)")
    p.add_argument(
        "--keep",
        default="0.25,0.5,0.75",
        help="keep ratios to try (default 0.25,0.5,0.75); a multi-stage model (SPEC 6c) takes per-stage "
        "schedules, e.g. 0.7/0.5/0.3,0.8/0.6/0.4",
    )
    p.add_argument("--precision", default="fp32", help="precisions to try, e.g. fp32,fp16,int8 (default fp32)")
    p.add_argument("--backend", choices=tn.BACKENDS, default="onnxruntime", help="runtime to export for and time on")
    p.add_argument(
        "--profile", default=None, help="deployment profile (name or YAML): target, input size, batch, pruner"
    )
    p.add_argument("--target", default=None, help="backend limits to check at export (see cass-deploy export)")
    p.add_argument("--pruner", dest="pruner_mode", choices=("global", "band", "threshold"), default=None)
    p.add_argument("--data", default="synthetic", help="'synthetic' or a COCO / KITTI dataset directory")
    p.add_argument("--images", type=positive_int, default=128, help="validation images (default 128)")
    p.add_argument("--verify-images", type=positive_int, default=8)
    p.add_argument("--calib-images", type=positive_int, default=16, help="int8 calibration images (default 16)")
    add_gate_arguments(
        p,
        max_recall_drop=0.05,
        drop_help="gate: recall drop vs the dense reference per field, on the 95%% upper bound (default 0.05)",
    )
    add_fields(p, "field split by box bottom edge as fractions of image height (default 0.5 0.75)")
    p.add_argument("--warmup", type=non_negative_int, default=5)
    p.add_argument("--rounds", type=positive_int, default=30, help="interleaved timing rounds (default 30)")
    p.add_argument("--order", choices=("fixed", "rotate"), default="fixed")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--quiet-wait",
        type=non_negative_float,
        default=20.0,
        metavar="SECONDS",
        help="on Ray, the timing waits at most this long for its node's CPUs to be idle (default 20; 0: at once)",
    )
    add_providers(p, "ONNX Runtime providers (cpu,cuda,tensorrt)")
    p.add_argument("--resize", action="store_true", help="resize dataset images to the model input")
    add_class_map(p)
    add_seed(p)
    add_sweep(p, "configuration")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_force(p, "start the tune directory again (default: resume it)")


def run(args: argparse.Namespace) -> int:
    gates = gates_from_args(args)
    source = model_source(args, args.model)
    opts = options_from(
        tn.TuneOptions,
        args,
        keep_ratios=_keeps(args.keep),
        precisions=tuple(p.strip() for p in args.precision.split(",") if p.strip()),
        gates=gates,
        fields=FieldConfig(*args.fields),
        providers=tuple(s for s in args.providers.split(",") if s),
        class_map=parse_class_map(args.class_map),
    )
    console = Console(width=max(160, Console().width))
    res = tn.run_tune(
        args.model,
        args.out,
        opts,
        model_source=source,
        force=args.force,
        progress=args.progress,
        sweep=sweep_from(args),
        log=console.print,
    )
    console.print(tn.tune_table(res))
    for n in res.notes:
        console.print(f"[yellow]note:[/] {n}")
    if res.recommended is not None:
        console.print(
            f"recommended: {res.recommended.label} -> {res.profile_yaml} "
            f"(cass-deploy export {args.model or '--model ' + source.spec + ' --weights ' + str(source.weights)} "
            f"--profile {res.profile_yaml} --out EXPORT_DIR)"
        )
    console.print(f"wrote {args.out}/tune.json, {args.out}/pareto.png")
    tn.raise_if_none_passed(res)
    return 0
