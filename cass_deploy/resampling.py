"""The bootstrap's shared parts (SPEC §7a), numpy only: one seeded resample-index matrix, the
percentile interval of a statistic's resampled values, and the normal quantile of a confidence.

Kept below every stage so ``evaluation.stats`` (recall intervals, paired drops) and
``profiling`` (latency medians, ratios) resample the same way without importing each other.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from cass_deploy.errors import ConfigError

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


def check_confidence(confidence: float) -> float:
    """``confidence`` as a float in (0, 1); ConfigError naming the value otherwise."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ConfigError(f"confidence must be a number in (0, 1), e.g. 0.95, got {confidence!r}")
    return float(confidence)


def normal_quantile(confidence: float) -> float:
    """Two-sided standard-normal quantile z: P(|Z| <= z) = confidence (1.959964 for 0.95)."""
    c = check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + c / 2)


def check_resamples(resamples: int) -> int:
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ConfigError(f"resamples must be a positive integer, got {resamples!r}")
    return int(resamples)


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` int64 indices drawn uniformly with replacement from ``range(n)``.

    One matrix for the whole bootstrap (row r is resample r), from ``numpy.random.default_rng(seed)``,
    so the same (n, resamples, seed) always gives the same resamples.
    """
    resamples = check_resamples(resamples)
    if n < 1:
        raise ConfigError(f"cannot bootstrap an empty sample (n={n})")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int64)


def resample_counts(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` float64: how often each item appears in each resample of ``resample_indices``.

    A resample's sum of any per-item quantity x is then ``counts @ x`` — one matrix product for
    every resample at once, instead of gathering ``x[indices]``.
    """
    idx = resample_indices(n, resamples, seed)
    r = idx.shape[0]
    flat = (idx + (np.arange(r, dtype=np.int64) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)


def percentile_interval(values: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[Any, Any]:
    """Percentile bootstrap interval over axis 0 of ``values`` ``[resamples, ...]`` -> (lo, hi) of shape ``[...]``
    (floats for 1-D ``values``).

    NaN rows (a statistic undefined in that resample) are left out; a column that is NaN in every
    resample gives NaN bounds.
    """
    c = check_confidence(confidence)
    alpha = (1 - c) / 2
    v = np.asarray(values, dtype=np.float64)
    flat = v.reshape(v.shape[0], -1)
    lo = np.full(flat.shape[1], math.nan)
    hi = np.full(flat.shape[1], math.nan)
    defined = ~np.isnan(flat).all(axis=0)
    if defined.any():
        q = np.nanquantile(flat[:, defined], [alpha, 1 - alpha], axis=0)
        lo[defined], hi[defined] = q[0], q[1]
    shape = v.shape[1:]
    if not shape:
        return float(lo[0]), float(hi[0])
    return lo.reshape(shape), hi.reshape(shape)
