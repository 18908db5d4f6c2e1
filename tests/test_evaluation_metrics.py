"""Tests for cass_deploy.evaluation.metrics: IoU, fields, size bins, matching, recall, mAP@0.5, retention."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from cass_deploy.config import FieldConfig
from cass_deploy.data.synthetic import field_of_boxes
from cass_deploy.errors import ConfigError, InputError
from cass_deploy.evaluation.metrics import (
    SizeBins,
    box_iou,
    field_of,
    greedy_match,
    map50,
    match_detections,
    recall_by_field,
    retention_from_pairs,
    retention_per_object,
    retention_summary,
    size_bin_of,
    summarise_retention,
)

from conftest import random_boxes


def T(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


# --------------------------------------------------------------------------- box_iou


def test_box_iou_golden_values():
    a = T([[0, 0, 10, 10], [0, 0, 4, 4]])
    b = T([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 10]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 4)
    # overlap 5x5 = 25, union 100 + 100 - 25 = 175
    expected = T(
        [
            [25 / 175, 1.0, 0.0, 50 / 100],
            # [0,0,4,4] vs [5,5,15,15]: disjoint; inside [0,0,10,10]: 16/100; vs [0,0,5,10]: 16/50
            [0.0, 16 / 100, 0.0, 16 / 50],
        ]
    )
    assert torch.allclose(iou, expected, atol=1e-7)


def test_box_iou_zero_area_is_zero_not_nan():
    a = T([[1, 1, 1, 1], [3, 3, 2, 2]])  # a point and an inverted box
    b = T([[1, 1, 1, 1], [0, 0, 4, 4]])
    iou = box_iou(a, b)
    assert torch.equal(iou, torch.zeros(2, 2))
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 2)
    assert box_iou(a, []).shape == (2, 0)


def test_box_iou_rejects_bad_shapes_and_nan():
    with pytest.raises(InputError, match=r"shape \[N, 4\]"):
        box_iou(T([[0, 0, 1]]), T([[0, 0, 1, 1]]))
    with pytest.raises(InputError, match="non-finite"):
        box_iou(T([[0, 0, float("nan"), 1]]), T([[0, 0, 1, 1]]))


# --------------------------------------------------------------------------- fields and size bins


def test_field_of_thresholds_are_bottom_edge_and_half_open():
    # H = 480: far below 240, near from 360 (both exact in float32)
    y2 = [239.99, 240.0, 359.99, 360.0, 480.0, 100.0]
    boxes = T([[0, y - 10, 10, y] for y in y2])
    assert field_of(boxes, 480).tolist() == [0, 1, 1, 2, 2, 0]
    # the top edge does not matter: a tall box reaching the bottom is near
    assert field_of(T([[0, 0, 10, 400]]), 480).tolist() == [2]
    # custom thresholds; far_max == near_min leaves mid empty
    f = FieldConfig(far_max=0.6, near_min=0.6)
    assert field_of(T([[0, 0, 1, 59.9], [0, 0, 1, 60]]), 100, f).tolist() == [0, 2]


@pytest.mark.parametrize(
    "kw",
    [
        dict(far_max=0.0),
        dict(near_min=1.01),
        dict(far_max=0.8, near_min=0.7),
        dict(far_max=float("nan")),
        dict(near_min=True),
        dict(far_max="0.5"),
    ],
)
def test_field_config_rejects_bad_values(kw):
    with pytest.raises(ConfigError):
        FieldConfig(**kw)


def test_size_bins_in_patch_areas():
    boxes = T(
        [
            [0, 0, 15, 16],  # 240 px < 256: small
            [0, 0, 16, 16],  # exactly one patch: medium
            [0, 0, 63, 64],  # 15.75 patches: medium
            [0, 0, 64, 64],
        ]
    )  # 16 patches: large
    assert size_bin_of(boxes, 16).tolist() == [0, 1, 1, 2]
    # non-square patches (8 x 16 = 128 px): 240 px is 1.875 patches
    assert size_bin_of(boxes[:1], (8, 16)).tolist() == [1]
    assert size_bin_of(boxes, 16, SizeBins(small_max=0.5, medium_max=4)).tolist() == [1, 1, 2, 2]
    with pytest.raises(ConfigError):
        SizeBins(small_max=4, medium_max=2)
    with pytest.raises(InputError):
        size_bin_of(boxes, 0)


# --------------------------------------------------------------------------- matching


def test_one_prediction_cannot_match_two_gts():
    gt = T([[0, 0, 10, 10], [1, 0, 11, 10]])
    # IoU with GT0: 9.2 x 10 / 108 = 0.85; with GT1: 9.8 x 10 / 102 = 0.96 -> only GT1
    pred = T([[0.8, 0, 10.8, 10]])
    assert match_detections(pred, T([0.9]), gt).tolist() == [False, True]
    # an exact tie goes to the lower GT index
    assert match_detections(T([[0.5, 0, 10.5, 10]]), T([0.9]), gt).tolist() == [True, False]
    assert match_detections(gt.flip(0), T([0.9, 0.8]), gt).tolist() == [True, True]


def test_two_predictions_one_gt_match_once():
    gt = T([[0, 0, 10, 10]])
    preds = T([[0, 0, 10, 10], [0, 0, 10, 9]])
    owner = greedy_match(box_iou(preds, gt))
    assert owner.tolist() == [0]  # the higher-ranked row wins
    assert match_detections(preds, T([0.5, 0.9]), gt).tolist() == [True]


def test_greedy_order_follows_scores():
    # A overlaps GT0 (0.9) and GT1 (0.6); B overlaps only GT0 (0.8)
    iou = T([[0.9, 0.6], [0.8, 0.0]])
    assert greedy_match(iou).tolist() == [0, -1]  # A first takes GT0, B is left without
    assert greedy_match(iou[[1, 0]]).tolist() == [0, 1]  # B first takes GT0, A falls back to GT1


def test_score_threshold_is_inclusive():
    gt = T([[0, 0, 10, 10]])
    pred = T([[0, 0, 10, 10]])
    assert match_detections(pred, T([0.3]), gt, score_thr=0.3).tolist() == [True]
    assert match_detections(pred, T([0.2999]), gt, score_thr=0.3).tolist() == [False]


def test_iou_threshold_just_below_and_above():
    gt = T([[0, 0, 10, 10]])
    assert match_detections(T([[0, 0, 10, 5]]), T([1.0]), gt).tolist() == [True]  # IoU exactly 0.5
    assert match_detections(T([[0, 0, 10, 4.99]]), T([1.0]), gt).tolist() == [False]  # 0.499
    assert match_detections(T([[0, 0, 10, 5.01]]), T([1.0]), gt).tolist() == [True]


def test_class_aware_matching():
    gt = T([[0, 0, 10, 10]])
    pred = T([[0, 0, 10, 10]])
    assert match_detections(pred, T([1.0]), gt, pred_labels=[1], gt_labels=[0]).tolist() == [True]
    assert match_detections(pred, T([1.0]), gt, pred_labels=[1], gt_labels=[0], class_aware=True).tolist() == [False]
    with pytest.raises(InputError, match="class_aware"):
        match_detections(pred, T([1.0]), gt, class_aware=True)


def _sequential_greedy(iou: torch.Tensor, thr: float) -> list[int]:
    """Reference: each row in turn takes the free column with the highest IoU >= thr (first on ties)."""
    D, M = iou.shape
    owner = [-1] * M
    for d in range(D):
        best, best_iou = -1, -1.0
        for m in range(M):
            v = float(iou[d, m])
            if owner[m] == -1 and v >= thr and v > best_iou:
                best, best_iou = m, v
        if best >= 0:
            owner[best] = d
    return owner


def test_vectorised_greedy_equals_sequential_reference():
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        D, M = rng.randint(0, 25), rng.randint(0, 15)
        centres = torch.rand(max(M, 1), 2, generator=g) * 40
        gt = torch.cat([centres[:M] - 5, centres[:M] + 5], dim=1)
        pick = torch.randint(0, max(M, 1), (D,), generator=g)
        jitter = torch.randn(D, 4, generator=g) * 3
        pred = torch.cat([centres[pick] - 5, centres[pick] + 5], dim=1) + jitter
        pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 0.5)
        iou = box_iou(pred, gt) if M else torch.zeros(D, 0)
        thr = rng.choice([0.3, 0.5, 0.7])
        assert greedy_match(iou, thr).tolist() == _sequential_greedy(iou, thr), trial


# --------------------------------------------------------------------------- recall by field


def _gt(boxes, labels=None):
    boxes = T(boxes).reshape(-1, 4)
    return {
        "boxes": boxes,
        "labels": torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels),
    }


def _pred(boxes, scores, labels=None):
    boxes = T(boxes).reshape(-1, 4)
    return {
        "boxes": boxes,
        "scores": T(scores),
        "labels": torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels),
    }


def test_recall_by_field_hand_made():
    # 100 x 100 images: far y2 < 50, mid 50 <= y2 < 75, near y2 >= 75; patch 16 -> 256 px per patch
    gts = [
        _gt(
            [
                [0, 20, 10, 30],  # far, 100 px: small
                [50, 30, 60, 40],  # far, small
                [0, 50, 20, 70],  # mid, 400 px: medium
                [10, 60, 90, 100],
            ]
        ),  # near, 3200 px = 12.5 patches: medium
        _gt(
            [
                [0, 80, 70, 99],  # near, 1330 px: medium
                [20, 10, 30, 20],
            ]
        ),  # far, small
    ]
    preds = [
        _pred(
            [[0, 20, 10, 30], [10, 60, 90, 100], [0, 50, 20, 70], [50, 30, 60, 40]], [0.9, 0.8, 0.2, 0.31]
        ),  # the mid hit is below the score threshold
        _pred([[0, 80, 70, 80.5]], [0.9]),  # a sliver: IoU < 0.5 with the near box
    ]
    r = recall_by_field(preds, gts, (100, 100))
    f = r["by_field"]
    assert f["far"] == {"recall": 2 / 3, "n_gt": 3, "n_matched": 2}
    assert f["mid"] == {"recall": 0.0, "n_gt": 1, "n_matched": 0}
    assert f["near"] == {"recall": 0.5, "n_gt": 2, "n_matched": 1}
    assert f["all"] == {"recall": 3 / 6, "n_gt": 6, "n_matched": 3}
    s = r["by_size"]
    assert s["small"] == {"recall": 2 / 3, "n_gt": 3, "n_matched": 2}
    assert s["medium"] == {"recall": 1 / 3, "n_gt": 3, "n_matched": 1}
    assert s["large"] == {"recall": None, "n_gt": 0, "n_matched": 0}
    json.dumps(r, allow_nan=False)  # plain JSON, no NaN


def test_recall_field_without_gt_is_none_and_classes_filter():
    # one truck (label 1) near, one pedestrian (label 2) far; vehicles are classes 0 and 1
    gts = [_gt([[0, 80, 20, 100], [0, 0, 10, 10]], labels=[1, 2])]
    preds = [_pred([[0, 0, 10, 10], [0, 80, 20, 100]], [0.9, 0.8], labels=[2, 0])]
    r = recall_by_field(preds, gts, (100, 100), classes=[0, 1])
    assert r["by_field"]["far"] == {"recall": None, "n_gt": 0, "n_matched": 0}
    assert r["by_field"]["mid"]["recall"] is None
    assert r["by_field"]["near"] == {"recall": 1.0, "n_gt": 1, "n_matched": 1}
    # class-aware: the truck was predicted as class 0 -> not found
    r = recall_by_field(preds, gts, (100, 100), classes=[0, 1], class_aware=True)
    assert r["by_field"]["near"]["n_matched"] == 0
    # without the filter the pedestrian counts and the pedestrian prediction finds it
    r = recall_by_field(preds, gts, (100, 100))
    assert r["by_field"]["far"] == {"recall": 1.0, "n_gt": 1, "n_matched": 1}


def test_recall_bad_input_names_the_image():
    with pytest.raises(InputError, match="same images"):
        recall_by_field([], [_gt([[0, 0, 1, 1]])], (10, 10))
    with pytest.raises(InputError, match="image 1"):
        recall_by_field([_pred([], []), _pred([], [])], [_gt([[0, 0, 1, 1]]), _gt([[5, 5, 4, 9]])], (10, 10))
    with pytest.raises(InputError, match="scores of image 0"):
        recall_by_field([{"boxes": T([[0, 0, 1, 1]]), "scores": T([0.5, 0.6])}], [_gt([[0, 0, 1, 1]])], (10, 10))
    with pytest.raises(ConfigError, match="iou_thr"):
        recall_by_field([_pred([], [])], [_gt([[0, 0, 1, 1]])], (10, 10), iou_thr=0)


# --------------------------------------------------------------------------- mAP@0.5


def test_map50_perfect_predictions_is_one(capsys):
    gts = [_gt([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]), _gt([[5, 5, 30, 30]], [1])]
    preds = [_pred([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8], [0, 1]), _pred([[5, 5, 30, 30]], [0.7], [1])]
    r = map50(preds, gts, 2, ["car", "truck"])
    assert r["map50"] == pytest.approx(1.0)
    assert r["per_class"] == {"car": pytest.approx(1.0), "truck": pytest.approx(1.0)}
    assert r["n_gt"] == {"car": 1, "truck": 2}
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are swallowed


def test_map50_half_found_101_point_interpolation():
    # 4 GTs, the two highest-scored detections hit two of them, nothing else: precision 1 up to
    # recall 0.5, nothing beyond. Recall thresholds 0, 0.01, ..., 1.0: 51 of 101 points are 1.
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]]), _gt([[0, 0, 10, 10], [50, 50, 60, 60]])]
    preds = [_pred([[0, 0, 10, 10]], [0.9]), _pred([[0, 0, 10, 10]], [0.8])]
    assert map50(preds, gts, 1)["map50"] == pytest.approx(51 / 101, abs=1e-9)
    # TP (0.9), FP (0.8), TP (0.7) over 2 GTs: precision 1 at recall 0.5, 2/3 at recall 1
    # -> 51 points at 1 and 50 points (0.51 .. 1.0) at 2/3
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]])]
    preds = [_pred([[0, 0, 10, 10], [60, 60, 70, 70], [20, 20, 30, 30]], [0.9, 0.8, 0.7])]
    assert map50(preds, gts, 1)["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-9)
    # same detections ranked the other way round: FP first -> precision 1/2 at recall 0.5
    preds = [_pred([[0, 0, 10, 10], [60, 60, 70, 70], [20, 20, 30, 30]], [0.8, 0.9, 0.7])]
    assert map50(preds, gts, 1)["map50"] == pytest.approx((51 * 2 / 3 + 50 * 2 / 3) / 101, abs=1e-9)


def test_map50_empty_predictions_classes_without_gt_and_errors():
    gts = [_gt([[0, 0, 10, 10]], [0]), _gt([], [])]
    preds = [_pred([], []), _pred([], [])]
    r = map50(preds, gts, 2, ["car", "truck"])
    assert r["map50"] == 0.0 and r["per_class"] == {"car": 0.0, "truck": None}
    # class 0 perfect, class 1 has no GT (a false truck in image 1 does not count for mAP)
    preds = [_pred([[0, 0, 10, 10]], [0.9], [0]), _pred([[1, 1, 5, 5]], [0.9], [1])]
    r = map50(preds, gts, 2)
    assert r["map50"] == pytest.approx(1.0) and r["per_class"]["1"] is None
    with pytest.raises(InputError, match="no[n]e|at least one ground-truth"):
        map50([_pred([], [])], [_gt([], [])], 1)
    with pytest.raises(InputError, match="label 3"):
        map50([_pred([], [])], [_gt([[0, 0, 1, 1]], [3])], 2)
    with pytest.raises(InputError, match="class_names"):
        map50(preds, gts, 2, ["car"])


# --------------------------------------------------------------------------- retention


def _brute_pairs(boxes, grid, image_size, ensure_center=True):
    """Independent membership: loop over every box and patch (tests only)."""
    (Hp, Wp), (H, W) = grid, image_size
    P = Hp * Wp
    pairs = []
    n = 0
    for b, bx in enumerate(boxes):
        for x1, y1, x2, y2 in torch.as_tensor(bx).reshape(-1, 4).tolist():
            mine = []
            for i in range(Hp):
                for j in range(Wp):
                    cx, cy = (j + 0.5) * W / Wp, (i + 0.5) * H / Hp
                    if x1 <= cx <= x2 and y1 <= cy <= y2:
                        mine.append(b * P + i * Wp + j)
            if not mine and ensure_center:
                i = min(int(((y1 + y2) / 2) // (H / Hp)), Hp - 1)
                j = min(int(((x1 + x2) / 2) // (W / Wp)), Wp - 1)
                mine.append(b * P + i * Wp + j)
            pairs += [(n, p) for p in mine]
            n += 1
    return pairs, n


def test_retention_hand_built_mask():
    # 64 x 64 image, 4 x 4 grid of 16 px patches, centres at 8, 24, 40, 56
    boxes = [
        T(
            [
                [0, 0, 32, 32],  # centres (8|24, 8|24): patches 0, 1, 4, 5
                [42, 42, 46, 46],
            ]
        ),  # no centre inside -> patch holding (44, 44): row 2, col 2 = 10
        T([[0, 48, 64, 64]]),
    ]  # image 1, bottom row: patches 12..15
    keep = torch.zeros(2, 16, dtype=torch.bool)
    keep[0, [0, 1, 5, 10]] = True
    keep[1, [12, 13]] = True
    ret = retention_per_object(keep, boxes, (4, 4), (64, 64))
    assert ret.tolist() == [0.75, 1.0, 0.5]
    pairs, n = _brute_pairs(boxes, (4, 4), (64, 64))
    box = torch.tensor([p[0] for p in pairs])
    patch = torch.tensor([p[1] for p in pairs])
    assert retention_from_pairs(keep, box, patch, n).tolist() == [0.75, 1.0, 0.5]
    # without ensure_center the tiny box has no patches: NaN, counted as unmeasured
    ret = retention_per_object(keep, boxes, (4, 4), (64, 64), ensure_center=False)
    assert ret[0] == 0.75 and math.isnan(ret[1]) and ret[2] == 0.5


def test_retention_matches_brute_force_on_random_boxes():
    g = torch.Generator().manual_seed(1)
    grid, size = (5, 7), (80, 112)
    boxes = random_boxes(g, (6, 0, 9), (100.0, 70.0), 40, (112.0, 80.0))
    keep = torch.rand(3, 35, generator=g) < 0.5
    pairs, n = _brute_pairs(boxes, grid, size)
    expected = torch.zeros(n)
    count = torch.zeros(n)
    for o, p in pairs:
        expected[o] += float(keep.reshape(-1)[p])
        count[o] += 1
    expected /= count
    got = retention_per_object(keep, boxes, grid, size)
    assert torch.allclose(got, expected)
    # integer 0/1 masks are accepted, other values refused
    assert torch.allclose(retention_per_object(keep.long(), boxes, grid, size), expected)
    with pytest.raises(InputError, match="boolean"):
        retention_per_object(keep.float() * 0.5, boxes, grid, size)
    with pytest.raises(InputError, match=r"\[B=3, P=35\]"):
        retention_per_object(keep[:, :30], boxes, grid, size)


def test_summarise_retention_per_field_and_size():
    # H = 100: far y2 < 50, mid < 75, near >= 75; patch 16 (256 px)
    boxes = [
        T(
            [
                [0, 0, 10, 10],  # far, small
                [0, 30, 10, 40],  # far, small
                [0, 50, 40, 70],  # mid, 800 px: medium
                [0, 60, 80, 100],  # near, 3200 px: medium
                [0, 36, 100, 100],
            ]
        )
    ]  # near, 6400 px = 25 patches: large
    retention = T([1.0, 0.25, 0.5, float("nan"), 0.4])
    s = summarise_retention(retention, boxes, (100, 100))
    f = s["by_field"]
    assert f["far"] == {"mean": pytest.approx(0.625), "share_ge_50": 0.5, "n": 2, "n_unmeasured": 0}
    assert f["mid"] == {"mean": 0.5, "share_ge_50": 1.0, "n": 1, "n_unmeasured": 0}  # 0.5 counts as >= 50%
    assert f["near"] == {"mean": pytest.approx(0.4), "share_ge_50": 0.0, "n": 1, "n_unmeasured": 1}
    assert f["all"]["n"] == 4 and f["all"]["mean"] == pytest.approx((1 + 0.25 + 0.5 + 0.4) / 4)
    assert f["all"]["share_ge_50"] == 0.5
    sz = s["by_size"]
    assert sz["small"]["mean"] == pytest.approx(0.625)
    assert sz["medium"] == {"mean": 0.5, "share_ge_50": 1.0, "n": 1, "n_unmeasured": 1}
    assert sz["large"]["n"] == 1
    json.dumps(s, allow_nan=False)
    # a field with no objects reports None, never NaN
    empty = retention_summary(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert empty["by_field"]["near"] == {"mean": None, "share_ge_50": None, "n": 0, "n_unmeasured": 0}
    with pytest.raises(InputError, match="4 entries for 5 boxes"):
        summarise_retention(retention[:4], boxes, (100, 100))


def test_numpy_field_split_of_the_data_package_agrees_at_the_edges():

    H = 480
    y2 = np.array([239.999, 240.0, 240.001, 359.999, 360.0, 360.001, 480.0])
    boxes = np.stack([np.zeros_like(y2), y2 - 10, np.full_like(y2, 10), y2], 1)
    assert field_of_boxes(boxes, H).tolist() == field_of(torch.tensor(boxes), H).tolist() == [0, 1, 1, 1, 2, 2, 2]
