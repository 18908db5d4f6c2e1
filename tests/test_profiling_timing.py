"""Latency statistics, time_callable and memory helpers (cass_deploy.profiling.timing)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time

import pytest

from cass_deploy.errors import BackendUnavailable, InputError
from cass_deploy.profiling.timing import (
    CudaEventTimer,
    LatencyStats,
    cpu_peak_rss_mib,
    cuda_peak_memory_mib,
    peak_memory,
    time_callable,
)


def _linear_percentile(values, p):
    """Percentile by linear interpolation between order statistics (Hyndman-Fan type 7)."""
    xs = sorted(values)
    h = (len(xs) - 1) * p / 100.0
    lo = math.floor(h)
    hi = math.ceil(h)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def test_stats_on_1_to_100_match_hand_computed_values():
    series = list(range(1, 101))
    s = LatencyStats.from_samples(series)
    # by hand: rank h = 99 * p / 100; p50 -> 49.5 -> 50.5; p90 -> 89.1 -> 90.1; p95 -> 94.05 -> 95.05;
    # p99 -> 98.01 -> 99.01
    assert s.p50 == pytest.approx(50.5)
    assert s.p90 == pytest.approx(90.1)
    assert s.p95 == pytest.approx(95.05)
    assert s.p99 == pytest.approx(99.01)
    assert (s.n, s.min, s.max) == (100, 1.0, 100.0)
    assert s.mean == pytest.approx(50.5)
    # sample variance of 1..n is n(n+1)/12
    assert s.std == pytest.approx(math.sqrt(100 * 101 / 12))
    assert s.throughput_fps == pytest.approx(1000 / 50.5)


def test_stats_on_shuffled_series_with_batch():
    rng = random.Random(3)
    series = [rng.uniform(4.0, 9.0) for _ in range(37)]
    rng.shuffle(series)
    s = LatencyStats.from_samples(series, batch=4)
    for p, got in ((50, s.p50), (90, s.p90), (95, s.p95), (99, s.p99)):
        assert got == pytest.approx(_linear_percentile(series, p))
    mean = sum(series) / len(series)
    std = math.sqrt(sum((x - mean) ** 2 for x in series) / (len(series) - 1))
    assert s.mean == pytest.approx(mean) and s.std == pytest.approx(std)
    assert s.throughput_fps == pytest.approx(4 * 1000 / mean)
    assert s.batch == 4


def test_single_sample_has_zero_std_and_dict_is_complete():
    s = LatencyStats.from_samples([2.5])
    assert s.std == 0.0 and s.p50 == s.p99 == s.min == s.max == 2.5
    d = s.to_dict()
    assert {"n", "mean", "std", "min", "p50", "p90", "p95", "p99", "max", "throughput_fps", "batch", "unit"} <= set(d)
    assert d["unit"] == "ms" and d["throughput_fps"] == pytest.approx(400.0)


@pytest.mark.parametrize(
    "bad, batch",
    [([], 1), ([1.0, float("nan")], 1), ([1.0, -0.5], 1), ([1.0], 0), ([1.0], 1.5), ([1.0], True), (["x"], 1)],
)
def test_from_samples_rejects_bad_input(bad, batch):
    with pytest.raises(InputError):
        LatencyStats.from_samples(bad, batch=batch)


def test_time_callable_counts_calls_and_syncs():
    calls, syncs = [], []
    out = time_callable(lambda: calls.append(1), warmup=3, iters=5, sync=lambda: syncs.append(1))
    assert len(out) == 5 and all(v >= 0 for v in out)
    assert len(calls) == 8 and len(syncs) == 8


def test_time_callable_measures_wall_time():
    out = time_callable(lambda: time.sleep(0.002), warmup=0, iters=2)
    assert min(out) >= 1.5


def test_time_callable_uses_a_timer_object():
    class FixedTimer:
        def __init__(self):
            self.n = 0

        def measure(self, fn, sync):
            fn()
            self.n += 1
            return 7.0 + self.n

    timer = FixedTimer()
    assert time_callable(lambda: None, warmup=1, iters=3, timer=timer) == [8.0, 9.0, 10.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(warmup=-1, iters=1),
        dict(warmup=0, iters=0),
        dict(warmup=0, iters=1.5),
        dict(warmup=True, iters=1),
        dict(warmup=0, iters=1, timer="cuda_magic"),
        dict(warmup=0, iters=1, timer=object()),
        dict(warmup=0, iters=1, sync="no"),
    ],
)
def test_time_callable_argument_errors(kwargs):
    with pytest.raises(InputError):
        time_callable(lambda: None, **kwargs)


def test_time_callable_rejects_non_callable():
    with pytest.raises(InputError):
        time_callable(42, warmup=0, iters=1)


def test_cuda_event_timer_needs_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA present; covered by the gpu test")
    with pytest.raises(BackendUnavailable):
        CudaEventTimer()


@pytest.mark.gpu
def test_cuda_event_timer_times_gpu_work():
    import torch

    x = torch.randn(512, 512, device="cuda")
    out = time_callable(lambda: x @ x, warmup=2, iters=5, timer=CudaEventTimer())
    assert len(out) == 5 and all(v > 0 for v in out)
    assert cuda_peak_memory_mib() is not None and cuda_peak_memory_mib() > 0


def test_peak_memory_helpers():
    rss = cpu_peak_rss_mib()
    if sys.platform.startswith("linux"):
        assert rss is not None and 1 < rss < 1e6
    mem = peak_memory()
    assert set(mem) == {"cpu_peak_rss_mib", "cuda_max_allocated_mib"}
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        assert mem["cuda_max_allocated_mib"] is None


def test_lightweight_modules_do_not_import_torch():
    code = (
        "import sys; import cass_deploy.profiling.timing, cass_deploy.profiling.power, cass_deploy.backends.jetson, "
        "cass_deploy.backends.envinfo, cass_deploy.export.profiles, "
        "cass_deploy.commands.env; bad = [m for m in ('torch', 'onnxruntime', 'tensorrt') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
