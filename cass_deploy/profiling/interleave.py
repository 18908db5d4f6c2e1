"""Latency comparisons that survive machine noise (SPEC §7a): configurations timed interleaved in
rounds, each median with a bootstrap interval and its spread, ratios of medians with intervals,
and a warning wherever the intervals do not support a ranking.

Timing configuration A, then B, then C back to back lets a burst of load from another process
land on one configuration only; three runs of the same benchmark on a shared 2-core machine gave
dense / keep 0.5 = 1.52x, 1.95x and 2.10x that way. Interleaving in rounds (round r times A, B, C
once each: ``ABCABC...``) spreads every disturbance over all configurations, and the round is the
unit of the bootstrap: resampling rounds keeps each round's samples together, so the ratio of two
configurations is a *paired* comparison. ``order="rotate"`` starts round r at configuration
``r mod C`` (ABC, BCA, CAB, ...) so that no configuration always follows the same one.

numpy only (torch-free, like the rest of the ONNX Runtime / TensorRT profiling path); all times
in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cass_deploy.errors import InputError
from cass_deploy.profiling.timing import PerfCounterTimer, Timer
from cass_deploy.resampling import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, percentile_interval, resample_indices

ORDERS = ("fixed", "rotate")


def round_order(n_configs: int, rounds: int, order: str = "fixed") -> np.ndarray:
    """``[rounds, n_configs]`` configuration indices in the order each round runs them.

    fixed: every round ``0, 1, ..., C-1`` (ABCABC...); rotate: round r starts at ``r mod C``.
    """
    if order not in ORDERS:
        raise InputError(f"interleaving order must be one of {list(ORDERS)}, got {order!r}")
    if n_configs < 1 or rounds < 1:
        raise InputError(f"need at least one configuration and one round, got {n_configs} and {rounds}")
    base = np.arange(n_configs)
    if order == "fixed":
        return np.tile(base, (rounds, 1))
    return (base[None, :] + np.arange(rounds)[:, None]) % n_configs


def time_interleaved(
    fns: Sequence[Callable[[], Any]],
    *,
    rounds: int,
    warmup: int = 1,
    order: str = "fixed",
    sync: Callable[[], Any] | None = None,
    timer: Timer | None = None,
    on_round: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Time ``fns`` interleaved -> ``[rounds, len(fns)]`` ms; column c is ``fns[c]``.

    ``warmup`` untimed calls of each function first (themselves interleaved), then ``rounds``
    rounds in :func:`round_order`; ``sync`` runs after every call inside the timed region
    (``torch.cuda.synchronize`` for an asynchronous backend); ``timer`` defaults to the host wall
    clock. ``on_round(r)`` is called after round r (a progress bar).
    """
    if not fns or not all(callable(f) for f in fns):
        raise InputError("time_interleaved needs a non-empty list of callables")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"warmup must be an integer >= 0, got {warmup!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"rounds must be an integer >= 1, got {rounds!r}")
    timer = timer or PerfCounterTimer()
    for _ in range(warmup):
        for f in fns:
            f()
            if sync is not None:
                sync()
    plan = round_order(len(fns), rounds, order)
    out = np.empty((rounds, len(fns)), dtype=np.float64)
    for r, row in enumerate(plan):
        for c in row:
            out[r, c] = float(timer.measure(fns[c], sync))
        if on_round is not None:
            on_round(r)
    return out


@dataclass(frozen=True)
class MedianCI:
    """A configuration's median latency with its bootstrap interval and spread (ms)."""

    median: float
    lo: float
    hi: float
    q25: float
    q75: float
    n: int
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "lo": self.lo,
            "hi": self.hi,
            "q25": self.q25,
            "q75": self.q75,
            "iqr": self.iqr,
            "n": self.n,
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class RatioCI:
    """``median(a) / median(b)`` with its paired bootstrap interval (rounds resampled together)."""

    a: str
    b: str
    ratio: float
    lo: float
    hi: float
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def supported(self) -> bool:
        """The interval excludes 1: the data say which of the two is faster."""
        return self.lo > 1 or self.hi < 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "ratio": self.ratio,
            "lo": self.lo,
            "hi": self.hi,
            "supported": self.supported,
            "confidence": self.confidence,
        }


def _samples(ms: Any) -> np.ndarray:
    a = np.asarray(ms, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] < 1:
        raise InputError(f"latency samples must be [rounds] or [rounds, configs], got shape {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise InputError("latency samples must be finite and non-negative")
    return a


def median_intervals(
    ms: Any, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = DEFAULT_CONFIDENCE
) -> list[MedianCI]:
    """Per configuration (column of ``ms`` ``[rounds, C]``) the median, its percentile-bootstrap
    interval over rounds and the quartiles; one ``[resamples, rounds]`` index matrix for all."""
    a = _samples(ms)
    idx = resample_indices(a.shape[0], resamples, seed)
    meds = np.median(a[idx], axis=1)  # [R, C]
    lo, hi = percentile_interval(meds, confidence)
    q25, q50, q75 = np.percentile(a, [25, 50, 75], axis=0)
    return [
        MedianCI(float(q50[c]), float(lo[c]), float(hi[c]), float(q25[c]), float(q75[c]), a.shape[0], confidence)
        for c in range(a.shape[1])
    ]


def ratio_intervals(
    ms: Any,
    labels: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[RatioCI]:
    """``median(ms[:, a]) / median(ms[:, b])`` for each ``(a, b)`` in ``pairs``, with the paired
    bootstrap interval (the same resampled rounds for both columns), all resamples at once."""
    a = _samples(ms)
    if len(labels) != a.shape[1]:
        raise InputError(f"{len(labels)} labels for {a.shape[1]} configurations")
    idx = resample_indices(a.shape[0], resamples, seed)
    meds = np.median(a[idx], axis=1)  # [R, C]
    point = np.median(a, axis=0)
    out = []
    for i, j in pairs:
        with np.errstate(divide="ignore", invalid="ignore"):
            lo, hi = percentile_interval(meds[:, i] / meds[:, j], confidence)
            ratio = point[i] / point[j]
        out.append(RatioCI(labels[i], labels[j], float(ratio), float(lo), float(hi), confidence))
    return out


def ranking_warnings(labels: Sequence[str], medians: Sequence[MedianCI]) -> list[str]:
    """One warning per pair of configurations adjacent in the ranking by median whose intervals
    overlap: that order is not supported by the data."""
    order = sorted(range(len(medians)), key=lambda i: medians[i].median)
    out = []
    for i, j in zip(order, order[1:]):
        a, b = medians[i], medians[j]
        if a.hi >= b.lo:
            out.append(
                f"{labels[i]} ({a.median:.3f} ms [{a.lo:.3f}, {a.hi:.3f}]) and {labels[j]} "
                f"({b.median:.3f} ms [{b.lo:.3f}, {b.hi:.3f}]): the intervals overlap, so the data do not "
                "support ranking one faster than the other"
            )
    return out


__all__ = [
    "ORDERS",
    "round_order",
    "time_interleaved",
    "MedianCI",
    "RatioCI",
    "median_intervals",
    "ratio_intervals",
    "ranking_warnings",
]
