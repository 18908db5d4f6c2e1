"""The Polygraphy judge's matched comparison of SPEC 6b detections (cass_deploy/evaluation/polygraphy_judge.py),
on hand-made detections whose answers are known."""

from __future__ import annotations

import numpy as np

from cass_deploy.evaluation.polygraphy_judge import boxes_pass, judge, match_detections, pairwise_iou
from cass_deploy.evaluation.reference_outputs import judge_settings

FP32 = judge_settings("fp32", ["num_dets", "det_boxes", "det_scores", "det_classes", "scores"])


def _dets(boxes, scores, classes, n_rows=6):
    """One image's detections padded to ``n_rows`` -> SPEC 6b arrays with a batch of 1."""
    k = len(boxes)
    out = {
        "num_dets": np.array([[k]], np.int32),
        "det_boxes": np.zeros((1, n_rows, 4), np.float32),
        "det_scores": np.zeros((1, n_rows), np.float32),
        "det_classes": np.zeros((1, n_rows), np.int32),
    }
    out["det_boxes"][0, :k], out["det_scores"][0, :k], out["det_classes"][0, :k] = boxes, scores, classes
    return out


BOXES = [[10, 10, 50, 40], [60, 10, 100, 40], [10, 60, 30, 90]]
REF = _dets(BOXES, [0.9, 0.9, 0.5], [0, 0, 1])


def test_pairwise_iou_by_hand():
    a = np.array([[[0, 0, 10, 10]]], np.float64)
    b = np.array([[[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]], np.float64)
    np.testing.assert_allclose(pairwise_iou(a, b), [[[1.0, 50 / 150, 0.0]]])


def test_rows_swapped_by_a_tie_and_tiny_errors_pass():
    got = _dets([BOXES[1], BOXES[0], BOXES[2]], [0.9, 0.9, 0.5], [0, 0, 1])
    got["det_boxes"][0, :3] += np.float32(0.01)
    m = match_detections(REF, got)
    assert m["found"] == m["back"] == 1.0 and 0.009 < m["max_px"] < 0.011 and m["n_reference"] == 3
    assert boxes_pass(m, FP32["boxes"])[0]
    verdicts, _ = judge({**REF, "scores": np.zeros((1, 4))}, {**got, "scores": np.full((1, 4), 5e-5)}, FP32)
    assert dict(verdicts) == {"det_scores": True, "scores": True, "det_boxes": True}


def test_wrong_boxes_or_classes_fail():
    shifted = _dets(np.array(BOXES) + [3, 0, 3, 0], [0.9, 0.9, 0.5], [0, 0, 1])
    ok, why = boxes_pass(match_detections(REF, shifted), FP32["boxes"])
    assert not ok and "largest corner error 3 px (limit 0.25)" in why
    relabelled = _dets(BOXES, [0.9, 0.9, 0.5], [0, 0, 2])
    m = match_detections(REF, relabelled)
    assert m["found"] == 2 / 3 and not boxes_pass(m, FP32["boxes"])[0]
    missing = _dets(BOXES[1:], [0.9, 0.5], [0, 1])  # the first detection lost
    m = match_detections(REF, missing)
    assert m["found"] == 2 / 3 and m["back"] == 1.0
    verdicts, _ = judge(REF, shifted, FP32)
    assert verdicts["det_boxes"] is False and verdicts["det_scores"] is True
