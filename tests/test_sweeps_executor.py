"""The sweeps' executor (SPEC §7d): in this process without Ray, and on a local Ray of 2 CPUs
(``ray_session``, started once): results as they arrive, a failing unit retried then reported
without losing the others, a killed worker run again, Ctrl-C cancelling the units in flight,
and bad input refused before anything runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cass_deploy.errors import InputError
from cass_deploy.sweeps.executor import Executor, SweepOptions, Unit, UnitFailure

REPO = Path(__file__).resolve().parents[1]


def _units(tmp: Path):
    """``good`` returns 7; ``flaky`` raises on its first try; ``bad`` always raises. Each try leaves
    a file in ``tmp`` (the tries are counted from the files: they may run in other processes)."""

    def attempt(name):
        n = len(list(tmp.glob(f"{name}.*")))
        (tmp / f"{name}.{n}").write_text(str(os.getpid()))
        return n

    def good():
        attempt("good")
        return 7

    def flaky():
        if attempt("flaky") == 0:
            raise RuntimeError("first try fails")
        return "second"

    def bad():
        attempt("bad")
        raise ValueError("always\nboom")

    return [Unit("good", good), Unit("flaky", flaky), Unit("bad", bad)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_unit_is_retried_then_reported_without_losing_the_others(jobs, tmp_path, request):
    if jobs > 1:
        request.getfixturevalue("ray_session")
    arrived = {}
    with Executor(SweepOptions(jobs=jobs, retries=1), log=lambda s: None) as ex:
        failures = ex.run(_units(tmp_path), arrived.__setitem__)
    assert arrived == {"good": 7, "flaky": "second"}
    assert failures == [UnitFailure("bad", 2, "ValueError: boom")]
    assert len(list(tmp_path.glob("bad.*"))) == 2 and len(list(tmp_path.glob("flaky.*"))) == 2
    assert len(list(tmp_path.glob("good.*"))) == 1
    if jobs > 1:  # the units ran in Ray workers, not here
        assert (tmp_path / "good.0").read_text() != str(os.getpid())


def test_a_worker_killed_mid_unit_is_run_again(ray_session, tmp_path):
    def unit():
        mark = tmp_path / "killed"
        if not mark.exists():
            mark.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-unit
        return os.getpid()

    arrived = {}
    with Executor(SweepOptions(jobs=2, retries=1), log=lambda s: None) as ex:
        failures = ex.run([Unit("u", unit)], arrived.__setitem__)
    assert failures == [] and arrived["u"] != int((tmp_path / "killed").read_text())


def test_ctrl_c_cancels_the_units_in_flight(ray_session, tmp_path):
    """Ctrl-C (here: raised where the first result arrives) cancels the unit still running: its
    worker process is ended (``ray.cancel(force=True)``), it does not run on to its end."""

    def quick():
        return "quick"

    def slow():
        (tmp_path / "slow-pid").write_text(str(os.getpid()))
        time.sleep(60)
        return "slow"

    def interrupt(key, value):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), Executor(SweepOptions(jobs=2, retries=0), log=lambda s: None) as ex:
        ex.run([Unit("slow", slow), Unit("quick", quick)], interrupt)
    if (tmp_path / "slow-pid").exists():  # it had started: its worker must go away
        pid = int((tmp_path / "slow-pid").read_text())
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text():
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the cancelled unit's worker {pid} still runs")


def test_an_input_error_stops_the_sweep_with_its_message(ray_session):
    def refuse():
        raise InputError("bad value 42")

    with Executor(SweepOptions(jobs=2), log=lambda s: None) as ex, pytest.raises(InputError, match="bad value 42"):
        ex.run([Unit("r", refuse)], lambda k, v: None)


def test_bad_options_and_unusable_clusters_are_input_errors(ray_session):
    with pytest.raises(InputError, match="--gpus-per-run"):
        SweepOptions(gpus_per_run=-1)
    with pytest.raises(InputError, match="--jobs"):
        SweepOptions(jobs=0)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="127.0.0.1:1"), Executor(SweepOptions(address="127.0.0.1:1")):
        pass
    assert time.perf_counter() - t0 < 5
    with pytest.raises(InputError, match="--address must be"), Executor(SweepOptions(address="nohost")):
        pass
    with pytest.raises(InputError, match="--gpus-per-run 1: no node"), Executor(SweepOptions(jobs=2, gpus_per_run=1)):
        pass
    with pytest.raises(InputError, match="--cpus-per-run 64"), Executor(SweepOptions(jobs=2, cpus_per_run=64)):
        pass


def test_threads_split_between_the_units_at_once(ray_session):
    with Executor(SweepOptions(jobs=2), log=lambda s: None) as ex:
        assert ex.concurrency == 2 and ex.unit_threads(2) == 1 and ex.unit_threads(None) >= 1
    with Executor(SweepOptions(jobs=2, cpus_per_run=2), log=lambda s: None) as ex:
        assert ex.concurrency == 1 and ex.unit_threads(2) == 2
    ex = Executor(SweepOptions(jobs=1))
    assert ex.concurrency == 1 and ex.unit_threads(2) == 2 and ex.unit_threads(None) is None


def test_jobs_1_runs_in_this_process_and_never_imports_ray():
    code = (
        "import sys, math\n"
        "import cass_deploy.cli, cass_deploy.training.ablation, cass_deploy.tuning.tune\n"
        "from cass_deploy.sweeps.executor import Executor, SweepOptions, Unit\n"
        "got = {}\n"
        "with Executor(SweepOptions(jobs=1)) as ex:\n"
        "    assert ex.run([Unit('a', math.sqrt, (9.0,))], got.__setitem__) == []\n"
        "assert got == {'a': 3.0}, got\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_node_busy_and_waiting_for_a_quiet_node(monkeypatch):
    """The timing unit's wait: /proc/stat read twice; it stops when the others go quiet, or at its cap."""
    import cass_deploy.sweeps.executor as ex

    busy = ex.node_busy(0.05)
    assert busy is None or 0.0 <= busy <= 1.0
    seen = iter([0.9, 0.8, 0.1, 0.0])
    monkeypatch.setattr(ex, "node_busy", lambda window_s=0.5: next(seen))
    waited, last = ex.wait_until_quiet(0.15, max_wait_s=30.0)
    assert last == 0.1 and waited < 5.0  # three looks, not the cap
    falling = iter([0.95, 0.90, 0.80, 0.70, 0.60])
    monkeypatch.setattr(ex, "node_busy", lambda window_s=0.5: next(falling))
    waited, last = ex.wait_until_quiet(0.15, max_wait_s=0.0)
    assert last == 0.95 and waited < 5.0  # the cap, and it says how busy the node still was
    steady = iter([0.6, 0.58, 0.61, 0.59, 0.6, 0.1])
    monkeypatch.setattr(ex, "node_busy", lambda window_s=0.5: next(steady))
    waited, last = ex.wait_until_quiet(0.15, max_wait_s=30.0)
    assert last == 0.59  # three looks without a drop (not the 0.1 after): a steady load, waiting ends
    monkeypatch.undo()
    monkeypatch.setattr(ex, "_cpu_times", lambda: None)
    assert ex.node_busy(0.01) is None and ex.wait_until_quiet(0.15, 5.0)[1] is None  # no /proc/stat: no wait


def test_units_of_our_local_ray_run_at_the_drivers_priority(ray_session, monkeypatch):
    """Ray starts workers 15 nice levels down unless told otherwise; a timing unit there loses the
    CPU to every other process. Ours start at the driver's priority, and a lowered one is noted."""
    import os

    import cass_deploy.sweeps.executor as ex

    assert ray_session.get(ray_session.remote(lambda: os.nice(0)).remote()) == os.nice(0)
    monkeypatch.setattr(ex.os, "nice", lambda inc: 15)
    assert "nice 15" in ex.niceness_note() and "RAY_worker_niceness=0" in ex.niceness_note()
    monkeypatch.setattr(ex.os, "nice", lambda inc: 0)
    assert ex.niceness_note() is None
