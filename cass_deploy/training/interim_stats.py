"""Interim copies of ``cass_deploy.evaluation.stats`` (issue 11) with its exact names and
signatures, used only while that module has not landed: :mod:`cass_deploy.training.recall`
imports the real one when it exists. Delete this file once ``evaluation/stats.py`` is on main.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(hits, total, confidence: float = 0.95):
    """Wilson score interval of ``hits / total`` (numpy-vectorised) -> (lo, hi); NaN where total is 0."""
    k = np.asarray(hits, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    z = _z(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        mid = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo, hi = np.where(n > 0, mid - half, np.nan), np.where(n > 0, mid + half, np.nan)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def paired_bootstrap_drop(ref_hits, cand_hits, totals, resamples: int = 2000, seed: int = 0, confidence: float = 0.95):
    """Recall drop ``ref - cand`` from per-image hit counts, with a paired percentile bootstrap over
    images -> (point, lo, hi). ``ref_hits``, ``cand_hits``, ``totals``: [N] per-image counts."""
    ref = np.asarray(ref_hits, dtype=np.float64)
    cand = np.asarray(cand_hits, dtype=np.float64)
    tot = np.asarray(totals, dtype=np.float64)
    if not (ref.shape == cand.shape == tot.shape) or ref.ndim != 1:
        raise ValueError(
            f"ref_hits, cand_hits, totals must be [N] arrays of one length, got {ref.shape}, {cand.shape}, {tot.shape}"
        )
    if tot.sum() <= 0:
        return float("nan"), float("nan"), float("nan")
    point = (ref.sum() - cand.sum()) / tot.sum()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(tot), size=(int(resamples), len(tot)))
    t = tot[idx].sum(1)
    drops = np.where(t > 0, (ref[idx].sum(1) - cand[idx].sum(1)) / np.where(t > 0, t, 1), 0.0)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(drops, [alpha, 1 - alpha])
    return float(point), float(lo), float(hi)
