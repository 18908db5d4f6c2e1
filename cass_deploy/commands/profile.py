"""``cass-deploy profile``: latency (and on Jetson, power) of a checkpoint or an exported model."""

from __future__ import annotations

import argparse

from rich.console import Console

from cass_deploy.commands.common import (
    add_device,
    add_force,
    add_model_source,
    add_out,
    add_providers,
    add_stopping_rule,
    add_verify_hash,
    keep_ratio_list,
    model_source,
    non_negative_int,
    options_from,
    positive_int,
)
from cass_deploy.profiling import latency as pf


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", default=None, help="checkpoint (.pt), export directory, .onnx or .engine; or give --model"
    )
    add_model_source(p)
    p.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "tensorrt"),
        default=None,
        help="for a checkpoint: torch (default) or onnxruntime (exported on the fly); "
        "an export is run by its own backend",
    )
    add_device(p, "cpu or cuda[:N] (torch / ONNX Runtime)")
    p.add_argument("--batch", type=positive_int, default=None, help="batch size (default 1, or the export's)")
    p.add_argument("--warmup", type=non_negative_int, default=10)
    p.add_argument("--iters", type=positive_int, default=50)
    p.add_argument("--sweep", type=keep_ratio_list, help="keep ratios to sweep, e.g. 0.25,0.5,0.75 (checkpoints only)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense baseline (checkpoints only)")
    p.add_argument(
        "--pruner",
        choices=("global", "band", "threshold"),
        default=None,
        help="pruner for the sweep (default: the checkpoint's)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (torch and ONNX Runtime)")
    p.add_argument(
        "--sequential",
        dest="interleave",
        action="store_false",
        help="time one configuration after another instead of interleaved in rounds (default: interleaved, "
        "ABCABC...; sequential gives power per configuration on a Jetson)",
    )
    p.add_argument(
        "--order",
        choices=("fixed", "rotate", "alternate"),
        default="fixed",
        help="interleaving order: fixed (ABC ABC ...), rotate (ABC BCA CAB ...) or alternate (ABC CBA ...)",
    )
    add_stopping_rule(p, "", until_ci=0.0, max_time=120.0)
    add_providers(p, "ONNX Runtime providers for an exported model")
    add_out(p, help="directory for profile.json and the sweep plot")
    add_force(p, "overwrite --out")
    add_verify_hash(p)


def run(args: argparse.Namespace) -> int:
    opts = options_from(
        pf.ProfileOptions,
        args,
        sweep=args.sweep or (),
        dense=not args.no_dense,
        pruner_mode=args.pruner,
        providers=tuple(s for s in args.providers.split(",") if s),
    )
    done = pf.profile_to(args.model, opts, source=model_source(args, args.model), out=args.out, force=args.force)
    console = Console(width=max(200, Console().width))
    console.print(pf.results_table(done.results, title=f"latency (ms) of {done.name}"))
    for w in done.env.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    if done.written:
        console.print("wrote " + " and ".join(done.written))
    return 0
