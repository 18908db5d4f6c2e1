"""Gate decisions on the intervals of SPEC §7a (cass_deploy.evaluation.gates), on constructed
results with per-image counts: pass, fail, inconclusive (with the objects needed, checked by
enlarging the set to that size), the point rule, allow_inconclusive, the unpaired fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cass_deploy.errors import ConfigError, GateFailed, InputError
from cass_deploy.evaluation.gates import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Gates,
    all_passed,
    check_gates,
    decide_max,
    decide_min,
    raise_if_failed,
    recall_drops,
)
from cass_deploy.evaluation.scoring import GROUPS, SIZE_BINS, FieldReport, ValidationResult
from cass_deploy.evaluation.stats import paired_bootstrap_drop, wilson_interval


def result_from(hits: np.ndarray, totals: np.ndarray, name: str = "candidate", per_image: bool = True):
    """A ValidationResult from per-image counts ``[n_images, 3]`` (far, mid, near)."""
    hits, totals = np.asarray(hits), np.asarray(totals)
    by_field = {}
    for i, g in enumerate(GROUPS):
        k = int(hits[:, i].sum()) if g != "all" else int(hits.sum())
        n = int(totals[:, i].sum()) if g != "all" else int(totals.sum())
        by_field[g] = FieldReport(g, n, k, k / n if n else None)
    return ValidationResult(
        by_field=by_field,
        by_size={s: FieldReport(s, 0, 0, None) for s in SIZE_BINS},
        map50=None,
        map50_per_class=None,
        pruned=False,
        keep_ratio=None,
        n_images=len(hits),
        n_objects=int(totals.sum()),
        n_detections=0,
        iou_thr=0.5,
        score_thr=0.3,
        name=name,
        per_image={"fields": ["far", "mid", "near"], "totals": totals.tolist(), "hits": hits.tolist()}
        if per_image
        else None,
    )


def near_only(n_images: int, per_image: int, ref_found: int, lost_every: int):
    """Each image has ``per_image`` near objects; the reference finds ``ref_found`` of them; the
    candidate loses one more than the reference in every ``lost_every``-th image."""
    totals = np.zeros((n_images, 3), dtype=int)
    totals[:, 2] = per_image
    ref = np.zeros_like(totals)
    ref[:, 2] = ref_found
    cand = ref.copy()
    if lost_every:
        cand[::lost_every, 2] -= 1
    return result_from(ref, totals, "dense"), result_from(cand, totals, "pruned")


def near_check(checks):
    return next(c for c in checks if c.name == "max_recall_drop" and c.field == "near")


def test_drop_gate_passes_when_the_upper_bound_is_within():
    ref, cand = near_only(400, 4, 3, 100)  # 4 of 1200 found objects lost: drop 0.0025
    c = near_check(check_gates(cand, ref, Gates(max_recall_drop=0.02)))
    assert c.status == PASS and c.passed and c.hi <= 0.02 and c.lo <= c.value <= c.hi
    assert "upper bound within the allowed 0.0200" in c.message and "[95 % " in c.message


def test_drop_gate_fails_when_the_lower_bound_exceeds():
    ref, cand = near_only(400, 4, 3, 2)  # 200 of 1600 lost: drop 0.125
    c = near_check(check_gates(cand, ref, Gates(max_recall_drop=0.05)))
    assert c.status == FAIL and not c.passed and c.lo > 0.05
    assert "more than the allowed 0.0500" in c.message
    with pytest.raises(GateFailed) as e:
        raise_if_failed([c])
    assert "--allow-inconclusive" not in str(e.value)


def test_drop_gate_inconclusive_on_a_small_set_and_the_objects_needed_resolve_it():
    ref, cand = near_only(12, 3, 3, 6)  # 36 near objects, 2 lost: drop 0.056, wide interval
    gates = Gates(max_recall_drop=0.05)
    c = near_check(check_gates(cand, ref, gates))
    assert c.status == INCONCLUSIVE and not c.passed
    assert c.hi - c.lo > 0.05 and c.n_objects == 36 and c.objects_needed > 36
    assert f"36 near-field objects cannot resolve it, about {c.objects_needed} would be needed" in c.message
    with pytest.raises(GateFailed, match="--allow-inconclusive"):
        raise_if_failed([c])
    # the same scenes repeated up to the objects needed: the interval is about as wide as the tolerance
    reps = -(-c.objects_needed // 36)
    big_ref, big_cand = near_only(12 * reps, 3, 3, 6)
    big = near_check(check_gates(big_cand, big_ref, gates))
    assert abs((big.hi - big.lo) - 0.05) <= 0.05 * 0.1  # 1/sqrt(n) scaling, within bootstrap noise
    # "about": a fifth more than that resolves it
    more_ref, more_cand = near_only(12 * -(-reps * 6 // 5), 3, 3, 6)
    assert near_check(check_gates(more_cand, more_ref, gates)).status != INCONCLUSIVE
    # allowed: it passes, still reported as inconclusive
    allowed = near_check(check_gates(cand, ref, Gates(max_recall_drop=0.05, allow_inconclusive=True)))
    assert allowed.passed and allowed.status == INCONCLUSIVE
    raise_if_failed([allowed])


def test_narrow_interval_straddling_the_tolerance_fails():
    status, need = decide_max(0.049, 0.04, 0.06, 0.05, "bound", 1000)
    assert (status, need) == (FAIL, None)
    assert decide_max(0.049, 0.04, 0.06, 0.05, "point", 1000) == (PASS, None)
    assert decide_max(0.0, -0.2, 0.04, 0.05, "bound", 10) == (PASS, None)  # wide, but all within
    assert decide_max(0.3, 0.1, 0.5, 0.05, "bound", 10) == (FAIL, None)  # wide, but all beyond
    status, need = decide_max(0.0, -0.05, 0.05, 0.0, "bound", 10)
    assert status == INCONCLUSIVE and need is None  # no finite set resolves a zero tolerance


def test_point_rule_restores_the_point_decision():
    ref, cand = near_only(12, 3, 3, 6)
    c = near_check(check_gates(cand, ref, Gates(max_recall_drop=0.06, gate_on="point")))
    assert c.status == PASS and c.passed and c.hi > 0.06  # the bound would not pass it
    c = near_check(check_gates(cand, ref, Gates(max_recall_drop=0.05, gate_on="point")))
    assert c.status == FAIL


def test_min_near_recall_on_the_bounds():
    totals = np.zeros((50, 3), dtype=int)
    totals[:, 2] = 2
    hits = totals.copy()
    hits[:10, 2] = 0  # 80 of 100 found
    res = result_from(hits, totals)
    lo, hi = wilson_interval(80, 100)
    assert (res.by_field["near"].recall_lo, res.by_field["near"].recall_hi) == (lo, hi)

    def one(thr, **kw):
        return next(c for c in check_gates(res, None, Gates(min_near_recall=thr, **kw)))

    assert one(lo - 0.01).status == PASS
    assert one(hi + 0.01).status == FAIL
    c = one(0.75)
    assert c.status == INCONCLUSIVE and not c.passed and "interval straddles the minimum" in c.message
    assert c.objects_needed > 100
    assert one(0.75, gate_on="point").status == PASS
    # at the objects needed the same recall decides, one fewer does not
    n = c.objects_needed
    lo_n, hi_n = wilson_interval(0.8 * n, n)
    assert decide_min(0.8, lo_n, hi_n, 0.75, "bound")[0] == PASS
    lo_m, hi_m = wilson_interval(0.8 * (n - 1), n - 1)
    assert decide_min(0.8, lo_m, hi_m, 0.75, "bound")[0] == INCONCLUSIVE
    # below the minimum: the objects needed to show it is below
    c = one(0.85)
    lo_n, hi_n = wilson_interval(0.8 * c.objects_needed, c.objects_needed)
    assert c.status == INCONCLUSIVE and decide_min(0.8, lo_n, hi_n, 0.85, "bound")[0] == FAIL


def test_recall_drops_paired_equal_the_bootstrap_and_all_group():
    rng = np.random.default_rng(3)
    totals = rng.integers(0, 4, size=(60, 3))
    ref_h = rng.binomial(totals, 0.7)
    cand_h = np.minimum(ref_h, rng.binomial(totals, 0.65))
    ref, cand = result_from(ref_h, totals, "dense"), result_from(cand_h, totals)
    drops = recall_drops(cand, ref, resamples=500, seed=4)
    assert set(drops) == set(GROUPS)
    all_stack = lambda x: np.concatenate([x, x.sum(1, keepdims=True)], 1)
    p, lo, hi = paired_bootstrap_drop(all_stack(ref_h), all_stack(cand_h), all_stack(totals), resamples=500, seed=4)
    for i, g in enumerate(GROUPS):
        d = drops[g]
        assert d.method == "paired bootstrap"
        assert (d.point, d.lo, d.hi) == (pytest.approx(p[i]), pytest.approx(lo[i]), pytest.approx(hi[i]))
        assert d.n_objects == ref.by_field[g].n_gt


def test_unpaired_fallback_and_mismatched_images():
    ref, cand = near_only(40, 3, 3, 4)
    saved = result_from(
        np.asarray(ref.per_image["hits"]), np.asarray(ref.per_image["totals"]), "dense", per_image=False
    )
    d = recall_drops(cand, saved)["near"]
    paired = recall_drops(cand, ref)["near"]
    assert d.method.startswith("unpaired") and d.lo < paired.lo and d.hi > paired.hi  # pairing is narrower
    other = result_from(np.asarray(cand.per_image["hits"])[::-1], np.asarray(cand.per_image["totals"])[::-1])
    other.per_image["totals"][0][0] = 1  # same field totals overall, different per image
    other.per_image["totals"][1][0] = 0
    other.by_field = cand.by_field
    with pytest.raises(InputError, match="same images"):
        recall_drops(other, ref)


def test_per_image_counts_and_intervals_survive_json():
    ref, cand = near_only(10, 2, 2, 3)
    back = ValidationResult.from_dict(json.loads(json.dumps(cand.to_dict())))
    assert back.per_image == cand.per_image
    assert back.by_field["near"].recall_lo == pytest.approx(cand.by_field["near"].recall_lo)
    assert recall_drops(back, ref)["near"].hi == pytest.approx(recall_drops(cand, ref)["near"].hi)


def test_gate_settings_are_checked():
    with pytest.raises(ConfigError, match="gate-on"):
        Gates(gate_on="mean")
    with pytest.raises(ConfigError, match="confidence"):
        Gates(confidence=1.5)
    with pytest.raises(ConfigError, match="resamples"):
        Gates(resamples=0)
    assert not Gates(gate_on="point").active()
    ref, cand = near_only(400, 4, 3, 100)
    assert all_passed(check_gates(cand, ref, Gates(max_recall_drop=0.02, min_near_recall=0.7)))
