"""``cass-deploy diagnose``: where the CASS loss and gradient go, per band, field, size, object."""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console

from cass_deploy.cass.targets import grid_for
from cass_deploy.config import CassConfig, FieldConfig, apply_overrides, from_dict
from cass_deploy.data.factory import load_dataset
from cass_deploy.errors import ConfigError, InputError
from cass_deploy.evaluation import diagnostics as dg
from cass_deploy.io_utils import atomic_dir, check_writable
from cass_deploy.model.checkpoint import load_checkpoint

HELP = "CASS bias diagnostics: heat maps and loss/gradient share per band, field, size and object"

NORMS = ("patch", "area", "seed_object", "object")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="trained checkpoint: use its predictor's scores (default: uniform logits, "
                                        "which shows the loss's own weighting)")
    p.add_argument("--data", default="toy",
                   help="'toy' (built-in roadside-like boxes), 'synthetic' (generated scenes) or a dataset directory")
    p.add_argument("--num-images", type=int, default=2, help="images to analyse (default 2)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="network input size (default: the checkpoint's, else 256 448)")
    p.add_argument("--normalizations", default="patch,area,seed_object,object,object:1",
                   help=f"comma list of {', '.join(NORMS)} (object may be given as object:GAMMA)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="CASS config override, e.g. --set expansion_ratio=0.3 (repeatable)")
    p.add_argument("--fields", type=float, nargs=2, metavar=("FAR_MAX", "NEAR_MIN"), default=(0.5, 0.75),
                   help="band split as fractions of image height (default 0.5 0.75)")
    p.add_argument("--keep-ratio", type=float, default=0.5, help="keep ratio of the keep-mask panel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/diagnose", help="output directory (default runs/diagnose)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of tables")


def _configs(text: str, overrides: list[str]):

    base = apply_overrides({}, overrides)
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, gamma = item.partition(":")
        if name not in NORMS:
            raise ConfigError(f"unknown normalisation {name!r} in --normalizations; choose from {', '.join(NORMS)}")
        data = {**base, "normalization": name}
        if gamma:
            try:
                data["area_gamma"] = float(gamma)
            except ValueError:
                raise ConfigError(f"bad area gamma {gamma!r} in --normalizations item {item!r}") from None
        out.append(from_dict(CassConfig, data, prefix="cass."))
    if not out:
        raise ConfigError("--normalizations is empty")
    return out


def run(args: argparse.Namespace) -> int:

    check_writable(args.out, args.force)
    if args.num_images < 1:
        raise InputError(f"--num-images must be >= 1, got {args.num_images}")
    if not 0 < args.keep_ratio <= 1:
        raise InputError(f"--keep-ratio must be in (0, 1], got {args.keep_ratio}")
    cfgs = _configs(args.normalizations, args.overrides)
    fields = FieldConfig(*args.fields)

    model = None
    image_size = tuple(args.image_size) if args.image_size else None
    patch_size = 16
    if args.checkpoint:

        ckpt = load_checkpoint(args.checkpoint)
        model = ckpt.model.eval()
        if image_size and tuple(image_size) != tuple(model.image_size):
            raise InputError(f"--image-size {image_size} differs from the checkpoint's {tuple(model.image_size)}")
        image_size = tuple(model.image_size)
        patch_size = model.patch_size
    image_size = image_size or (256, 448)
    grid = grid_for(image_size, patch_size)

    images = None
    if args.data == "toy":
        boxes = [dg.toy_roadside_scene(image_size, seed=args.seed + i) for i in range(args.num_images)]
    else:

        ds = load_dataset(args.data, split="val", num_images=args.num_images, image_size=image_size, seed=args.seed)
        items = [ds[i] for i in range(min(args.num_images, len(ds)))]
        images = torch.stack([it["image"] for it in items])
        boxes = [it["boxes"] for it in items]
    P = grid[0] * grid[1]
    if model is not None:
        if images is None:
            raise InputError("--checkpoint needs images: use --data synthetic or a dataset directory")
        with torch.no_grad():
            logits = model(images)["scores"].double()
    else:
        logits = torch.zeros(len(boxes), P, dtype=torch.float64)

    keep = dg.keep_mask_topk(logits, args.keep_ratio)
    breakdowns = []
    with atomic_dir(args.out, force=args.force) as tmp:
        (tmp / "heatmaps").mkdir()
        for cfg in cfgs:
            bd, maps = dg.analyse(logits, boxes, grid, image_size, cfg, fields, patch_size)
            breakdowns.append(bd)
            tag = cfg.normalization + (f"_g{cfg.area_gamma:g}" if cfg.normalization == "object" else "")
            for i in range(len(boxes)):
                dg.save_heatmaps(tmp / "heatmaps" / f"{tag}_img{i}.png", {k: v[i] for k, v in maps.items()},
                                 keep[i], torch.as_tensor(boxes[i]).reshape(-1, 4), grid, image_size,
                                 f"CASS {tag}: image {i}", None if images is None else images[i])
        summary = {"image_size": list(image_size), "grid": list(grid), "fields": vars(fields),
                   "logits": "checkpoint" if model is not None else "uniform (0)",
                   "data": args.data, "breakdowns": [bd.to_dict() for bd in breakdowns]}
        (tmp / "diagnostics.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps({**summary, "breakdowns": [{k: v for k, v in b.items() if k != "objects"}
                                                     for b in summary["breakdowns"]]}, indent=2))
    else:
        console = Console(width=max(150, Console().width))
        console.print(dg.breakdown_table(breakdowns))
        console.print(f"wrote {args.out}/heatmaps/*.png and {args.out}/diagnostics.json")
    return 0
