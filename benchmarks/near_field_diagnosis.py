"""Why does the reference detector miss vehicles? One run prints, per field (far / mid / near):

- recall at IoU 0.5 at the training-evaluation score threshold and at lower decode thresholds;
- every missed vehicle classified as a **heat-map miss** (no 3x3 peak >= threshold whose cell
  centre lies inside the box; split into "weak" — no cell of the box reaches the threshold — and
  "suppressed" — a cell does, but the max-pool kept a stronger neighbour outside the box), a
  **box-regression miss** (a peak inside the box, but its box has IoU < 0.5; with the IoU
  of the box regressed at the GT centre cell, the "oracle peak"), or a **matching miss** (a good
  box taken by another GT);
- recall of truncated vehicles (cut by the image border) against whole ones, by class and by
  box height, and duplicate peaks per vehicle;
- the training targets of each field: Gaussian radius and regression cells per object, whether the
  target peak lies inside the (clipped) box, and each field's share of the heat-map loss's
  positive cells;
- what the decode can find at all: upper bounds on recall from one box per head cell and one
  3x3 peak per 2x2 block of cells per class, and the recall of the decode fed an oracle heat map
  with the exact boxes (``evaluation.diagnostics.decode_limits``);
- the effective receptive field: for a sample of vehicles, the share of the input-gradient
  mass of the heat logit at the GT centre cell that falls inside the vehicle's box, and the
  radius holding half of it, against the box size.

    python benchmarks/near_field_diagnosis.py CHECKPOINT [--images 256] [--json out.json]

Counts carry Wilson 95 % intervals. Evaluated dense (pruner off): this is the detector's own
competence, before any pruning.
"""

from __future__ import annotations

import math
import time

import common
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cass_deploy.config import FIELDS, FieldConfig  # noqa: E402
from cass_deploy.evaluation.diagnostics import decode_limits  # noqa: E402
from cass_deploy.evaluation.metrics import box_iou, field_of, greedy_match  # noqa: E402
from cass_deploy.evaluation.stats import wilson_interval  # noqa: E402
from cass_deploy.evaluation.validate import load_batches  # noqa: E402
from cass_deploy.io_utils import write_json  # noqa: E402
from cass_deploy.model.checkpoint import load_checkpoint  # noqa: E402
from cass_deploy.model.head import decode, detection_targets, gaussian_radius  # noqa: E402

IOU = 0.5
CLASS_NAMES = ("car", "truck", "bus")


def limits_of(model, batches, fields: FieldConfig) -> dict[str, dict[str, float]]:
    """:func:`decode_limits` of the reference head on these batches' ground truth."""
    boxes = [b for batch in batches for b in batch["boxes"]]
    labels = [x for batch in batches for x in batch["labels"]]
    cfg = model.cfg
    return decode_limits(boxes, labels, model.image_size, cfg.head_size, cfg.num_classes, fields, method=cfg.decode)


def rate(mask: torch.Tensor, of: torch.Tensor | None = None) -> str:
    sel = mask if of is None else mask[of]
    n, k = int(sel.numel()), int(sel.sum())
    if n == 0:
        return "   -  (0)"
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.3f} [{lo:.2f}, {hi:.2f}] ({k}/{n})"


@torch.no_grad()
def per_object(model, batches, thresholds: tuple[float, ...], fields: FieldConfig) -> dict[str, torch.Tensor]:
    """One row per GT vehicle: geometry, matches per threshold, miss class inputs."""
    H, W = model.image_size
    s = model.head_stride
    rows: dict[str, list[torch.Tensor]] = {}

    def add(**kw):
        for k, v in kw.items():
            rows.setdefault(k, []).append(v)

    for batch in batches:
        out = model(batch["images"])
        heat = torch.sigmoid(out["heatmap"]).amax(1)  # [B, Hh, Wh] class-agnostic
        peak = heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]
        dets = decode(out, (H, W), score_thresh=min(thresholds), max_dets=100, **model.decode_settings)
        hh, wh = heat.shape[1:]
        cy = (torch.arange(hh) + 0.5) * s
        cx = (torch.arange(wh) + 0.5) * s
        for b, (gt, lab) in enumerate(zip(batch["boxes"], batch["labels"])):
            if gt.numel() == 0:
                continue
            m = gt.shape[0]
            d = dets[b]
            iou = box_iou(d["boxes"], gt)  # [D, M]
            # matched per threshold: greedy in score order (same as the evaluator, class-agnostic)
            for t in thresholds:
                keep = d["scores"] >= t
                add(**{f"match@{t:g}": _greedy(iou[keep])})
            # cells inside each GT box: [M, Hh, Wh]
            inside = (
                (cx[None, None, :] >= gt[:, 0, None, None])
                & (cx[None, None, :] <= gt[:, 2, None, None])
                & (cy[None, :, None] >= gt[:, 1, None, None])
                & (cy[None, :, None] <= gt[:, 3, None, None])
            )
            hb = heat[b][None].expand(m, -1, -1)
            max_heat_in = torch.where(inside, hb, torch.zeros_like(hb)).flatten(1).amax(1)
            # decoded peaks (score >= main threshold) whose cell centre lies in the box
            t0 = thresholds[0]
            pk = peak[b][None] & (hb >= t0) & inside  # [M, Hh, Wh]
            n_peaks = pk.flatten(1).sum(1)
            # best IoU among detections >= t0 whose cell lies in the box
            ok = d["scores"] >= t0
            best_any = torch.where(ok[:, None], iou, torch.zeros_like(iou)).amax(0) if len(ok) else torch.zeros(m)
            # oracle: the box regressed at the GT centre cell
            ci = ((gt[:, 1] + gt[:, 3]) / 2 / s).floor().clamp(0, hh - 1).long()
            cj = ((gt[:, 0] + gt[:, 2]) / 2 / s).floor().clamp(0, wh - 1).long()
            ltrb = out["box"][b][:, ci, cj].T  # [M, 4]
            px, py = cx[cj], cy[ci]
            obox = torch.stack([px - ltrb[:, 0], py - ltrb[:, 1], px + ltrb[:, 2], py + ltrb[:, 3]], 1)
            obox = torch.stack(
                [obox[:, 0].clamp(0, W), obox[:, 1].clamp(0, H), obox[:, 2].clamp(0, W), obox[:, 3].clamp(0, H)], 1
            )
            oracle = box_iou(obox, gt).diagonal()
            add(
                field=field_of(gt, H, fields),
                label=lab.long(),
                w=gt[:, 2] - gt[:, 0],
                h=gt[:, 3] - gt[:, 1],
                trunc_bottom=gt[:, 3] >= H - 0.5,
                trunc_side=(gt[:, 0] <= 0.5) | (gt[:, 2] >= W - 0.5),
                max_heat_in=max_heat_in,
                centre_heat=heat[b][ci, cj],
                n_peaks=n_peaks,
                best_iou=best_any,
                oracle_iou=oracle,
            )
    return {k: torch.cat(v) for k, v in rows.items()}


def _greedy(iou: torch.Tensor) -> torch.Tensor:
    if iou.shape[0] == 0:
        return torch.zeros(iou.shape[1], dtype=torch.bool)
    return greedy_match(iou, IOU) >= 0


def target_stats(model, batches, fields: FieldConfig) -> dict[str, dict[str, float]]:
    """Per field: Gaussian radius (cells), regression cells per object, positive heat cells."""
    H, W = model.image_size
    hh, wh = model.cfg.head_size
    out: dict[str, list] = {f: [] for f in FIELDS}
    for batch in batches[:8]:
        t = detection_targets(batch["boxes"], batch["labels"], (H, W), (hh, wh), model.cfg.num_classes)
        for b, gt in enumerate(batch["boxes"]):
            if gt.numel() == 0:
                continue
            f = field_of(gt, H, fields)
            r = gaussian_radius((gt[:, 3] - gt[:, 1]) / 8, (gt[:, 2] - gt[:, 0]) / 8).floor().clamp(min=0)
            # regression cells per object: cells whose assigned box equals this GT
            wgt = t["box_weight"][b] > 0
            ltrb = t["box"][b]  # [4, Hh, Wh]
            cy = (torch.arange(hh) + 0.5) * 8
            cx = (torch.arange(wh) + 0.5) * 8
            rec = torch.stack(
                [cx[None] - ltrb[0], cy[:, None] - ltrb[1], cx[None] + ltrb[2], cy[:, None] + ltrb[3]], -1
            )  # [Hh, Wh, 4]
            eq = (rec[None] - gt[:, None, None, :]).abs().amax(-1) < 1e-3  # [M, Hh, Wh]
            cells = (eq & wgt[None]).flatten(1).sum(1)
            for k, name in enumerate(FIELDS):
                sel = f == k
                out[name].append(torch.stack([r[sel], cells[sel].float()], 1))
    res = {}
    for name in FIELDS:
        if not out[name]:
            continue
        a = torch.cat(out[name])
        res[name] = {
            "objects": int(a.shape[0]),
            "radius_cells_median": float(a[:, 0].median()),
            "regression_cells_median": float(a[:, 1].median()),
            "share_of_positive_peaks": 0.0,
        }
    total = sum(v["objects"] for v in res.values())
    for v in res.values():
        v["share_of_positive_peaks"] = v["objects"] / max(total, 1)
    return res


def receptive_field(model, batches, fields: FieldConfig, per_field: int = 12) -> dict[str, dict[str, float]]:
    """Share of |d heat_logit(GT centre cell) / d input| inside the box, and the half-mass radius."""
    H, W = model.image_size
    s = model.head_stride
    res: dict[str, list[tuple[float, float, float]]] = {f: [] for f in FIELDS}
    yy = torch.arange(H).float()[:, None] + 0.5
    xx = torch.arange(W).float()[None] + 0.5
    for batch in batches:
        if all(len(v) >= per_field for v in res.values()):
            break
        for b, gt in enumerate(batch["boxes"]):
            f = field_of(gt, H, fields)
            for k, name in enumerate(FIELDS):
                idx = (f == k).nonzero().flatten()
                if len(res[name]) >= per_field or idx.numel() == 0:
                    continue
                box = gt[int(idx[0])]
                img = batch["images"][b : b + 1].clone().requires_grad_(True)
                out = model(img)
                ci = int(((box[1] + box[3]) / 2 / s).floor().clamp(0, out["heatmap"].shape[2] - 1))
                cj = int(((box[0] + box[2]) / 2 / s).floor().clamp(0, out["heatmap"].shape[3] - 1))
                out["heatmap"][0, :, ci, cj].max().backward()
                g = img.grad[0].abs().sum(0)  # [H, W]
                g = g / g.sum().clamp(min=1e-12)
                inside = (xx >= box[0]) & (xx <= box[2]) & (yy >= box[1]) & (yy <= box[3])
                cxp, cyp = (cj + 0.5) * s, (ci + 0.5) * s
                dist = torch.sqrt((xx - cxp) ** 2 + (yy - cyp) ** 2)
                order = torch.argsort(dist.flatten())
                cum = torch.cumsum(g.flatten()[order], 0)
                r50 = float(dist.flatten()[order][int(torch.searchsorted(cum, torch.tensor(0.5)))])
                half_size = 0.5 * math.sqrt(float((box[2] - box[0]) * (box[3] - box[1])))
                res[name].append((float(g[inside].sum()), r50, half_size))
    out = {}
    for name, v in res.items():
        if v:
            t = torch.tensor(v)
            out[name] = {
                "n": len(v),
                "grad_share_inside_box": float(t[:, 0].median()),
                "half_mass_radius_px": float(t[:, 1].median()),
                "box_half_size_px": float(t[:, 2].median()),
            }
    return out


def main() -> int:
    ap = common.bench_parser(__doc__, threads=2, json=None)
    ap.add_argument("checkpoint")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="val split seed (default 0, the training default)")
    ap.add_argument("--thresholds", default="0.3,0.1,0.05", help="score thresholds; the first is the main one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ck = load_checkpoint(args.checkpoint, pruner_mode="none")
    model = ck.model.eval()
    fields = FieldConfig()
    thresholds = tuple(float(t) for t in args.thresholds.split(","))
    batches = load_batches("synthetic", model.image_size, args.images, seed=args.seed)
    r = per_object(model, batches, thresholds, fields)
    t_main = thresholds[0]
    hit = r[f"match@{t_main:g}"]
    heat_weak = ~hit & (r["max_heat_in"] < t_main)
    suppressed = ~hit & (r["max_heat_in"] >= t_main) & (r["n_peaks"] == 0)
    box_miss = ~hit & (r["n_peaks"] > 0) & (r["best_iou"] < IOU)
    match_miss = ~hit & ~heat_weak & ~suppressed & ~box_miss
    print(f"checkpoint {args.checkpoint} (epoch {ck.epoch}), {args.images} val scenes, dense, IoU {IOU}")
    report: dict = {"checkpoint": str(args.checkpoint), "images": args.images, "fields": {}}
    for k, name in enumerate(FIELDS):
        sel = r["field"] == k
        n = int(sel.sum())
        print(
            f"\n== {name} field: {n} vehicles; median box {float(r['w'][sel].median()):.0f} x "
            f"{float(r['h'][sel].median()):.0f} px"
        )
        for t in thresholds:
            print(f"  recall @ score >= {t:<4g}: {rate(r[f'match@{t:g}'], sel)}")
        miss = sel & ~hit
        nm = int(miss.sum())
        print(f"  misses @ {t_main:g}: {nm}")
        for label, mask in (
            ("heat-map miss, weak (no cell of the box >= thr)", heat_weak),
            ("heat-map miss, suppressed by a neighbour peak", suppressed),
            ("box-regression miss (peak in box, IoU < 0.5)", box_miss),
            ("matching miss (good box taken by another GT)", match_miss),
        ):
            print(f"    {label:<50s} {rate(mask, miss)}")
        if nm:
            print(
                f"    median max heat in missed boxes {float(r['max_heat_in'][miss].median()):.3f}, "
                f"at the GT centre cell {float(r['centre_heat'][miss].median()):.3f}"
            )
            print(
                f"    oracle-peak IoU (box at GT centre cell) of misses: median "
                f"{float(r['oracle_iou'][miss].median()):.3f}; >= 0.5 for {rate(r['oracle_iou'] >= IOU, miss)}"
            )
        print(f"  oracle-peak IoU >= 0.5, all vehicles of the field: {rate(r['oracle_iou'] >= IOU, sel)}")
        print(f"  duplicate peaks (>1 peak >= thr inside the box), of found: {rate(r['n_peaks'] > 1, sel & hit)}")
        tb, ts = r["trunc_bottom"], r["trunc_side"]
        print(
            f"  recall, cut by the bottom edge: {rate(hit, sel & tb)}; by a side: {rate(hit, sel & ts & ~tb)}; "
            f"whole: {rate(hit, sel & ~tb & ~ts)}"
        )
        print(
            "  recall by class: "
            + "; ".join(f"{c} {rate(hit, sel & (r['label'] == i))}" for i, c in enumerate(CLASS_NAMES))
        )
        edges = [0, 16, 32, 64, 128, 256, 10000]
        parts = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = sel & (r["h"] >= lo) & (r["h"] < hi)
            if int(m.sum()):
                parts.append(f"h {lo}-{hi if hi < 10000 else 'inf'}: {rate(hit, m)}")
        print("  recall by box height (px): " + "; ".join(parts))
        report["fields"][name] = {
            "n": n,
            **{f"recall@{t:g}": float(r[f"match@{t:g}"][sel].float().mean()) for t in thresholds},
            "misses": nm,
            "heat_weak": int((heat_weak & sel).sum()),
            "suppressed": int((suppressed & sel).sum()),
            "box_miss": int((box_miss & sel).sum()),
            "match_miss": int((match_miss & sel).sum()),
            "oracle_iou_ge_05": float((r["oracle_iou"][sel] >= IOU).float().mean()),
            "recall_trunc_bottom": float(hit[sel & tb].float().mean()) if int((sel & tb).sum()) else None,
            "recall_whole": float(hit[sel & ~tb & ~ts].float().mean()) if int((sel & ~tb & ~ts).sum()) else None,
        }
    ts = target_stats(model, batches, fields)
    stride, dec = model.cfg.head_stride, model.cfg.decode
    print(f"\n== training targets (CenterNet heat map at stride {stride}), first 64 scenes")
    for name, v in ts.items():
        print(
            f"  {name}: {v['objects']} objects, Gaussian radius median {v['radius_cells_median']:.0f} cells, "
            f"regression cells per object median {v['regression_cells_median']:.0f}, "
            f"share of heat-map positives (loss terms) {v['share_of_positive_peaks']:.3f}"
        )
    lim = limits_of(model, batches, fields)
    print(f"\n== what the decode can find at all (stride-{stride} cells, one box per cell, decode {dec!r})")
    for name, v in lim.items():
        print(
            f"  {name}: {v['objects']} vehicles; upper bound on recall {v['bound']:.3f} (one per cell "
            f"{v['one_per_cell']:.3f}, one peak per 2x2 block {v['one_peak_per_block']:.3f}); an oracle heat map "
            f"with exact boxes finds {rate(torch.arange(v['objects']) < v['oracle_found'])}"
        )
    report["decode_limits"] = lim
    rf = receptive_field(model, batches, fields)
    print("\n== effective receptive field of the heat logit at the GT centre cell (median over vehicles)")
    for name, v in rf.items():
        print(
            f"  {name}: n={v['n']}, input-gradient mass inside the box {v['grad_share_inside_box']:.2f}, "
            f"half-mass radius {v['half_mass_radius_px']:.0f} px vs box half-size {v['box_half_size_px']:.0f} px"
        )
    report["targets"], report["receptive_field"] = ts, rf
    print(f"\n[{time.perf_counter() - t0:.0f} s]")
    if args.json:
        write_json(args.json, report, force=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
