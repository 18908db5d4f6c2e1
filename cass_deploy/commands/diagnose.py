"""``cass-deploy diagnose``: where the CASS loss and gradient go, per band, field, size, object."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from cass_deploy.commands.common import (
    add_data,
    add_fields,
    add_force,
    add_int_pair,
    add_model_source,
    add_out,
    add_overrides,
    add_seed,
    model_source,
)
from cass_deploy.evaluation import diagnostics as dg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        help="trained checkpoint: use its predictor's scores (default: uniform logits, "
        "which shows the loss's own weighting)",
    )
    add_model_source(p)
    add_data(p, "'toy' (built-in roadside-like boxes), 'synthetic' (generated scenes) or a dataset directory", "toy")
    p.add_argument("--num-images", type=int, default=2, help="images to analyse (default 2)")
    add_int_pair(p, "--image-size", ("H", "W"), "network input size (default: the checkpoint's, else 256 448)")
    p.add_argument(
        "--normalizations",
        default="patch,area,seed_object,object,object:1",
        help=f"comma list of {', '.join(dg.NORMS)} (object may be given as object:GAMMA)",
    )
    add_overrides(p, "CASS config override, e.g. --set expansion_ratio=0.3 (repeatable)")
    add_fields(p, "band split as fractions of image height (default 0.5 0.75)")
    p.add_argument("--keep-ratio", type=float, default=0.5, help="keep ratio of the keep-mask panel")
    add_seed(p)
    add_out(p, "runs/diagnose", "output directory (default runs/diagnose)")
    add_force(p, "overwrite an existing output directory")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of tables")


def run(args: argparse.Namespace) -> int:
    summary, breakdowns = dg.run_diagnose(
        args.out,
        checkpoint=args.checkpoint,
        source=model_source(args, args.checkpoint),
        data=args.data,
        num_images=args.num_images,
        image_size=args.image_size,
        normalizations=args.normalizations,
        overrides=args.overrides,
        fields=args.fields,
        keep_ratio=args.keep_ratio,
        seed=args.seed,
        force=args.force,
    )
    if args.json:
        print(
            json.dumps(
                {
                    **summary,
                    "breakdowns": [{k: v for k, v in b.items() if k != "objects"} for b in summary["breakdowns"]],
                },
                indent=2,
            )
        )
    else:
        console = Console(width=max(150, Console().width))
        console.print(dg.breakdown_table(breakdowns))
        console.print(f"wrote {args.out}/heatmaps/*.png and {args.out}/diagnostics.json")
    return 0
