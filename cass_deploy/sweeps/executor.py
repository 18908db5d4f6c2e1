"""The units of a sweep (``ablate``'s trainings, ``tune``'s candidates and its timing) run here:
in this process, or as Ray tasks on a local Ray or a cluster (SPEC §7d).

* ``jobs == 1`` without an address runs every unit in this process, one after the other, and
  never imports Ray. Otherwise Ray runs them: a local Ray on this machine's cores (started here
  and shut down at the end, or the one already initialised in this process), or the cluster at
  ``address`` (``--address`` or ``RAY_ADDRESS``: ``host:6379``, ``ray://host:10001``, ``auto``).
* Each unit reserves ``cpus_per_run`` CPUs (default: the threads it is given) and
  ``gpus_per_run`` GPUs; Ray runs as many at once as the nodes hold, at most ``jobs``.
* Results come back as **returned objects** (the files a unit made travel as bytes inside its
  result), and ``on_result`` sees each one in the driver as it arrives: nothing needs a shared
  file system for the outputs. Inputs (a checkpoint, a dataset directory, a config file) are read
  by path, so on a cluster they must be at the same path on every node (docs/distributed.md).
* A unit that raises is retried ``retries`` times (Ray ``retry_exceptions``), a worker that dies
  mid-unit likewise (Ray ``max_retries`` covers system failures); what still fails is returned as
  :class:`UnitFailure` without losing the other units. An :class:`InputError` is not retried: it
  stops the sweep with its message (exit 2). Ctrl-C cancels the units in flight (``ray.cancel``);
  what had arrived is kept, so the sweep resumes.
* An ``exclusive`` unit (tune's timing) holds :data:`PROFILE_SLOT`, a custom resource one unit
  holds at a time (the local node is started with one), and every CPU of its node: it waits until
  the node is idle and nothing else is scheduled there while it runs.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cass_deploy.backends.probe import is_available, lazy_import
from cass_deploy.errors import BackendUnavailable, InputError
from cass_deploy.io_utils import atomic_dir

ray = lazy_import("ray", backend="ray", purpose="sweeps on Ray")

#: the custom Ray resource a timing unit holds; start the timing node with one of it
PROFILE_SLOT = "cass_profile_slot"


@dataclass(frozen=True)
class SweepOptions:
    """Where and how the units run (the ``--jobs``, ``--address``, ``--cpus-per-run``,
    ``--gpus-per-run`` and ``--retries`` of ``ablate`` and ``tune``).

    ``jobs``: units at a time (None: as many as the CPUs hold; 1 without an address: in this
    process, no Ray). ``address``: a Ray cluster (None: ``RAY_ADDRESS``, else a local Ray)."""

    jobs: int | None = 1
    address: str | None = None
    cpus_per_run: float | None = None
    gpus_per_run: float = 0.0
    retries: int = 2

    def __post_init__(self) -> None:
        for flag, value, low in (("--jobs", self.jobs, 1), ("--retries", self.retries, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InputError(f"{flag} must be an integer >= {low}, got {value!r}")
        if self.cpus_per_run is not None and not self.cpus_per_run > 0:
            raise InputError(f"--cpus-per-run must be a number > 0, got {self.cpus_per_run!r}")
        if not self.gpus_per_run >= 0:
            raise InputError(f"--gpus-per-run must be a number >= 0, got {self.gpus_per_run!r}")

    @property
    def cluster(self) -> str | None:
        """The cluster address asked for: ``address`` or ``RAY_ADDRESS`` (None: no cluster)."""
        return self.address or os.environ.get("RAY_ADDRESS") or None

    @property
    def in_process(self) -> bool:
        """Every unit in this process, without Ray: ``jobs == 1`` and no cluster, or (``jobs``
        not given) Ray not installed."""
        if self.cluster is not None:
            return False
        return self.jobs == 1 or (self.jobs is None and not is_available("ray"))


@dataclass(frozen=True)
class Unit:
    """One unit of a sweep: ``fn(*args)`` (a module-level function: Ray ships it by reference)."""

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    exclusive: bool = False


@dataclass(frozen=True)
class UnitFailure:
    """A unit that still failed after ``attempts`` tries: its one-line error."""

    key: str
    attempts: int
    error: str

    def line(self) -> str:
        return f"{self.key}: {self.error} (after {self.attempts} tries)"


def _call(fn: Callable[..., Any], args: tuple) -> tuple[str, Any]:
    """Run one unit -> ("ok", value), or ("input", message) for an InputError (not retried)."""
    try:
        return "ok", fn(*args)
    except InputError as exc:
        return "input", str(exc)


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the unit's own exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".strip()


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """A TCP connection to ``host:port`` (``ray://`` stripped) within ``timeout`` s, else InputError;
    ``auto`` / ``local`` are left to Ray."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"--address must be host:port, ray://host:port or auto, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"cannot reach a Ray cluster at --address {address}: {exc.strerror or exc}") from None


class Executor:
    """Runs :class:`Unit` lists as the module docstring says; a context manager (connects to or
    starts Ray on entry, checks that the cluster can hold a unit, shuts a Ray it started down)."""

    def __init__(self, opts: SweepOptions, *, exclusive: bool = False, log: Callable[[str], None] = print) -> None:
        self.opts = opts
        self.needs_slot = exclusive
        self.log = log
        self._owned = False
        self.where = "this process"
        self.cpus = float(os.cpu_count() or 1)
        self.node_cpus = self.cpus
        self.threads: int | None = None

    def __enter__(self) -> Executor:
        if self.opts.in_process:
            if self.opts.jobs is None:
                self.log("Ray is not installed (pip install 'cass-deploy[distributed]'): units run in this process")
            if self.opts.gpus_per_run > 0 and not is_available("cuda"):
                raise InputError(f"--gpus-per-run {self.opts.gpus_per_run:g}: this machine has no CUDA GPU")
            return self
        try:
            self._connect()
            self._check_resources()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owned:
            ray.shutdown()
            self._owned = False

    def _connect(self) -> None:
        address = self.opts.cluster
        if address is not None:
            _check_reachable(address)
        if ray.is_initialized():  # e.g. the test session's local Ray
            self.where = "the Ray of this process"
            return
        kw: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
        if address is None:  # "local": a new Ray of our own, even when a cluster runs on this machine
            kw.update(num_cpus=os.cpu_count() or 1, resources={PROFILE_SLOT: 1}, object_store_memory=512 << 20)
            # Ray starts its workers 15 nice levels down by default: a timing unit at nice 15 loses
            # the CPU to Ray's own processes and the driver (tune's keep-0.5 p50 16-18 ms on Ray
            # against 9.7 ms in a plain profile, IQR 7 ms, on this 2-core machine)
            kw.update(include_dashboard=False, _system_config={"worker_niceness": 0})
        try:
            self._init(address, kw)
        except Exception as exc:  # noqa: BLE001 - Ray raises plain Exception when its local node does not start
            if address is None:
                raise BackendUnavailable(
                    f"the local Ray did not start ({_one_line(exc)}); --jobs 1 runs the units in this process"
                ) from None
            hint = "" if os.environ.get("RAY_AUTH_MODE") else " (token authentication? set RAY_AUTH_MODE=token)"
            raise InputError(f"cannot join the Ray cluster at --address {address}: {_one_line(exc)}{hint}") from None
        self._owned = True
        self.where = f"the Ray cluster at {address}" if address else "a local Ray"

    @staticmethod
    def _init(address: str | None, kw: dict[str, Any], tries: int = 3) -> None:
        """``ray.init``; a local Ray is started again (``tries`` in all) when its node does not come
        up within Ray's fixed 30 s (seen on a starved 2-core machine), a cluster is asked once."""
        for attempt in range(1, tries + 1):
            try:
                ray.init(address=address or "local", **kw)
                return
            except Exception:
                if address is not None or attempt == tries:
                    raise
                ray.shutdown()

    def _check_resources(self) -> None:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        most = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU", PROFILE_SLOT)}
        self.cpus = float(ray.cluster_resources().get("CPU", 0.0))
        self.node_cpus = most["CPU"]
        g, c = self.opts.gpus_per_run, self.opts.cpus_per_run
        if g > most["GPU"]:
            raise InputError(
                f"--gpus-per-run {g:g}: no node of {self.where} has {g:g} GPU(s) "
                f"(the most on one node: {most['GPU']:g})"
            )
        if c is not None and c > most["CPU"]:
            raise InputError(
                f"--cpus-per-run {c:g}: no node of {self.where} has {c:g} CPUs (the most on one node: {most['CPU']:g})"
            )
        if self.needs_slot and most[PROFILE_SLOT] < 1:
            raise InputError(
                f"no node of {self.where} offers the {PROFILE_SLOT} resource that timing needs; start the "
                f"timing node with: ray start ... --resources='{{\"{PROFILE_SLOT}\": 1}}'"
            )

    # ------------------------------------------------------------------ sizing

    @property
    def concurrency(self) -> int:
        """Units that run at once (at most)."""
        if self.opts.in_process:
            return 1
        fit = max(1, int(self.cpus // (self.opts.cpus_per_run or 1)))
        return min(fit, self.opts.jobs) if self.opts.jobs else fit

    def unit_threads(self, configured: int | None) -> int | None:
        """Threads for one unit: ``cpus_per_run`` when given, else the configured threads (or this
        machine's cores) split between the units that run at once; None in this process with
        nothing configured (the library's default)."""
        if self.opts.cpus_per_run:
            self.threads = max(1, int(self.opts.cpus_per_run))
        elif self.opts.in_process and configured is None:
            self.threads = None
        else:
            self.threads = max(1, (configured or os.cpu_count() or 1) // self.concurrency)
        return self.threads

    def describe(self, n: int, what: str, threads: int | None) -> str:
        each = f", {threads} thread(s) each" if threads else ""
        if self.opts.in_process:
            return f"{n} {what} in this process, one at a time{each}"
        return f"{n} {what} on {self.where} ({self.cpus:g} CPUs): up to {self.concurrency} at a time{each}"

    # ------------------------------------------------------------------ running

    def run(self, units: Sequence[Unit], on_result: Callable[[str, Any], None]) -> list[UnitFailure]:
        """Run ``units``; ``on_result(key, value)`` in this process as each arrives -> the failures."""
        if self.opts.in_process:
            return self._run_here(units, on_result)
        return self._run_ray(units, on_result)

    def _run_here(self, units: Sequence[Unit], on_result) -> list[UnitFailure]:
        failures = []
        for u in units:
            for attempt in range(1, self.opts.retries + 2):  # noqa: B007 - reported below
                try:
                    status, value = _call(u.fn, u.args)
                    break
                except Exception as exc:  # noqa: BLE001 - retried, then reported (Ctrl-C is no Exception)
                    error = _one_line(exc)
            else:
                failures.append(UnitFailure(u.key, attempt, error))
                continue
            if status == "input":
                raise InputError(value)
            on_result(u.key, value)
        return failures

    def _submit(self, u: Unit, remote: Any) -> Any:
        cpus = self.opts.cpus_per_run or min(self.threads or 1, self.node_cpus)
        kw: dict[str, Any] = dict(num_cpus=cpus, num_gpus=self.opts.gpus_per_run)
        if u.exclusive:
            kw.update(num_cpus=self._slot_node_cpus(), resources={PROFILE_SLOT: 1}, num_gpus=0)
        opts = remote.options(max_retries=self.opts.retries, retry_exceptions=True, **kw)
        return opts.remote(u.fn, u.args)

    def _slot_node_cpus(self) -> float:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get(PROFILE_SLOT, 0) >= 1]
        return max(n.get("CPU", 1.0) for n in nodes)

    def _run_ray(self, units: Sequence[Unit], on_result) -> list[UnitFailure]:
        remote = ray.remote(_call)
        todo, pending, failures = list(units), {}, []
        try:
            while todo or pending:
                while todo and len(pending) < self.concurrency:
                    u = todo.pop(0)
                    pending[self._submit(u, remote)] = u
                ready, _ = ray.wait(list(pending), num_returns=1)
                u = pending.pop(ready[0])
                try:
                    status, value = ray.get(ready[0])
                except Exception as exc:  # noqa: BLE001 - a RayTaskError / WorkerCrashedError: reported, others go on
                    failures.append(UnitFailure(u.key, self.opts.retries + 1, _one_line(exc)))
                    continue
                if status == "input":
                    raise InputError(value)
                on_result(u.key, value)
        except BaseException:  # Ctrl-C, an InputError, a failing on_result: stop what runs; results so far stay
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return failures


# --------------------------------------------------------------------------- a quiet node for timing


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat (None where there is none: not Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def node_busy(window_s: float = 0.5) -> float | None:
    """Fraction of this node's CPU time spent busy over the next ``window_s`` seconds, by every
    process (the caller sleeps meanwhile, so: by the others); None where it cannot be read."""
    a = _cpu_times()
    time.sleep(window_s)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def niceness_note() -> str | None:
    """A note when this process (a timing unit) runs at a lowered CPU priority: a Ray worker of a
    cluster started without ``RAY_worker_niceness=0`` runs 15 nice levels down, and loses the CPU
    to every other process of its node while it times."""
    try:
        nice = os.nice(0)
    except OSError:
        return None
    if nice < 5:
        return None
    return (
        f"the timing ran at nice {nice}: other processes of its node took the CPU first (start the "
        "timing node with RAY_worker_niceness=0 ray start ...)"
    )


def wait_until_quiet(
    busy_below: float = 0.15, max_wait_s: float = 60.0, window_s: float = 0.5, steady_looks: int = 3
) -> tuple[float, float | None]:
    """Before timing: wait until the other processes of this node use less than ``busy_below`` of
    its CPUs (a just-started local Ray spends its first seconds starting and importing its
    workers; another unit may be finishing), at most ``max_wait_s``, and no longer than the load
    keeps falling: ``steady_looks`` windows in a row without a drop of 5 points mean the load is
    someone else's steady work, which waiting does not end -> (seconds waited, the busy fraction
    last seen; None where /proc/stat cannot be read)."""
    t0 = time.monotonic()
    busy = node_busy(window_s)
    lowest, flat = busy, 0
    while busy is not None and busy >= busy_below and time.monotonic() - t0 < max_wait_s and flat < steady_looks:
        busy = node_busy(window_s)
        if busy is not None and busy < lowest - 0.05:
            lowest, flat = busy, 0
        else:
            flat += 1
    return time.monotonic() - t0, busy


# --------------------------------------------------------------------------- files as returned objects


def collect_files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` -> {relative POSIX path: bytes} (a unit's outputs, returned)."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def place_files(directory: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (:func:`collect_files`) under ``directory`` (plain writes: a scratch directory)."""
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    """Replace ``directory`` whole with ``files``, atomically (the driver's copy of a unit's outputs)."""
    with atomic_dir(directory, force=True) as tmp:
        place_files(tmp, files)
    return directory


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory on the node that runs the unit, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


__all__ = [
    "PROFILE_SLOT",
    "SweepOptions",
    "Unit",
    "UnitFailure",
    "Executor",
    "collect_files",
    "place_files",
    "write_files",
    "scratch",
    "node_busy",
    "niceness_note",
    "wait_until_quiet",
]
