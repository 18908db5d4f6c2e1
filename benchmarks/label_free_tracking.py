"""Does the label-free drop track the labelled one? (issue 20, docs/label-free-validation.md)

On synthetic scenes ground truth exists, so both can be measured on the same images: for every
keep ratio x precision, export the checkpoint (``--parts full``), then
- labelled: ``validate --data synthetic --reference dense`` -> recall drop vs the dense model;
- label-free: ``validate --data synthetic --labels none --teacher dense`` -> agreement drop.
Prints one row per configuration and field with both drops, their 95 % paired-bootstrap
intervals and the agreement, then the rank correlation of the two drops over the configurations.

    python benchmarks/label_free_tracking.py --checkpoint runs/demo/train/best.pt --images 48
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from common import bench_parser

from cass_deploy.evaluation import validate as vr
from cass_deploy.evaluation.gates import Gates
from cass_deploy.evaluation.label_free import run_label_free
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest

GROUPS = ("near", "all")


def _ci(d) -> str:
    return "n/a" if d.point is None else f"{d.point:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]"


def _wilson(a) -> str:
    return "n/a" if a.recall is None else f"{a.recall:.3f} [{a.recall_lo:.3f}, {a.recall_hi:.3f}]"


def _rank(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    for k, i in enumerate(order):
        r[i] = float(k)
    return r


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (no ties expected among the few configurations)."""
    ra, rb = _rank(a), _rank(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")


def measure(ckpt: Path, keep: float, precision: str, images: int, work: Path, teacher_score: float = 0.5) -> dict:
    out = work / f"k{keep}-{precision}"
    run_export(
        ExportRequest(
            checkpoint=ckpt, out=out, parts="full", precision=precision, keep_ratio=keep, calib_images=16, force=True
        ),
        log=lambda s: None,
    )
    gates = Gates(resamples=2000)
    lab = vr.run_validate(str(out), data="synthetic", images=images, reference="dense", gates=gates)
    free = run_label_free(
        str(out), data="synthetic", images=images, teacher="dense", gates=gates, draw=0, teacher_score=teacher_score
    )
    row = {"keep": keep, "precision": precision}
    for g in GROUPS:
        a = free.result.by_field[g]
        row[g] = {
            "labelled_drop": lab.drops[g].to_dict(),
            "label_free_drop": free.drops[g].to_dict(),
            "agreement": [a.recall, a.recall_lo, a.recall_hi],
            "teacher_boxes": a.n_gt,
            "objects": lab.result.by_field[g].n_gt,
        }
        print(
            f"| {keep:g} | {precision} | {g} | {_ci(lab.drops[g])} | {_ci(free.drops[g])} | "
            f"{_wilson(a)} | {a.n_gt} / {lab.result.by_field[g].n_gt} |",
            flush=True,
        )
    return row


def main() -> None:
    ap = bench_parser(__doc__, threads=1, json=None)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--keep", default="0.25,0.5,0.75")
    ap.add_argument("--precision", default="fp32,int8")
    ap.add_argument("--teacher-score", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        "| keep | precision | field | labelled drop [95% CI] | label-free drop [95% CI] | agreement [95% CI] "
        "| teacher boxes / objects |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for keep in (float(k) for k in args.keep.split(",")):
            for prec in args.precision.split(","):
                rows.append(measure(args.checkpoint, keep, prec, args.images, Path(tmp), args.teacher_score))
    summary = {}
    for g in GROUPS:
        ok = [
            r
            for r in rows
            if r[g]["labelled_drop"]["point"] is not None and r[g]["label_free_drop"]["point"] is not None
        ]
        lab = [r[g]["labelled_drop"]["point"] for r in ok]
        free = [r[g]["label_free_drop"]["point"] for r in ok]
        if not ok:
            continue
        summary[g] = {"spearman": spearman(lab, free), "mean_gap": sum(f - b for f, b in zip(free, lab)) / len(ok)}
        print(
            f"{g}: Spearman rank correlation {summary[g]['spearman']:+.2f} over {len(ok)} configurations; "
            f"label-free minus labelled drop, mean {summary[g]['mean_gap']:+.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
