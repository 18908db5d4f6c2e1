"""Tests for cass_deploy.evaluation.stats and cass_deploy.resampling: Wilson intervals against
published values and the score-test inversion, the paired bootstrap against a Python loop over
the same resamples and against the exact (enumerated) bootstrap distribution of a tiny set, and
the objects-needed helpers against brute-force searches."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cass_deploy.errors import ConfigError, InputError
from cass_deploy.evaluation.stats import (
    objects_to_resolve,
    paired_bootstrap_drop,
    wilson_interval,
    wilson_objects_needed,
    wilson_objects_to_decide,
)
from cass_deploy.resampling import normal_quantile, percentile_interval, resample_counts, resample_indices

# --------------------------------------------------------------------------- Wilson


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics in
# Medicine 17:857-872, Table II, method 3 (Wilson score interval without continuity correction).
NEWCOMBE = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize("k,n,lo,hi", NEWCOMBE)
def test_wilson_matches_newcombe_table(k, n, lo, hi):
    got_lo, got_hi = wilson_interval(k, n)
    assert isinstance(got_lo, float) and isinstance(got_hi, float)
    assert got_lo == pytest.approx(lo, abs=6e-5)
    assert got_hi == pytest.approx(hi, abs=6e-5)


def _score_test_bounds(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson interval by its definition: the p where the score test |p̂-p| <= z sqrt(p(1-p)/n)
    holds, its two ends found by bisection (no closed form used)."""
    phat = k / n

    def inside(p):
        return (phat - p) ** 2 <= z * z * p * (1 - p) / n

    def bisect(a, b):  # a inside, b outside (or the edge)
        for _ in range(200):
            m = (a + b) / 2
            a, b = (m, b) if inside(m) else (a, m)
        return a

    lo = 0.0 if k == 0 else bisect(phat, 0.0)
    hi = 1.0 if k == n else bisect(phat, 1.0)
    return lo, hi


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_equals_score_test_inversion(confidence):
    z = normal_quantile(confidence)
    ks = np.array([0, 1, 3, 7, 20, 50, 99, 100])
    lo, hi = wilson_interval(ks, 100, confidence)
    assert lo.shape == hi.shape == ks.shape
    for k, a, b in zip(ks, lo, hi):
        ea, eb = _score_test_bounds(int(k), 100, z)
        assert a == pytest.approx(ea, abs=1e-9)
        assert b == pytest.approx(eb, abs=1e-9)


def test_wilson_broadcasts_and_orders():
    k = np.array([[0, 5], [10, 20]])
    n = np.array([20, 40])
    lo, hi = wilson_interval(k, n)
    assert lo.shape == (2, 2)
    assert (lo <= k / n).all() and (k / n <= hi).all() and (lo >= 0).all() and (hi <= 1).all()
    # more objects, same proportion -> narrower
    lo1, hi1 = wilson_interval(30, 100)
    lo2, hi2 = wilson_interval(300, 1000)
    assert hi2 - lo2 < hi1 - lo1


def test_wilson_zero_total_is_nan_and_bad_counts_are_errors():
    lo, hi = wilson_interval(np.array([0, 3]), np.array([0, 10]))
    assert math.isnan(lo[0]) and math.isnan(hi[0]) and not math.isnan(lo[1])
    with pytest.raises(InputError, match="exceed"):
        wilson_interval(11, 10)
    with pytest.raises(InputError, match="non-negative"):
        wilson_interval(-1, 10)
    with pytest.raises(InputError, match="finite"):
        wilson_interval(float("nan"), 10)
    with pytest.raises(ConfigError, match="confidence"):
        wilson_interval(1, 10, confidence=95)


def test_normal_quantile_known_values():
    assert normal_quantile(0.95) == pytest.approx(1.959963985, abs=1e-8)
    assert normal_quantile(0.99) == pytest.approx(2.575829304, abs=1e-8)
    assert normal_quantile(0.6826894921) == pytest.approx(1.0, abs=1e-8)


# --------------------------------------------------------------------------- resampling


def test_resample_indices_are_seeded_and_counts_match_them():
    a = resample_indices(7, 50, seed=3)
    assert a.shape == (50, 7) and a.dtype == np.int64 and a.min() >= 0 and a.max() < 7
    assert (a == resample_indices(7, 50, seed=3)).all()
    assert not (a == resample_indices(7, 50, seed=4)).all()
    w = resample_counts(7, 50, seed=3)
    assert w.shape == (50, 7) and (w.sum(1) == 7).all()
    for r in range(50):
        assert (w[r] == np.bincount(a[r], minlength=7)).all()
    with pytest.raises(ConfigError):
        resample_indices(0, 10)
    with pytest.raises(ConfigError):
        resample_indices(5, 0)


def test_percentile_interval_skips_undefined_resamples():
    v = np.array([[1.0, math.nan], [2.0, math.nan], [3.0, math.nan], [math.nan, math.nan]])
    lo, hi = percentile_interval(v, 0.5)
    assert lo[0] == pytest.approx(1.5) and hi[0] == pytest.approx(2.5)
    assert math.isnan(lo[1]) and math.isnan(hi[1])
    lo, hi = percentile_interval(np.arange(101.0), 0.9)
    assert (lo, hi) == (pytest.approx(5.0), pytest.approx(95.0))


# --------------------------------------------------------------------------- paired bootstrap


def _tiny_set():
    # 6 images of one field: objects per image, found by the reference and the candidate
    totals = np.array([3, 1, 0, 4, 2, 5])
    ref = np.array([3, 1, 0, 3, 1, 4])
    cand = np.array([2, 1, 0, 2, 1, 4])
    return ref, cand, totals


def test_paired_bootstrap_equals_python_loop_over_the_same_resamples():
    ref, cand, totals = _tiny_set()
    point, lo, hi = paired_bootstrap_drop(ref, cand, totals, resamples=500, seed=11)
    idx = resample_indices(len(totals), 500, seed=11)
    drops = []
    for row in idx:  # the brute force: one resample at a time, plain Python sums
        t = sum(int(totals[i]) for i in row)
        if t == 0:
            continue
        drops.append(sum(int(ref[i]) for i in row) / t - sum(int(cand[i]) for i in row) / t)
    elo, ehi = np.quantile(drops, [0.025, 0.975])
    assert point == pytest.approx((12 - 10) / 15)
    assert lo == pytest.approx(elo, abs=1e-12)
    assert hi == pytest.approx(ehi, abs=1e-12)


def test_paired_bootstrap_matches_exact_enumerated_distribution():
    """All n^n equally likely resamples of a 5-image set -> the exact bootstrap distribution;
    the vectorised bootstrap's value frequencies and bounds must agree with it."""
    totals = np.array([2, 1, 3, 1, 2])
    ref = np.array([2, 1, 2, 1, 1])
    cand = np.array([1, 1, 2, 0, 1])
    n = len(totals)
    exact = []
    for row in itertools.product(range(n), repeat=n):  # 3125 resamples
        r = list(row)
        exact.append(round((ref[r].sum() - cand[r].sum()) / totals[r].sum(), 12))
    values, freq = np.unique(exact, return_counts=True)
    prob = freq / freq.sum()
    resamples = 40000
    w = resample_counts(n, resamples, seed=5)
    got = np.round((w @ (ref - cand)) / (w @ totals), 12)
    for v, p in zip(values, prob):
        share = np.mean(got == v)
        se = math.sqrt(p * (1 - p) / resamples)
        assert abs(share - p) <= 4.5 * se + 1e-12, (v, share, p)
    point, lo, hi = paired_bootstrap_drop(ref, cand, totals, resamples=resamples, seed=5)
    cdf = np.cumsum(prob)
    # the bounds fall where the exact CDF crosses 2.5 % and 97.5 % (allowing the neighbouring atom)
    i_lo = int(np.searchsorted(cdf, 0.025))
    i_hi = int(np.searchsorted(cdf, 0.975))
    assert values[max(i_lo - 1, 0)] <= lo <= values[min(i_lo + 1, len(values) - 1)]
    assert values[max(i_hi - 1, 0)] <= hi <= values[min(i_hi + 1, len(values) - 1)]
    assert point == pytest.approx(2 / 9)


def test_paired_bootstrap_identical_models_give_zero_interval_and_fields_axis():
    rng = np.random.default_rng(0)
    totals = rng.integers(0, 5, size=(40, 3))
    ref = rng.binomial(totals, 0.6)
    point, lo, hi = paired_bootstrap_drop(ref, ref, totals)
    assert point.shape == lo.shape == hi.shape == (3,)
    assert (point == 0).all() and (lo == 0).all() and (hi == 0).all()
    cand = np.minimum(ref, rng.binomial(totals, 0.5))
    point, lo, hi = paired_bootstrap_drop(ref, cand, totals)
    for f in range(3):  # the field axis answers the same as each field alone
        p1, l1, h1 = paired_bootstrap_drop(ref[:, f], cand[:, f], totals[:, f])
        assert (point[f], lo[f], hi[f]) == (pytest.approx(p1), pytest.approx(l1), pytest.approx(h1))
        assert lo[f] <= point[f] <= hi[f]


def test_pairing_is_narrower_than_independent_resampling():
    """The candidate misses a few objects the reference found, on the same images: the paired
    interval on the drop is much narrower than what independent intervals would suggest."""
    rng = np.random.default_rng(1)
    totals = rng.integers(1, 6, size=200)
    ref = rng.binomial(totals, 0.5)
    cand = ref - (rng.random(200) < 0.05) * (ref > 0)
    point, lo, hi = paired_bootstrap_drop(ref, cand, totals)
    rlo, rhi = wilson_interval(ref.sum(), totals.sum())
    assert hi - lo < (rhi - rlo) / 3
    assert lo > 0  # the drop is real and the paired interval resolves it


def test_paired_bootstrap_field_without_objects_is_nan_and_input_errors():
    point, lo, hi = paired_bootstrap_drop(np.zeros((4, 2)), np.zeros((4, 2)), np.array([[0, 1]] * 4))
    assert math.isnan(point[0]) and math.isnan(lo[0]) and math.isnan(hi[0])
    assert point[1] == 0
    with pytest.raises(InputError, match="shape"):
        paired_bootstrap_drop([1, 2], [1], [2, 2])
    with pytest.raises(InputError, match="exceed"):
        paired_bootstrap_drop([1, 3], [1, 1], [2, 2])
    with pytest.raises(InputError, match="at least one"):
        paired_bootstrap_drop([], [], [])
    with pytest.raises(ConfigError, match="resamples"):
        paired_bootstrap_drop([1], [1], [1], resamples=0)


def test_paired_bootstrap_is_seeded():
    ref, cand, totals = _tiny_set()
    assert paired_bootstrap_drop(ref, cand, totals, seed=2) == paired_bootstrap_drop(ref, cand, totals, seed=2)


# --------------------------------------------------------------------------- objects needed


@pytest.mark.parametrize("p,h", [(0.5, 0.05), (0.3, 0.02), (0.8, 0.03), (0.5, 0.01), (0.65, 0.1)])
def test_wilson_objects_needed_is_the_smallest_n(p, h):
    n = wilson_objects_needed(p, h)

    def half(m):
        lo, hi = wilson_interval(p * m, m)
        return (hi - lo) / 2

    assert half(n) <= h + 1e-12
    assert half(n - 1) > h
    # brute-force search agrees
    ms = np.arange(1, 3 * n + 10)
    lo, hi = wilson_interval(p * ms, ms)
    assert int(ms[np.argmax((hi - lo) / 2 <= h + 1e-12)]) == n


def test_wilson_objects_needed_textbook_case_and_vector():
    # p = 0.5, ±5 points at 95 %: the Wald size z²/4h² = 384.1; Wilson needs 381
    assert wilson_objects_needed(0.5, 0.05) == 381
    out = wilson_objects_needed(np.array([0.5, 0.9]), 0.05)
    assert out.shape == (2,) and out[1] < out[0]
    assert wilson_objects_needed(0.5, 0.6) == 1
    with pytest.raises(InputError):
        wilson_objects_needed(1.5, 0.05)
    with pytest.raises(InputError):
        wilson_objects_needed(0.5, 0.0)


def test_objects_to_resolve_scales_with_the_square_of_the_width():
    assert objects_to_resolve(100, 0.2, 0.1) == 400
    assert objects_to_resolve(121, 0.11, 0.02) == math.ceil(121 * (0.11 / 0.02) ** 2)
    assert objects_to_resolve(100, 0.05, 0.1) == 100  # already resolvable: never fewer than now
    assert (objects_to_resolve(np.array([10, 20]), 0.2, 0.1) == [40, 80]).all()
    with pytest.raises(InputError):
        objects_to_resolve(10, 0.2, 0)


@pytest.mark.parametrize("p,r", [(0.8, 0.75), (0.8, 0.85), (0.33, 0.3), (0.95, 0.9), (0.1, 0.2)])
def test_wilson_objects_to_decide_is_where_the_bound_crosses(p, r):
    n = wilson_objects_to_decide(p, r)

    def excludes(m):
        lo, hi = wilson_interval(p * m, m)
        return lo >= r if p > r else hi < r

    assert excludes(n) and not excludes(n - 1)
    assert wilson_objects_to_decide(0.5, 0.5) == -1
    assert (
        wilson_objects_to_decide(np.array([0.8, 0.9]), 0.75) == [wilson_objects_to_decide(0.8, 0.75), 33]
    ).all()  # 1.96² 0.1875 / 0.15² = 32.01


def test_wilson_interval_always_contains_the_observed_proportion():
    n = np.arange(1, 400)
    for k in (np.zeros_like(n), n, n // 3):
        lo, hi = wilson_interval(k, n)
        assert (lo <= k / n).all() and (k / n <= hi).all()
