"""Latency statistics and timers: wall clock (``perf_counter``) or CUDA events.

Nothing heavy is imported at module level: torch is imported only by ``CudaEventTimer`` and
only read (never imported) by ``cuda_peak_memory_mib``, so the ONNX Runtime and TensorRT
profiling paths stay torch-free.

Conventions:

- every time is in milliseconds (ms);
- percentiles use ``numpy.percentile(..., method="linear")``: linear interpolation between the
  two nearest order statistics (Hyndman & Fan type 7, numpy's default), so p50 of an even-length
  series is the mean of its two middle values;
- ``std`` is the sample standard deviation (``ddof=1``); 0.0 for a single sample.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import BackendUnavailable, InputError

try:
    import resource
except ImportError:  # Windows
    resource = None

torch = lazy_import("torch")

PERCENTILE_METHOD = "linear"


@dataclass(frozen=True)
class LatencyStats:
    """Summary of a latency series (all times in ms); ``throughput_fps = batch * 1000 / mean``."""

    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    throughput_fps: float
    batch: int = 1

    @classmethod
    def from_samples(cls, ms: Sequence[float], batch: int = 1) -> LatencyStats:
        """Summarise per-iteration latencies ``ms: [N]`` of batches of ``batch`` frames each.

        Raises InputError for an empty series, a non-finite or negative sample, or ``batch < 1``.
        """

        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch must be an integer >= 1, got {batch!r}")
        try:
            arr = np.asarray(ms, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"latency samples must be numbers, got {ms!r:.80}") from None
        if arr.size == 0:
            raise InputError("latency samples are empty; time at least one iteration")
        bad = ~np.isfinite(arr)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"latency sample {i} is not finite: {arr[i]!r}")
        if (arr < 0).any():
            i = int(np.flatnonzero(arr < 0)[0])
            raise InputError(f"latency sample {i} is negative: {arr[i]!r} ms")
        p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99], method=PERCENTILE_METHOD)
        mean = float(arr.mean())
        std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        throughput = batch * 1000.0 / mean if mean > 0 else math.inf
        return cls(
            n=int(arr.size),
            mean=mean,
            std=std,
            min=float(arr.min()),
            p50=float(p50),
            p90=float(p90),
            p95=float(p95),
            p99=float(p99),
            max=float(arr.max()),
            throughput_fps=float(throughput),
            batch=batch,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the field names above (times in ms); JSON-able."""
        out = asdict(self)
        out["unit"] = "ms"
        out["percentile_method"] = PERCENTILE_METHOD
        return out


class Timer(Protocol):
    """Anything that times one call of ``fn`` (followed by ``sync``) and returns milliseconds."""

    def measure(self, fn: Callable[[], Any], sync: Callable[[], Any] | None) -> float: ...


class PerfCounterTimer:
    """Host wall clock: ``time.perf_counter_ns`` around ``fn()`` and ``sync()``.

    For asynchronous backends pass ``sync`` (e.g. ``torch.cuda.synchronize``); otherwise only
    the launch is timed.
    """

    def measure(self, fn: Callable[[], Any], sync: Callable[[], Any] | None) -> float:
        t0 = time.perf_counter_ns()
        fn()
        if sync is not None:
            sync()
        return (time.perf_counter_ns() - t0) / 1e6


class CudaEventTimer:
    """GPU time between two ``torch.cuda.Event(enable_timing=True)`` records on a stream.

    The end event is synchronised before reading ``elapsed_time``, so each sample is the GPU
    time of the work ``fn`` enqueued (host overhead between launches is not included).
    Raises BackendUnavailable when torch or a CUDA device is missing.
    """

    def __init__(self, device: Any = None, stream: Any = None) -> None:
        try:
            available = torch.cuda.is_available()
        except ImportError:
            raise BackendUnavailable("CudaEventTimer needs torch with CUDA; torch is not installed") from None
        if not available:
            raise BackendUnavailable(
                f"CudaEventTimer needs a CUDA device; torch {torch.__version__} sees none "
                f"(CUDA build: {torch.version.cuda or 'no, CPU-only build'})"
            )
        self._torch = torch
        self._device = device
        self._stream = stream
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def measure(self, fn: Callable[[], Any], sync: Callable[[], Any] | None) -> float:
        stream = self._stream if self._stream is not None else self._torch.cuda.current_stream(self._device)
        self._start.record(stream)
        fn()
        if sync is not None:
            sync()
        self._end.record(stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))


TIMERS = ("perf_counter",)


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def time_callable(
    fn: Callable[[], Any],
    *,
    warmup: int,
    iters: int,
    sync: Callable[[], Any] | None = None,
    timer: str | Timer = "perf_counter",
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``iters`` times timed; return ``[iters]`` ms.

    ``sync`` runs after every call (warm-up included) and inside the timed region; ``timer`` is
    ``"perf_counter"`` or an object with ``measure(fn, sync) -> ms`` such as ``CudaEventTimer()``.
    """
    if not callable(fn):
        raise InputError(f"fn must be callable, got {type(fn).__name__}")
    warmup = _check_count("warmup", warmup, 0)
    iters = _check_count("iters", iters, 1)
    if sync is not None and not callable(sync):
        raise InputError(f"sync must be callable or None, got {type(sync).__name__}")
    if isinstance(timer, str):
        if timer not in TIMERS:
            raise InputError(
                f"timer must be one of {list(TIMERS)} or a timer object (e.g. CudaEventTimer()), got {timer!r}"
            )
        timer_obj: Timer = PerfCounterTimer()
    elif hasattr(timer, "measure"):
        timer_obj = timer
    else:
        raise InputError(f"timer must be 'perf_counter' or have a measure(fn, sync) method, got {timer!r}")
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    return [float(timer_obj.measure(fn, sync)) for _ in range(iters)]


# --------------------------------------------------------------------------- peak memory


def cpu_peak_rss_mib() -> float | None:
    """Peak resident set size of this process since it started, in MiB (None where unknown).

    ``ru_maxrss`` is in KiB on Linux and in bytes on macOS; it cannot be reset, so it is the
    lifetime peak, not the peak of one benchmark.
    """
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        return peak / (1024 * 1024)
    return peak / 1024


def cuda_peak_memory_mib(device: Any = None) -> float | None:
    """``torch.cuda.max_memory_allocated`` in MiB, or None when torch is not loaded or has no CUDA.

    torch is never imported here: if nothing imported it, nothing allocated through it.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return torch.cuda.max_memory_allocated(device) / (1024 * 1024)
    except Exception:  # a broken CUDA runtime reads as "unknown", not as a crash
        return None


def reset_cuda_peak_memory(device: Any = None) -> None:
    """Reset torch's CUDA peak counter (no-op without torch or CUDA)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any = None) -> dict[str, float | None]:
    """``{"cpu_peak_rss_mib": ..., "cuda_max_allocated_mib": ...}`` (None = unknown)."""
    return {"cpu_peak_rss_mib": cpu_peak_rss_mib(), "cuda_max_allocated_mib": cuda_peak_memory_mib(device)}


__all__ = [
    "LatencyStats",
    "PerfCounterTimer",
    "CudaEventTimer",
    "Timer",
    "time_callable",
    "cpu_peak_rss_mib",
    "cuda_peak_memory_mib",
    "reset_cuda_peak_memory",
    "peak_memory",
    "PERCENTILE_METHOD",
]
