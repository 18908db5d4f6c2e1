"""Recall by field of the reference detector, dense and pruned (keep 0.5 and 0.25), with Wilson
95 % intervals, and its curve against training minutes — in one run.

    python benchmarks/detector_recall.py [--config configs/demo.yaml] [--set KEY=VALUE ...]
        [--val-images 256] [--keep-ratios 0.5,0.25] [--out runs/detector-recall] [--json FILE]
    python benchmarks/detector_recall.py --checkpoint runs/.../last.pt   # evaluate only

Trains the config (as ``cass-deploy train`` would: same data, seed and schedule) and after every
epoch evaluates the weights on ``--val-images`` synthetic validation scenes (split seed 0) dense
(pruner off) and pruned at each keep ratio (same weights, pruner swapped; the model was trained
at its config's keep ratio). Training minutes (wall) and training CPU seconds exclude this
evaluation; on a shared machine the CPU seconds are the better measure of cost (uncontended wall
lies between CPU s / threads and CPU s). Prints the curve (recall
by field and mAP@0.5 against training minutes), then the final table with intervals and the
decode's cap: the recall of the head's own decode fed a perfect heat map with exact boxes, and an
upper bound on it (``evaluation.diagnostics.decode_limits``) — what no training budget exceeds.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import common
import torch  # noqa: E402

from cass_deploy.config import FIELDS  # noqa: E402
from cass_deploy.evaluation.diagnostics import decode_limits, oracle_detections  # noqa: E402
from cass_deploy.evaluation.metrics import map50  # noqa: E402
from cass_deploy.io_utils import write_json  # noqa: E402
from cass_deploy.model.checkpoint import load_checkpoint  # noqa: E402
from cass_deploy.training.recall import evaluate_with_hits, field_recall, format_recall  # noqa: E402
from cass_deploy.training.train import build_datasets, load_train_config, make_loader, train  # noqa: E402


def evaluate_all(model, batches, fields, keep_ratios, score_thr):
    """{"dense": entry, "keep 0.5": entry, ...}; entry = recall per field with intervals + mAP."""
    out = {}
    variants = [("dense", model.with_pruner(mode="none"))]
    if model.pruner_mode != "none":
        variants += [(f"keep {r:g}", model.with_pruner(keep_ratio=r)) for r in keep_ratios]
    else:  # a dense-trained model: prune with the global top-k of its (untrained) predictor
        variants += [(f"keep {r:g}", model.with_pruner(mode="global", keep_ratio=r)) for r in keep_ratios]
    for name, m in variants:
        res, hits, totals = evaluate_with_hits(m, batches, fields, score_thr, name=name)
        out[name] = {"recall": field_recall(hits, totals), "map50": res.map50}
    return out


def _cap(v: dict) -> str:
    text = f"{v['oracle_recall']:.3f} (<= {v['bound']:.3f})"
    return f"{text:>21s}"


def row(minutes, epoch, entry):
    rec = entry["recall"]
    return (
        f"{minutes:6.2f} {epoch:5d}  "
        + "  ".join(f"{rec[f]['recall']:.3f}" if rec[f]["recall"] is not None else "  -  " for f in FIELDS)
        + f"  {entry['map50']:.3f}"
    )


def main() -> int:
    ap = common.bench_parser(__doc__, threads=2, json=None)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--checkpoint", default=None, help="evaluate this checkpoint instead of training")
    ap.add_argument("--val-images", type=int, default=256)
    ap.add_argument("--keep-ratios", default="0.5,0.25")
    ap.add_argument("--curve-keep", action="store_true", help="also evaluate pruned models at every epoch")
    ap.add_argument("--out", default="runs/detector-recall")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep = [float(v) for v in args.keep_ratios.split(",") if v.strip()]
    cfg = load_train_config(args.config, args.overrides)
    # the trainer's own per-epoch evaluation keeps the config's (small) set; the curve uses its own
    _, val = build_datasets(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_images=args.val_images)))
    batches = list(make_loader(val, cfg.batch_size, shuffle=False, seed=0))
    curve = []
    t0 = time.perf_counter()
    cpu0 = time.process_time()

    cpu = {"train": 0.0, "mark": time.process_time()}

    def on_epoch(epoch, model, record):
        # process CPU seconds of training (the training's own per-epoch evaluation included,
        # this benchmark's evaluation not): the contention-free measure of the training cost
        cpu["train"] += time.process_time() - cpu["mark"]
        ev = evaluate_all(model, batches, cfg.fields, keep if args.curve_keep else [], cfg.eval_score_thr)
        minutes = record["train_seconds"] / 60
        curve.append({"epoch": epoch + 1, "train_minutes": minutes, "train_cpu_seconds": cpu["train"], **ev})
        print(row(minutes, epoch + 1, ev["dense"]) + f"   {cpu['train']:6.0f}", flush=True)
        cpu["mark"] = time.process_time()

    if args.checkpoint:
        model = load_checkpoint(args.checkpoint).model
        info = {"checkpoint": args.checkpoint, "config": args.config, "overrides": args.overrides}
    else:
        print(
            f"training {args.config} {' '.join(args.overrides)} ({cfg.epochs} epochs, {cfg.data.train_images} scenes)"
        )
        head = f"(dense, score >= {cfg.eval_score_thr:g}, IoU 0.5)   train CPU s"
        print(f"  min epoch    far    mid   near  mAP@0.5   {head}")
        res = train(cfg, Path(args.out), force=True, progress=False, log=lambda s: None, on_epoch=on_epoch)
        model = load_checkpoint(res.last_path).model
        info = {
            "config": args.config,
            "overrides": args.overrides,
            "train_seconds": res.history[-1]["train_seconds"] if res.history else None,
        }
    final = evaluate_all(model, batches, cfg.fields, keep, cfg.eval_score_thr)
    what = f"{args.checkpoint}" if args.checkpoint else "last epoch"
    print(f"\nrecall by field (Wilson 95 %), {len(val)} val scenes of seed {cfg.data.seed}, {what}")
    print(f"{'model':<10s} " + " ".join(f"{f:>21s}" for f in FIELDS) + "  mAP@0.5")
    for name, e in final.items():
        print(
            f"{name:<10s} " + " ".join(f"{format_recall(e['recall'][f]):>21s}" for f in FIELDS) + f"  {e['map50']:.3f}"
        )
    gt_boxes = [b for batch in batches for b in batch["boxes"]]
    gt_labels = [x for batch in batches for x in batch["labels"]]
    head = (model.image_size, model.cfg.head_size, model.cfg.num_classes)
    lim = decode_limits(gt_boxes, gt_labels, *head, cfg.fields, method=model.cfg.decode)
    oracle = oracle_detections(gt_boxes, gt_labels, *head, method=model.cfg.decode)
    lim["map50"] = map50(oracle, [{"boxes": b, "labels": x} for b, x in zip(gt_boxes, gt_labels)], head[2])["map50"]
    print(
        f"{'oracle':<10s} "
        + " ".join(_cap(lim[f]) for f in FIELDS)
        + f"  {lim['map50']:.3f}  (decode cap: a perfect heat map with exact boxes through this head's decode; bound)"
    )
    wall, cpu_total = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"[wall {wall:.0f} s, process CPU {cpu_total:.0f} s, load average {os.getloadavg()[0]:.1f}]")
    if args.json:
        write_json(
            args.json,
            {**info, "val_images": len(val), "curve": curve, "final": final, "decode_limits": lim},
            force=True,
        )
    return 0


if __name__ == "__main__":
    common.run_main(main)
