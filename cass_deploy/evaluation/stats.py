"""Statistics of a release gate (SPEC §7a): Wilson intervals on recall, a paired bootstrap over
images on the recall drop against a reference, and how many objects a set needs to resolve a
tolerance. numpy only, vectorised (no Python loop over objects, images or resamples).

Conventions. Counts are per image: ``hits[i]`` objects of a field found in image i out of
``totals[i]`` ground-truth objects of that field. Arrays may carry a trailing field axis
(``[n_images, F]``): every function then answers per field. A recall over zero objects is
undefined and comes back as NaN (callers show it as "n/a" and write JSON ``null``); no other
input gives NaN — bad counts (negative, non-finite, hits > totals) are an InputError naming them.

Intervals are two-sided at ``confidence`` (0.95 by default). The bootstrap is the percentile
bootstrap over images with one seeded ``[resamples, n_images]`` resample matrix
(``cass_deploy.resampling``), so equal inputs and seed give equal intervals.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cass_deploy.errors import InputError
from cass_deploy.resampling import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    check_confidence,
    normal_quantile,
    percentile_interval,
    resample_counts,
)


def _counts(name: str, value: Any) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{name} must be finite counts, got {value!r}")
    if (a < 0).any():
        raise InputError(f"{name} must be non-negative counts, got {value!r}")
    return a


def _out(a: np.ndarray) -> Any:
    """0-d arrays -> float, others unchanged."""
    return float(a) if np.ndim(a) == 0 else a


def wilson_interval(hits: Any, total: Any, confidence: float = DEFAULT_CONFIDENCE) -> tuple[Any, Any]:
    """Wilson score interval of the proportion ``hits / total`` -> (lo, hi).

    ``hits`` and ``total`` broadcast against each other (scalars give floats, arrays give arrays
    of their broadcast shape). ``total == 0`` gives (NaN, NaN): no objects, no recall.
    With z the two-sided normal quantile, p = hits / n:
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``, clipped to [0, 1].
    """
    check_confidence(confidence)
    k = _counts("hits", hits)
    n = _counts("total", total)
    k, n = np.broadcast_arrays(k, n)
    if (k > n).any():
        bad = np.argwhere(k > n)[0]
        raise InputError(f"hits exceed total (hits {k[tuple(bad)]:g} > total {n[tuple(bad)]:g} at index {tuple(bad)})")
    z = normal_quantile(confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    empty = n == 0
    # clipped to [0, 1], and never excluding p itself (at k = 0 or n rounding could by ~1e-17)
    lo = np.where(empty, math.nan, np.minimum(np.clip(centre - half, 0.0, 1.0), p))
    hi = np.where(empty, math.nan, np.maximum(np.clip(centre + half, 0.0, 1.0), p))
    return _out(lo), _out(hi)


def paired_bootstrap_drop(
    ref_hits: Any,
    cand_hits: Any,
    totals: Any,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[Any, Any, Any]:
    """Recall drop ``ref - cand`` with a paired bootstrap interval over images -> (point, lo, hi).

    ref_hits, cand_hits, totals: ``[n_images]`` (or ``[n_images, F]`` for F fields) per-image
    counts of one field — the reference's and the candidate's found objects of the *same* images.
    Each resample draws n_images images with replacement (the same draw for both models, which is
    what makes it paired) and recomputes ``sum(ref)/sum(tot) - sum(cand)/sum(tot)``; resamples
    whose images hold no object of the field are left out. point: the drop on all images; lo, hi:
    the percentile interval. Floats for 1-D input, ``[F]`` arrays otherwise; NaN for a field
    without objects.
    """
    check_confidence(confidence)
    ref = _counts("ref_hits", ref_hits)
    cand = _counts("cand_hits", cand_hits)
    tot = _counts("totals", totals)
    if not (ref.shape == cand.shape == tot.shape) or ref.ndim not in (1, 2):
        raise InputError(
            f"ref_hits, cand_hits and totals must be per-image counts of one shape [n_images] or "
            f"[n_images, F], got {ref.shape}, {cand.shape}, {tot.shape}"
        )
    if ref.shape[0] == 0:
        raise InputError("paired_bootstrap_drop needs at least one image")
    for name, a in (("ref_hits", ref), ("cand_hits", cand)):
        if (a > tot).any():
            i = int(np.argwhere(a > tot)[0][0])
            raise InputError(f"{name} exceed totals in image {i} ({a[i]} > {tot[i]})")
    n = ref.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        point = (ref.sum(0) - cand.sum(0)) / tot.sum(0)
        w = resample_counts(n, resamples, seed)  # [R, n]
        # Each resample's sums by one matrix product: [R, n] @ [n, ...] -> [R, ...].
        drops = (w @ (ref - cand)) / (w @ tot)
    lo, hi = percentile_interval(drops, confidence)
    point = np.where(tot.sum(0) == 0, math.nan, point)
    return _out(point), _out(np.asarray(lo)), _out(np.asarray(hi))


def wilson_objects_needed(recall: Any, half_width: Any, confidence: float = DEFAULT_CONFIDENCE) -> Any:
    """Fewest objects n for which the Wilson interval at observed recall ``recall`` has a
    half-width (hi - lo) / 2 of at most ``half_width`` -> int (or an int array, broadcast).

    Solves the Wilson half-width equation for u = 1/n:
    ``z⁴(h² - 1/4) u² + z²(2h² - p(1-p)) u + h² = 0`` (its one positive root), n = ceil(1/u).
    The half-width ignores the clipping to [0, 1]. ``half_width >= 0.5`` needs a single object.
    """
    p = np.asarray(recall, dtype=np.float64)
    h = np.asarray(half_width, dtype=np.float64)
    if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
        raise InputError(f"recall must be in [0, 1], got {recall!r}")
    if not (np.isfinite(h).all() and (h > 0).all()):
        raise InputError(f"half_width must be a positive number, got {half_width!r}")
    z2 = normal_quantile(confidence) ** 2
    hh = np.minimum(h, 0.5 - 1e-12) ** 2
    a = z2 * z2 * (hh - 0.25)
    b = z2 * (2 * hh - p * (1 - p))
    u = (-b - np.sqrt(b * b - 4 * a * hh)) / (2 * a)
    n = np.ceil(1 / u - 1e-9)
    n = np.where(h >= 0.5, 1, np.maximum(n, 1)).astype(np.int64)
    return int(n) if n.ndim == 0 else n


def wilson_objects_to_decide(recall: Any, threshold: Any, confidence: float = DEFAULT_CONFIDENCE) -> Any:
    """Fewest objects n for which a recall ``recall`` observed on n objects has a Wilson interval
    that excludes ``threshold`` (lower bound >= threshold when recall > threshold, upper bound <
    threshold when below) -> int (or an int array); -1 where recall == threshold (no n does).

    The Wilson bounds are the roots of the score test ``(p - r)² = z² r(1-r) / n``, so the bound
    reaches r exactly at ``n = z² r(1-r) / (p - r)²``.
    """
    p = np.asarray(recall, dtype=np.float64)
    r = np.asarray(threshold, dtype=np.float64)
    for name, a, v in (("recall", p, recall), ("threshold", r, threshold)):
        if not (np.isfinite(a).all() and ((a >= 0) & (a <= 1)).all()):
            raise InputError(f"{name} must be in [0, 1], got {v!r}")
    z2 = normal_quantile(confidence) ** 2
    margin = (p - r) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.ceil(z2 * r * (1 - r) / margin - 1e-9)
    n = np.where(margin == 0, -1, np.maximum(n, 1)).astype(np.int64)
    return int(n) if n.ndim == 0 else n


def objects_to_resolve(n_objects: Any, width: Any, tolerance: Any) -> Any:
    """Objects a set needs for an interval now ``width`` wide over ``n_objects`` objects to shrink
    to ``tolerance`` -> ``ceil(n_objects * (width / tolerance)²)`` (int, or an int array).

    An interval's width shrinks as 1/sqrt(n) for the same per-object behaviour (the same hit and
    disagreement rates), so this is the estimate for a paired-bootstrap drop, whose width depends
    on how often the two models disagree, not on the recall alone. Never less than ``n_objects``.
    """
    n = np.asarray(n_objects, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    t = np.asarray(tolerance, dtype=np.float64)
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise InputError(f"tolerance must be a positive number, got {tolerance!r}")
    if not (np.isfinite(w).all() and (w >= 0).all() and np.isfinite(n).all() and (n >= 0).all()):
        raise InputError(f"width and n_objects must be finite and non-negative, got {width!r}, {n_objects!r}")
    out = np.maximum(np.ceil(n * (w / t) ** 2 - 1e-9), n).astype(np.int64)
    return int(out) if out.ndim == 0 else out
