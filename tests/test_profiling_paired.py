"""Paired per-round speed-ups (median / trimmed mean of log-ratios, bootstrap over rounds), the
alternating order and the stopping rule, with golden values computed by hand and a fake timer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cass_deploy.errors import InputError
from cass_deploy.profiling.interleave import (
    paired_speedups,
    relative_halfwidth,
    round_order,
    time_until_resolved,
)


def test_alternate_order_reverses_every_other_round():
    assert round_order(3, 4, "alternate").tolist() == [[0, 1, 2], [2, 1, 0], [0, 1, 2], [2, 1, 0]]


def test_median_of_log_ratios_golden():
    # per-round dense / pruned ratios 2, 2.5, 1.6, 100 (a burst on dense only), 2 -> median of logs = log 2
    dense = [2.0, 5.0, 1.6, 100.0, 4.0]
    pruned = [1.0, 2.0, 1.0, 1.0, 2.0]
    r = paired_speedups(np.c_[dense, pruned], ["dense", "keep"], [(0, 1)], resamples=500)[0]
    assert r.ratio == pytest.approx(2.0)
    assert r.lo <= 2.0 <= r.hi and r.a == "dense" and r.b == "keep"


def test_trimmed_mean_golden():
    # logs of ratios e^0, e^1, e^2, e^3, e^10 ; 20 % trimmed of 5 drops one each end -> mean(1, 2, 3) = 2
    ratios = np.exp([0.0, 1.0, 2.0, 3.0, 10.0])
    ms = np.c_[ratios, np.ones(5)]
    r = paired_speedups(ms, ["a", "b"], [(0, 1)], estimator="trimmed", trim=0.2, resamples=200)[0]
    assert r.ratio == pytest.approx(math.exp(2.0))


def test_paired_interval_cancels_round_noise():
    # a common load factor per round (x1 .. x5) leaves the paired ratio exactly 1.5
    rng = np.random.default_rng(0)
    load = rng.uniform(1, 5, size=40)
    ms = np.c_[1.5 * load, load]
    r = paired_speedups(ms, ["a", "b"], [(0, 1)], resamples=300)[0]
    assert r.ratio == pytest.approx(1.5) and r.lo == pytest.approx(1.5) and r.hi == pytest.approx(1.5)
    assert relative_halfwidth(r) == pytest.approx(0.0, abs=1e-12)


def test_paired_bad_input():
    with pytest.raises(InputError, match="estimator"):
        paired_speedups(np.ones((3, 2)), ["a", "b"], [(0, 1)], estimator="mean")
    with pytest.raises(InputError, match="> 0"):
        paired_speedups(np.zeros((3, 2)), ["a", "b"], [(0, 1)])


class FakeClock:
    """A clock that only the fake timer advances (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTimer:
    """Returns a scripted latency per function (ms) and advances the clock by it."""

    def __init__(self, clock: FakeClock, fns_ms, noise: float, seed: int = 0) -> None:
        self.clock, self.fns_ms, self.noise = clock, fns_ms, noise
        self.rng = np.random.default_rng(seed)

    def measure(self, fn, sync) -> float:
        ms = self.fns_ms[fn] * float(np.exp(self.rng.normal(0, self.noise)))
        self.clock.now += ms / 1000
        return ms


def _fns():
    dense, keep = (lambda: None), (lambda: None)
    return dense, keep


def test_stopping_rule_stops_once_resolved():
    clock = FakeClock()
    dense, keep = _fns()
    timer = FakeTimer(clock, {dense: 20.0, keep: 10.0}, noise=0.05)
    res = time_until_resolved(
        [dense, keep], ["dense", "keep"], target=0.05, min_rounds=10, step=10, max_seconds=1e6, timer=timer, clock=clock
    )
    assert res.resolved and not res.capped
    assert relative_halfwidth(res.speedups[0]) <= 0.05
    assert res.speedups[0].lo < 2.0 < res.speedups[0].hi
    assert res.rounds == 10  # 5 % log-noise on each of 10 paired rounds is already resolved
    assert "within +-5%" in res.summary()


def test_stopping_rule_says_when_the_cap_is_hit():
    clock = FakeClock()
    dense, keep = _fns()
    timer = FakeTimer(clock, {dense: 20.0, keep: 10.0}, noise=2.0)  # far too noisy to resolve
    res = time_until_resolved(
        [dense, keep], ["dense", "keep"], target=0.05, min_rounds=10, step=10, max_seconds=2.0, timer=timer, clock=clock
    )
    assert res.capped and not res.resolved
    assert res.seconds >= 2.0 and res.rounds % 10 == 0
    assert "TIME CAP HIT" in res.summary()


def test_stopping_rule_without_target_times_min_rounds():
    clock = FakeClock()
    dense, keep = _fns()
    timer = FakeTimer(clock, {dense: 20.0, keep: 10.0}, noise=2.0)
    res = time_until_resolved([dense, keep], ["d", "k"], target=0, min_rounds=6, timer=timer, clock=clock)
    assert res.rounds == 6 and not res.capped


def test_profile_until_ci_reports_its_stop_and_rejects_bad_values(tiny_checkpoint, capsys):
    from cass_deploy.cli import main

    args = ["profile", str(tiny_checkpoint), "--backend", "onnxruntime", "--sweep", "0.5", "--threads", "1"]
    assert main([*args, "--warmup", "1", "--iters", "4", "--until-ci", "0.05", "--max-time", "2"]) == 0
    out = capsys.readouterr().out
    assert "stopping rule:" in out and ("within +-5%" in out or "TIME CAP HIT" in out)
    assert main([*args, "--until-ci", "1.5"]) == 2
    assert "--until-ci" in capsys.readouterr().err
