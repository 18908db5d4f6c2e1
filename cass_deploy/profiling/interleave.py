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

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cass_deploy.errors import InputError
from cass_deploy.profiling.timing import PerfCounterTimer, Timer
from cass_deploy.resampling import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, percentile_interval, resample_indices

ORDERS = ("fixed", "rotate", "alternate")
ESTIMATORS = ("median", "trimmed")


def round_order(n_configs: int, rounds: int, order: str = "fixed") -> np.ndarray:
    """``[rounds, n_configs]`` configuration indices in the order each round runs them.

    fixed: every round ``0, 1, ..., C-1`` (ABCABC...); rotate: round r starts at ``r mod C``;
    alternate: even rounds forward, odd rounds reversed (AB BA AB ...: every configuration holds
    every position equally often, so "runs first after a pause" favours none).
    """
    if order not in ORDERS:
        raise InputError(f"interleaving order must be one of {list(ORDERS)}, got {order!r}")
    if n_configs < 1 or rounds < 1:
        raise InputError(f"need at least one configuration and one round, got {n_configs} and {rounds}")
    base = np.arange(n_configs)
    if order == "fixed":
        return np.tile(base, (rounds, 1))
    if order == "alternate":
        return np.where((np.arange(rounds) % 2 == 0)[:, None], base[None, :], base[::-1][None, :])
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
        return _with(asdict(self), "q75", iqr=self.iqr)


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
        return _with(asdict(self), "hi", supported=self.supported)


def _with(fields: dict[str, Any], after: str, **derived: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict with ``derived`` values inserted after the key ``after``
    (the JSON keeps the order readers know)."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        out[k] = v
        if k == after:
            out.update(derived)
    return out


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
    "ESTIMATORS",
    "paired_speedups",
    "relative_halfwidth",
    "StoppedTiming",
    "time_until_resolved",
]


# --------------------------------------------------------------------------- paired per-round ratios


def _robust_centre(x: np.ndarray, estimator: str, trim: float) -> np.ndarray:
    """Centre of ``x`` along its last axis: the median, or the mean after dropping ``trim`` of the
    values at each end (sorted; vectorised over the leading axes)."""
    if estimator == "median":
        return np.median(x, axis=-1)
    n = x.shape[-1]
    cut = int(np.floor(trim * n))
    return np.sort(x, axis=-1)[..., cut : n - cut].mean(axis=-1)


def paired_speedups(
    ms: Any,
    labels: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    *,
    estimator: str = "median",
    trim: float = 0.2,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[RatioCI]:
    """Speed-up of ``b`` over ``a`` for each ``(a, b)`` in ``pairs`` from **per-round** ratios.

    Each round ``r`` timed both configurations back to back, so ``d_r = log(ms[r, a] / ms[r, b])``
    cancels what the round shared (a load burst, a frequency change). The speed-up is
    ``exp(centre(d))`` with centre the median (``estimator="median"``) or the ``trim``-trimmed mean
    (``"trimmed"``) of ``d`` ``[rounds]``; its interval is the percentile bootstrap over rounds
    (one ``[resamples, rounds]`` index matrix, all resamples at once).
    """
    if estimator not in ESTIMATORS:
        raise InputError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if not 0 <= trim < 0.5:
        raise InputError(f"trim must be in [0, 0.5), got {trim!r}")
    a = _samples(ms)
    if len(labels) != a.shape[1]:
        raise InputError(f"{len(labels)} labels for {a.shape[1]} configurations")
    if (a <= 0).any():
        raise InputError("paired ratios need latencies > 0")
    logs = np.log(a)
    idx = resample_indices(a.shape[0], resamples, seed)
    out = []
    for i, j in pairs:
        d = logs[:, i] - logs[:, j]  # [rounds]
        boot = _robust_centre(d[idx], estimator, trim)  # [resamples]
        lo, hi = percentile_interval(np.exp(boot), confidence)
        point = float(np.exp(_robust_centre(d, estimator, trim)))
        out.append(RatioCI(labels[i], labels[j], point, float(lo), float(hi), confidence))
    return out


def relative_halfwidth(r: RatioCI) -> float:
    """The larger of ``hi / ratio - 1`` and ``1 - lo / ratio``: the interval is within +-this of the ratio."""
    return max(r.hi / r.ratio - 1.0, 1.0 - r.lo / r.ratio)


@dataclass
class StoppedTiming:
    """What :func:`time_until_resolved` measured: ``ms`` ``[rounds, C]``, the speed-ups of every
    configuration over the first, and why it stopped (``resolved``: every interval within the
    target; ``capped``: the time cap or ``max_rounds`` came first)."""

    ms: np.ndarray
    speedups: list[RatioCI]
    rounds: int
    seconds: float
    resolved: bool
    capped: bool
    target: float

    def summary(self) -> str:
        worst = max((relative_halfwidth(r) for r in self.speedups), default=0.0)
        why = (
            f"every speed-up interval within +-{100 * self.target:g}%"
            if self.resolved
            else f"TIME CAP HIT before every speed-up interval was within +-{100 * self.target:g}% "
            f"(widest +-{100 * worst:.1f}%)"
        )
        return f"{self.rounds} rounds in {self.seconds:.1f} s: {why}"


def time_until_resolved(
    fns: Sequence[Callable[[], Any]],
    labels: Sequence[str],
    *,
    target: float = 0.05,
    max_seconds: float = 120.0,
    min_rounds: int = 20,
    step: int = 10,
    max_rounds: int | None = None,
    warmup: int = 2,
    order: str = "alternate",
    estimator: str = "median",
    sync: Callable[[], Any] | None = None,
    timer: Timer | None = None,
    clock: Callable[[], float] = time.perf_counter,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> StoppedTiming:
    """Stopping rule: time ``fns`` interleaved (``order``) in blocks of ``step`` rounds until the
    paired speed-up of every configuration over ``fns[0]`` has its interval within ``+-target`` of
    the ratio (after at least ``min_rounds``), or ``max_seconds`` of ``clock`` (or ``max_rounds``)
    have passed: then ``capped`` is True and the caller must say so. ``target <= 0``: exactly
    ``min_rounds`` rounds."""
    if len(fns) < 2:
        raise InputError("the stopping rule needs a baseline and at least one other configuration")
    if step < 1 or min_rounds < 2:
        raise InputError(f"step must be >= 1 and min_rounds >= 2, got {step} and {min_rounds}")
    step += step % 2  # whole alternate pairs, so the order keeps alternating across blocks
    t0 = clock()
    blocks = [time_interleaved(fns, rounds=min_rounds, warmup=warmup, order=order, sync=sync, timer=timer)]
    pairs = [(0, j) for j in range(1, len(fns))]
    while True:
        ms = np.concatenate(blocks)
        speed = paired_speedups(ms, labels, pairs, estimator=estimator, resamples=resamples, seed=seed)
        resolved = target > 0 and all(relative_halfwidth(r) <= target for r in speed)
        elapsed = clock() - t0
        out_of_rounds = max_rounds is not None and len(ms) >= max_rounds
        if resolved or target <= 0 or elapsed >= max_seconds or out_of_rounds:
            capped = not resolved and target > 0
            return StoppedTiming(ms, speed, len(ms), elapsed, resolved, capped, target)
        blocks.append(time_interleaved(fns, rounds=step, warmup=0, order=order, sync=sync, timer=timer))
