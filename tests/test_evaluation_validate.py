"""evaluation.scoring and evaluation.gates: evaluate() over batches, gates, comparison table, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cass_deploy.errors import ConfigError, GateFailed, InputError
from cass_deploy.evaluation.gates import Gates, all_passed, check_gates, raise_if_failed
from cass_deploy.evaluation.metrics import SIZE_BINS
from cass_deploy.evaluation.scoring import (
    GROUPS,
    FieldReport,
    ValidationResult,
    evaluate,
    format_comparison_table,
    render_table,
)

SIZE, GRID = (64, 64), (4, 4)  # 16 px patches with centres at 8, 24, 40, 56; far y2 < 32, near y2 >= 48


def T(x):
    return torch.tensor(x, dtype=torch.float32).reshape(-1, 4)


# Ground truth per image (labels: 0 car, 1 truck, 2 pedestrian)
GTS = [
    (T([[0, 0, 16, 16], [0, 32, 64, 64]]), [0, 1]),  # far car (patch 0); near truck (patches 8..15)
    (T([[16, 16, 48, 40]]), [0]),  # mid car: centres x 24|40, y 24|40 -> 5, 6, 9, 10
    (T([[42, 2, 46, 6], [0, 50, 8, 64]]), [0, 2]),  # tiny far car (no centre -> patch 2); pedestrian
]
PREDS = [
    (T([[0, 0, 16, 16], [0, 32, 64, 64]]), [0.9, 0.8], [0, 1]),
    (T([[16, 16, 48, 22]]), [0.7], [0]),  # IoU 0.25 with the mid car: a miss
    (T([[42, 2, 46, 6], [0, 50, 8, 64]]), [0.5, 0.9], [0, 2]),
]
KEEP = [[0, 8, 9, 10, 11], [5], []]  # truck keeps 4 of 8, mid car 1 of 4, tiny car 0 of 1


def _batches(numpy_images=False):
    out = []
    for ids in ([0, 1], [2]):
        images = torch.zeros(len(ids), 3, *SIZE)
        for b, i in enumerate(ids):
            images[b, 0, 0, 0] = i  # the fake model reads the image id from the pixels
        out.append(
            {
                "images": images.numpy() if numpy_images else images,
                "boxes": [GTS[i][0] for i in ids],
                "labels": [torch.tensor(GTS[i][1]) for i in ids],
            }
        )
    return out


def _predict(pruned=True, as_numpy=False):
    def predict(images):
        ids = [int(v) for v in torch.as_tensor(images)[:, 0, 0, 0]]
        conv = (lambda x: np.asarray(x)) if as_numpy else torch.as_tensor
        out = {
            "boxes": [conv(PREDS[i][0]) for i in ids],
            "scores": [conv(PREDS[i][1]) for i in ids],
            "labels": [conv(PREDS[i][2]) for i in ids],
        }
        if pruned:
            keep = torch.zeros(len(ids), 16, dtype=torch.bool)
            for b, i in enumerate(ids):
                keep[b, KEEP[i]] = True
            out["keep_mask"] = keep.numpy() if as_numpy else keep
        return out

    return predict


def test_evaluate_pruned_model_by_hand():
    r = evaluate(
        _predict(), _batches(), SIZE, GRID, classes=[0, 1], class_names=["car", "truck", "pedestrian"], name="pruned"
    )
    f = r.by_field
    assert (f["far"].n_matched, f["far"].n_gt, f["far"].recall) == (2, 2, 1.0)
    assert (f["mid"].n_matched, f["mid"].n_gt, f["mid"].recall) == (0, 1, 0.0)
    assert (f["near"].n_matched, f["near"].n_gt, f["near"].recall) == (1, 1, 1.0)
    assert f["all"].recall == 0.75 and r.n_objects == 4 and r.n_images == 3
    # retention: far car 1.0, tiny far car 0.0, mid car 0.25, truck 0.5
    assert f["far"].retention_mean == 0.5 and f["far"].retention_share_ge_50 == 0.5
    assert f["mid"].retention_mean == 0.25 and f["mid"].retention_share_ge_50 == 0.0
    assert f["near"].retention_mean == 0.5 and f["near"].retention_share_ge_50 == 1.0
    assert f["all"].retention_mean == pytest.approx(1.75 / 4)
    # sizes (256 px per patch): tiny car 16 px small; far car 256, mid car 768, truck 2048 px medium
    assert (r.by_size["small"].n_gt, r.by_size["small"].recall, r.by_size["small"].retention_mean) == (1, 1.0, 0.0)
    assert r.by_size["medium"].n_gt == 3 and r.by_size["medium"].recall == pytest.approx(2 / 3)
    assert r.by_size["large"].recall is None and r.by_size["large"].retention_mean is None
    assert r.pruned and r.keep_ratio == 6 / 48
    assert r.n_detections == 4  # the pedestrian detection is not a vehicle
    # mAP over all three classes. car: TP 0.9, FP 0.7, TP 0.5 over 3 GTs -> precision 1 up to
    # recall 1/3 (34 of 101 points: 0 .. 0.33), 2/3 up to recall 2/3 (33 points) -> 56/101
    assert r.map50_per_class == {
        "car": pytest.approx(56 / 101),
        "truck": pytest.approx(1.0),
        "pedestrian": pytest.approx(1.0),
    }
    assert r.map50 == pytest.approx((56 / 101 + 2) / 3)


def test_evaluate_dense_model_numpy_outputs_and_json_round_trip():
    r = evaluate(
        _predict(pruned=False, as_numpy=True),
        _batches(numpy_images=True),
        SIZE,
        GRID,
        classes=[0, 1],
        compute_map=False,
    )
    assert not r.pruned and r.keep_ratio is None and r.map50 is None
    assert all(r.by_field[g].retention_mean is None for g in GROUPS)
    assert r.by_field["all"].recall == 0.75
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = ValidationResult.from_dict(json.loads(text))
    assert back == r


def test_evaluate_bad_input():
    with pytest.raises(InputError, match=r"\[B, C, 32, 64\] \(the network input\), got \[2, 3, 64, 64\]"):
        evaluate(_predict(), _batches(), (32, 64), (2, 4))
    calls = iter([True, False])

    def flaky(images):
        return _predict(pruned=next(calls))(images)

    with pytest.raises(InputError, match="keep_mask for some batches"):
        evaluate(flaky, _batches(), SIZE, GRID, compute_map=False)
    with pytest.raises(InputError, match=r"keep_mask must have shape \[2, 16\]"):
        evaluate(
            lambda im: {**_predict()(im), "keep_mask": torch.ones(2, 8, dtype=torch.bool)},
            _batches()[:1],
            SIZE,
            GRID,
            compute_map=False,
        )
    with pytest.raises(InputError, match="lacks 'scores'"):
        evaluate(lambda im: {"boxes": [T([])] * 2}, _batches()[:1], SIZE, GRID)
    with pytest.raises(InputError, match="no ground-truth objects of classes \\[5\\]"):
        evaluate(_predict(), _batches(), SIZE, GRID, classes=[5], compute_map=False)
    with pytest.raises(InputError, match="empty"):
        evaluate(_predict(), [], SIZE, GRID)


# --------------------------------------------------------------------------- gates


def _result(
    recall: dict, retention_near: float | None = 0.8, map50: float | None = 0.6, name: str = "candidate"
) -> ValidationResult:
    """recall: field -> (n_matched, n_gt) for far / mid / near; "all" is summed."""
    recall = dict(recall)
    recall["all"] = (sum(v[0] for v in recall.values()), sum(v[1] for v in recall.values()))
    pruned = retention_near is not None

    def rep(g, k, n):
        return FieldReport(
            g,
            n,
            k,
            k / n if n else None,
            retention_mean=(retention_near if g == "near" else 0.5) if pruned and n else None,
            retention_share_ge_50=0.5 if pruned and n else None,
            n_retention=n if pruned else 0,
        )

    return ValidationResult(
        by_field={g: rep(g, *recall[g]) for g in GROUPS},
        by_size={s: FieldReport(s, 0, 0, None) for s in SIZE_BINS},
        map50=map50,
        map50_per_class=None,
        pruned=pruned,
        keep_ratio=0.5 if pruned else None,
        n_images=10,
        n_objects=recall["all"][1],
        n_detections=30,
        iou_thr=0.5,
        score_thr=0.3,
        name=name,
    )


def test_min_near_recall_pass_and_fail_with_numbers():
    point = dict(gate_on="point")  # the point estimates decide (the bound-based default: test_evaluation_gates.py)
    ok = check_gates(
        _result({"far": (8, 10), "mid": (5, 5), "near": (17, 20)}), None, Gates(min_near_recall=0.85, **point)
    )
    assert len(ok) == 1 and ok[0].passed and ok[0].value == 0.85 and all_passed(ok)  # equal to the minimum passes
    bad = check_gates(
        _result({"far": (8, 10), "mid": (5, 5), "near": (15, 20)}), None, Gates(min_near_recall=0.8, **point)
    )
    assert not all_passed(bad) and not bad[0]
    assert bad[0].field == "near" and bad[0].value == 0.75 and bad[0].threshold == 0.8
    assert "0.7500" in bad[0].message and "0.8000" in bad[0].message and "15/20" in bad[0].message
    with pytest.raises(
        GateFailed,
        match=r"near-field recall 0.7500 \(15/20 found\) \[95 % 0.5313, 0.8881\] is below the minimum 0.8000",
    ) as e:
        raise_if_failed(bad)
    assert e.value.exit_code == 1
    raise_if_failed(ok)  # no exception


def test_max_recall_drop_per_field_against_reference():
    ref = _result({"far": (18, 20), "mid": (9, 10), "near": (10, 10)}, retention_near=None, name="dense")
    cand = _result({"far": (16, 20), "mid": (9, 10), "near": (10, 10)})
    checks = check_gates(cand, ref, Gates(max_recall_drop=0.05, gate_on="point"))
    by = {c.field: c for c in checks}
    assert set(by) == {"far", "mid", "near", "all"}
    assert not by["far"].passed and by["far"].value == pytest.approx(0.1) and by["far"].reference == 0.9
    assert "0.1000 (0.9000 -> 0.8000, 18/20 -> 16/20) [95 % " in by["far"].message
    assert "], more than the allowed 0.0500" in by["far"].message
    assert by["mid"].passed and by["near"].passed and by["mid"].value == 0.0
    assert by["all"].passed and by["all"].value == pytest.approx(37 / 40 - 35 / 40)  # 0.05: at the limit
    assert not all_passed(checks)
    # a candidate that beats the reference passes (negative drop)
    assert all_passed(check_gates(ref, cand, Gates(max_recall_drop=0.0, gate_on="point")))


def test_field_without_gt_is_skipped_not_silently_passed():
    ref = _result({"far": (9, 10), "mid": (0, 0), "near": (0, 0)})
    cand = _result({"far": (9, 10), "mid": (0, 0), "near": (0, 0)})
    checks = check_gates(
        cand, ref, Gates(min_near_recall=0.9, max_recall_drop=0.01, min_near_retention=0.5, gate_on="point")
    )
    skipped = [c for c in checks if c.skipped]
    assert {(c.name, c.field) for c in skipped} == {
        ("min_near_recall", "near"),
        ("max_recall_drop", "mid"),
        ("max_recall_drop", "near"),
        ("min_near_retention", "near"),
    }
    assert all(c.passed and c.value is None for c in skipped)
    assert "skipped: no ground-truth objects in field 'near'" in skipped[0].message
    assert all_passed(checks)


def test_retention_and_map_gates():
    cand = _result({"far": (1, 1), "mid": (1, 1), "near": (1, 1)}, retention_near=0.4, map50=0.55)
    checks = check_gates(cand, None, Gates(min_near_retention=0.5, min_map50=0.5))
    by = {c.name: c for c in checks}
    assert not by["min_near_retention"].passed and "0.4000" in by["min_near_retention"].message
    assert by["min_map50"].passed and by["min_map50"].value == 0.55
    dense = _result({"far": (1, 1), "mid": (1, 1), "near": (1, 1)}, retention_near=None, map50=None)
    with pytest.raises(ConfigError, match="pruned model"):
        check_gates(dense, None, Gates(min_near_retention=0.5))
    with pytest.raises(ConfigError, match="not computed"):
        check_gates(dense, None, Gates(min_map50=0.5))


def test_gate_configuration_errors():
    cand = _result({"far": (1, 1), "mid": (1, 1), "near": (1, 1)})
    with pytest.raises(ConfigError, match="reference"):
        check_gates(cand, None, Gates(max_recall_drop=0.02))
    other = _result({"far": (1, 2), "mid": (1, 1), "near": (1, 1)})
    with pytest.raises(InputError, match="not evaluated on the same data"):
        check_gates(cand, other, Gates(max_recall_drop=0.02))
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ConfigError, match="must be a fraction in \\[0, 1\\]"):
            Gates(min_near_recall=bad)
    assert not Gates().active() and Gates(min_map50=0.0).active()
    assert check_gates(cand, None, Gates()) == []


def test_comparison_table_side_by_side():
    ref = _result({"far": (18, 20), "mid": (9, 10), "near": (4, 4)}, retention_near=None, name="dense")
    cand = _result({"far": (16, 20), "mid": (9, 10), "near": (3, 4)}, retention_near=0.625, name="pruned")
    text = render_table(format_comparison_table(cand, ref), width=160)
    near = next(line for line in text.splitlines() if line.strip().lstrip("│┃| ").startswith("near"))
    assert "0.750 (3/4)" in near and "1.000 (4/4)" in near and "-0.250" in near and "0.625" in near
    assert "retention pruned" in text and "retention dense" not in text  # the dense model has no retention
    assert "dense: mAP@0.5 0.600" in text
    small = next(line for line in text.splitlines() if "small" in line)
    assert "n/a" in small
    alone = render_table(format_comparison_table(cand), width=160)
    assert "Δ recall" not in alone and "0.800 (16/20)" in alone
