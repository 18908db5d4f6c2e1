"""Polygraphy's judge of an export: every output that carries values is compared, detections by matching.

``verify --save-polygraphy DIR`` copies this file to ``DIR/cass_deploy_judge.py``; the saved command
``polygraphy run model.engine --trt --load-inputs DIR/inputs.json --load-outputs DIR/outputs.json
--compare-func-script DIR/cass_deploy_judge.py`` makes Polygraphy call :func:`compare_outputs` on the
engine's outputs and the saved torch reference, iteration by iteration. Its settings are the ``judge``
entry of ``DIR/index.json`` (tolerances of the export's precision):

- element-wise outputs (``scores``, ``det_scores`` — sorted, so not tie-dependent — and the raw
  ``heatmap`` / ``box`` maps): ``stat(|got - ref| - (atol + rtol * |ref|)) <= 0`` with ``stat`` ``max``
  or ``median``;
- the detections (``num_dets``, ``det_boxes``, ``det_scores``, ``det_classes``), reported as
  ``det_boxes``: each of one side's best rows (the first ``top_share`` of the N rows, valid, scoring at
  least both sides' :func:`score_floor`) is matched to the other side's valid row of the same class with
  the highest IoU (>= ``iou``), both ways, so rows swapped by a tie in scores cost nothing. It passes
  when at least ``min_match`` of either side's best rows are matched and no matched pair's corners
  differ by more than ``atol_px`` pixels. Vectorised over images and rows (``[B, N, N]`` IoU).

Only numpy (and Polygraphy's logger when present) are imported, so the copy runs on a device where
cass-deploy is not installed. ``keep_idx`` / ``keep_mask`` depend on the order of equal scores and
stay out of Polygraphy's comparison (``accept`` compares them tie-aware).
"""

from __future__ import annotations

import importlib
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_RUNNER = "torch-reference"
DETECTIONS = ("num_dets", "det_boxes", "det_scores", "det_classes")
SETTINGS_FILE = "index.json"


def score_floor(out: Mapping[str, np.ndarray]) -> float:
    """The lowest score a model's outputs show it keeps: the smallest valid score over the images
    whose rows are not all used (there the export's score threshold, not N, cut the list); 0 when
    every image fills its N rows. A lower bound of an unknown export's threshold."""
    num = np.asarray(out["num_dets"]).reshape(-1)
    scores = np.asarray(out["det_scores"], np.float64)
    rows = np.arange(scores.shape[1])[None, :]
    valid = (rows < num[:, None]) & (num[:, None] < scores.shape[1])
    return float(scores[valid].min()) if valid.any() else 0.0


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of x1 y1 x2 y2 boxes ``a [B, Na, 4]`` and ``b [B, Nb, 4]`` -> ``[B, Na, Nb]``."""
    lt = np.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = np.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[..., 2:] - a[..., :2], 0, None).prod(-1)
    area_b = np.clip(b[..., 2:] - b[..., :2], 0, None).prod(-1)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _one_way(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], floor: float, top_share: float, iou: float):
    """a's best rows matched among b's valid rows -> (best rows [B, Na] bool, matched [B, Na] bool,
    largest corner difference of each match in pixels [B, Na])."""

    def rows(out):
        num = np.asarray(out["num_dets"]).reshape(-1)
        boxes = np.asarray(out["det_boxes"], np.float64)
        scores = np.asarray(out["det_scores"], np.float64)
        valid = (np.arange(boxes.shape[1])[None, :] < num[:, None]) & (scores >= floor)
        return boxes, np.asarray(out["det_classes"]).astype(np.int64), valid

    boxes_a, cls_a, valid_a = rows(a)
    boxes_b, cls_b, valid_b = rows(b)
    best_a = valid_a & (np.arange(boxes_a.shape[1])[None, :] < math.ceil(top_share * boxes_a.shape[1]))
    allowed = (cls_a[:, :, None] == cls_b[:, None, :]) & valid_b[:, None, :]
    overlap = np.where(allowed, pairwise_iou(boxes_a, boxes_b), -1.0)  # [B, Na, Nb]
    j = overlap.argmax(axis=2)  # [B, Na]
    matched = best_a & (np.take_along_axis(overlap, j[..., None], axis=2)[..., 0] >= iou)
    partner = np.take_along_axis(boxes_b, j[..., None].repeat(4, axis=2), axis=1)  # [B, Na, 4]
    return best_a, matched, np.abs(boxes_a - partner).max(axis=2)


def match_detections(
    ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], *, iou: float = 0.5, top_share: float = 0.5
) -> dict[str, float]:
    """SPEC 6b detections of a reference and a candidate (``num_dets [B, 1]``, ``det_boxes [B, N, 4]``,
    ``det_scores [B, N]``, ``det_classes [B, N]``) matched both ways (see the module docstring) ->
    ``found`` (share of the reference's best rows matched), ``back`` (the candidate's), ``max_px``
    (largest corner difference over matched pairs), the counts and the ``score_floor`` used."""
    floor = max(score_floor(ref), score_floor(got))
    best_r, hit_r, err_r = _one_way(ref, got, floor, top_share, iou)
    best_g, hit_g, err_g = _one_way(got, ref, floor, top_share, iou)
    errors = np.concatenate([err_r[hit_r], err_g[hit_g]])
    return {
        "found": float(hit_r.sum() / best_r.sum()) if best_r.any() else 1.0,
        "back": float(hit_g.sum() / best_g.sum()) if best_g.any() else 1.0,
        "max_px": float(errors.max()) if errors.size else 0.0,
        "n_reference": int(best_r.sum()),
        "n_candidate": int(best_g.sum()),
        "score_floor": floor,
    }


def boxes_pass(m: Mapping[str, float], settings: Mapping[str, float]) -> tuple[bool, str]:
    """Verdict of :func:`match_detections` against ``settings`` (``min_match``, ``atol_px``) and why."""
    ok = (
        m["found"] >= settings["min_match"]
        and m["back"] >= settings["min_match"]
        and m["max_px"] <= settings["atol_px"]
    )
    why = (
        f"det_boxes: {m['found']:.3f} of the reference's {m['n_reference']} best detections matched, "
        f"{m['back']:.3f} of the candidate's {m['n_candidate']} (need >= {settings['min_match']:g}); "
        f"largest corner error {m['max_px']:.3g} px (limit {settings['atol_px']:g})"
    )
    return ok, why


def elementwise_pass(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float, stat: str) -> tuple[bool, float]:
    """``stat`` (max / median) of ``|got - ref| - (atol + rtol |ref|)`` <= 0 -> (passed, that excess)."""
    g, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if g.shape != r.shape:
        return False, math.inf
    excess = np.abs(g - r) - (atol + rtol * np.abs(r))
    value = float(np.median(excess) if stat == "median" else excess.max()) if excess.size else 0.0
    return value <= 0.0, value


def judge(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], settings: Mapping[str, Any]):
    """Every value-carrying output of ``ref`` also in ``got`` -> ``OrderedDict[name, passed]`` and the
    lines saying why (``settings``: the ``judge`` entry of ``index.json``)."""
    verdicts: OrderedDict[str, bool] = OrderedDict()
    lines = []
    for name, (atol, rtol, stat) in settings["elementwise"].items():
        if name in ref and name in got:
            verdicts[name], excess = elementwise_pass(got[name], ref[name], atol, rtol, stat)
            lines.append(f"{name}: {stat} excess over atol {atol:g} + rtol {rtol:g} * |ref| = {excess:.3g}")
    if all(n in ref and n in got for n in DETECTIONS):
        box = settings["boxes"]
        m = match_detections(ref, got, iou=box["iou"], top_share=box["top_share"])
        verdicts["det_boxes"], why = boxes_pass(m, box)
        lines.append(why)
    return verdicts, lines


def compare_outputs(run_a: Any, run_b: Any) -> OrderedDict:
    """Polygraphy's ``--compare-func-script`` entry: two ``IterationResult`` s (one of them the saved
    ``torch-reference``) -> ``OrderedDict[output name, passed]``."""
    ref, got = (run_a, run_b) if getattr(run_a, "runner_name", "") == REFERENCE_RUNNER else (run_b, run_a)
    settings = json.loads(Path(__file__).with_name(SETTINGS_FILE).read_text())["judge"]
    verdicts, lines = judge(dict(ref), dict(got), settings)
    try:  # Polygraphy's logger when run by Polygraphy (imported here: this file must run without it)
        G_LOGGER = importlib.import_module("polygraphy.logger").G_LOGGER
        log = G_LOGGER.info if all(verdicts.values()) else G_LOGGER.error
    except ImportError:  # pragma: no cover - the judge is called by Polygraphy
        log = print
    for line in lines:
        log(f"cass-deploy judge | {line}")
    return verdicts
