"""Does the label-free drop track the labelled one? (issue 20, docs/label-free-validation.md)

On synthetic scenes ground truth exists, so both can be measured on the same images: for every
keep ratio x precision, export the checkpoint (``--parts full``, as the demo does), then
- labelled: what ``validate EXPORT --data synthetic --reference dense`` measures -> recall drop
  against the dense model (the checkpoint with the pruner off);
- label-free: what ``validate EXPORT --data synthetic --labels none --teacher dense`` measures ->
  agreement drop against the dense teacher.
Both use the library's own functions (``evaluate_deployed`` / ``compare`` and ``agreement_run``)
on the same scenes. A model's outputs on an image are computed once and reused (the same model
on the same image gives the same outputs): the dense model runs once for all configurations, each
export once for both measures. Prints one row per configuration and field with both drops, their
95 % paired-bootstrap intervals, whether the intervals overlap and the agreement (Wilson
interval), then per field the rank correlation of the two drops over the configurations.

    nice -n 10 python benchmarks/label_free_tracking.py --checkpoint runs/demo/train/best.pt --images 32 \\
        --json benchmarks/results/label_free_tracking.json
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import bench_parser

from cass_deploy.config import FieldConfig
from cass_deploy.data.frames import synthetic_frames
from cass_deploy.evaluation import validate as vr
from cass_deploy.evaluation.gates import Gates
from cass_deploy.evaluation.label_free import agreement_run
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest
from cass_deploy.model.interface import INPUT_NAME

GROUPS = ("near", "all")
HEADER = (
    "| keep | precision | teacher score | field | labelled drop [95% CI] | label-free drop [95% CI] | CIs overlap "
    "| agreement [95% CI] | teacher boxes / objects |\n|---|---|---|---|---|---|---|---|---|"
)


class Cached:
    """A runner that computes its outputs once per distinct input batch."""

    def __init__(self, runner) -> None:
        self.runner, self.memo = runner, {}

    def __enter__(self):
        self.runner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.runner.__exit__(*exc)

    def infer(self, feeds):
        x = feeds[INPUT_NAME]
        key = (x.shape, hashlib.sha1(x.tobytes()).hexdigest())
        if key not in self.memo:
            self.memo[key] = self.runner.infer(feeds)
        return self.memo[key]


def _ci(d: dict) -> str:
    return "n/a" if d["point"] is None else f"{d['point']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def overlap(a: dict, b: dict) -> bool | None:
    """Whether two drops' intervals ``{"lo", "hi"}`` share a point (None when one is missing)."""
    if a["point"] is None or b["point"] is None:
        return None
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when one side is constant."""
    ra, rb = (torch.tensor(v, dtype=torch.float64) for v in (a, b))
    ra = (ra[:, None] > ra[None]).sum(1) + ((ra[:, None] == ra[None]).sum(1) - 1) / 2
    rb = (rb[:, None] > rb[None]).sum(1) + ((rb[:, None] == rb[None]).sum(1) - 1) / 2
    ca, cb = ra - ra.mean(), rb - rb.mean()
    var = math.sqrt(float((ca * ca).sum() * (cb * cb).sum()))
    return float((ca * cb).sum()) / var if var else float("nan")


def table(rows: list[dict]) -> str:
    """The markdown table of ``rows`` (as in the JSON)."""
    lines = [HEADER]
    for r in rows:
        for g in GROUPS:
            c = r[g]
            a = c["agreement"]
            agree = "n/a" if a[0] is None else f"{a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}]"
            ov = {True: "yes", False: "no", None: "n/a"}[overlap(c["labelled_drop"], c["label_free_drop"])]
            lines.append(
                f"| {r['keep']:g} | {r['precision']} | {r['teacher_score']:g} | {g} | {_ci(c['labelled_drop'])} "
                f"| {_ci(c['label_free_drop'])} "
                f"| {ov} | {agree} | {c['teacher_boxes']} / {c['objects']} |"
            )
    return "\n".join(lines)


def summarise(rows: list[dict]) -> dict:
    """Per teacher score and field (``"0.5/near"``): the rank correlation of the two drops over the
    configurations, the mean of label-free minus labelled drop, and in how many configurations
    their intervals overlap."""
    out = {}
    for ts in dict.fromkeys(r["teacher_score"] for r in rows):
        for g in GROUPS:
            cells = [r[g] for r in rows if r["teacher_score"] == ts]
            ok = [c for c in cells if overlap(c["labelled_drop"], c["label_free_drop"]) is not None]
            if ok:
                out[f"{ts:g}/{g}"] = _summary(ok)
    return out


def _summary(cells: list[dict]) -> dict:
    """Rank correlation, mean gap and interval overlaps of the two drops over ``cells``."""
    lab = [c["labelled_drop"]["point"] for c in cells]
    free = [c["label_free_drop"]["point"] for c in cells]
    return {
        "configurations": len(cells),
        "spearman": spearman(lab, free),
        "mean_gap": sum(f - b for f, b in zip(free, lab)) / len(cells),
        "intervals_overlap": sum(bool(overlap(c["labelled_drop"], c["label_free_drop"])) for c in cells),
    }


def measure(ckpt: Path, keep: float, precision: str, out: Path, dense, batches, frames, opts: dict) -> list[dict]:
    """One configuration: export, then the labelled and (per teacher score) the label-free drop
    against ``dense``; one row per teacher score."""
    run_export(
        ExportRequest(
            checkpoint=ckpt, out=out, parts="full", precision=precision, keep_ratio=keep, calib_images=16, force=True
        ),
        log=lambda s: None,
    )
    deployed = vr.open_model(str(out))
    deployed.runner = Cached(deployed.runner)
    kw = dict(fields=opts["fields"], iou_thr=0.5, score_thr=0.3)
    lab = vr.evaluate_deployed(deployed, batches, **kw)
    lab_drops, _ = vr.compare(lab, opts["dense_result"], opts["gates"])
    rows = []
    for ts in opts["teacher_scores"]:
        free = agreement_run(deployed, "dense", dense, frames, teacher_score=ts, gates=opts["gates"], mode=None, **kw)
        row: dict = {"keep": keep, "precision": precision, "teacher_score": ts}
        for g in GROUPS:
            a = free.result.by_field[g]
            row[g] = {
                "labelled_drop": lab_drops[g].to_dict(),
                "label_free_drop": free.drops[g].to_dict(),
                "agreement": [a.recall, a.recall_lo, a.recall_hi],
                "teacher_boxes": a.n_gt,
                "objects": lab.by_field[g].n_gt,
            }
        rows.append(row)
    return rows


def main() -> None:
    ap = bench_parser(__doc__, threads=1, json=None)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--keep", default="0.25,0.5,0.75")
    ap.add_argument("--precision", default="fp32,int8")
    ap.add_argument("--teacher-score", default="0.5,0.3", help="comma list (default 0.5,0.3)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dense = vr.reference_model("dense", vr.open_model(str(args.checkpoint)))
    dense.runner = Cached(dense.runner)
    batches = vr.load_batches("synthetic", dense.image_size, args.images, seed=args.seed)
    frames = synthetic_frames(dense.image_size, args.images, args.seed)
    scores = [float(v) for v in args.teacher_score.split(",")]
    opts = dict(fields=FieldConfig(), gates=Gates(resamples=2000), teacher_scores=scores)
    opts["dense_result"] = vr.evaluate_deployed(dense, batches, fields=opts["fields"], iou_thr=0.5, score_thr=0.3)
    rows = []
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for keep in (float(k) for k in args.keep.split(",")):
            for prec in args.precision.split(","):
                out = Path(tmp) / f"k{keep}-{prec}"
                new = measure(args.checkpoint, keep, prec, out, dense, batches, frames, opts)
                rows += new
                print("\n".join(table(new).splitlines()[2:]), flush=True)
    summary = summarise(rows)
    for g, s in summary.items():
        print(
            f"teacher score {g}: Spearman rank correlation {s['spearman']:+.2f} over {s['configurations']} "
            f"configurations; intervals overlap in {s['intervals_overlap']}; "
            f"label-free minus labelled drop, mean {s['mean_gap']:+.3f}"
        )
    meta = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": hashlib.sha256(args.checkpoint.read_bytes()).hexdigest(),
        "images": args.images,
        "seed": args.seed,
        "teacher_scores": scores,
        "score_thr": 0.3,
        "resamples": 2000,
        "seconds": round(time.perf_counter() - t0, 1),
        "command": " ".join(["python"] + sys.argv),
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
