"""Jetson power, GPU load and memory sampled during a run: tegrastats and jtop (jetson-stats).

Power accounting (``summarise_power``), by the rails the board reports:

========================  ==============================================  ==========================
board                     rails in tegrastats                             total power used
========================  ==============================================  ==========================
Orin NX, Orin Nano,       VDD_IN, VDD_CPU_GPU_CV, VDD_SOC                 VDD_IN (module input; the
Xavier NX, TX2                                                            other rails are inside it)
Jetson Nano               POM_5V_IN, POM_5V_GPU, POM_5V_CPU               POM_5V_IN (module input)
AGX Orin                  VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0,           sum of the named rails
                          VDDQ_VDD2_1V8AO (``NC`` = not connected)        (no input rail is measured)
anything else             -                                               sum of the named rails
========================  ==============================================  ==========================

AGX Orin has no module-input rail: VIN_SYS_5V0 is the module's 5 V system rail, *not* the total
(jetson-stats issue #344), so the total is the sum of its rails, as jtop computes it. That sum
excludes the carrier board and the module's input conversion losses, so it reads below a meter
at the wall. Energy per frame = mean total power (mW) x duration (s) / frames, in mJ.
"""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import BackendUnavailable, InputError

jtop_module = lazy_import("jtop")

# --------------------------------------------------------------------------- tegrastats parsing


@dataclass
class Rail:
    """One power rail: instantaneous and running-average power in mW."""

    cur_mw: float
    avg_mw: float | None = None


@dataclass
class TegrastatsSample:
    """One tegrastats line (or one jtop reading). Missing fields are None / empty.

    ``t`` is ``time.monotonic()`` when the sample was read (set by the samplers, None when parsed
    from text); ``timestamp`` is the date prefix newer tegrastats prints.
    """

    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    cpu_load: list[int | None] = field(default_factory=list)  # None = core off
    cpu_freq_mhz: list[int | None] = field(default_factory=list)
    gpu_load: float | None = None  # percent; mean over GPCs when reported per GPC
    gpu_freq_mhz: int | None = None  # max over the reported GPCs
    emc_load: int | None = None
    emc_freq_mhz: int | None = None
    temps_c: dict[str, float] = field(default_factory=dict)
    rails: dict[str, Rail] = field(default_factory=dict)
    timestamp: str | None = None
    t: float | None = None
    source: str = "tegrastats"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_TS_RE = re.compile(r"^\s*(\d{2}-\d{2}-\d{4}\s+\d{2}:\d{2}:\d{2})")
_RAM_RE = re.compile(r"\bRAM\s+(\d+)\s*/\s*(\d+)\s*MB", re.IGNORECASE)
_SWAP_RE = re.compile(r"\bSWAP\s+(\d+)\s*/\s*(\d+)\s*MB", re.IGNORECASE)
_CPU_RE = re.compile(r"\bCPU\s+\[([^\]]*)\](?:@(\d+))?")
_CPU_ITEM_RE = re.compile(r"^\s*(\d+)%(?:@(\d+))?\s*$")
_GR3D_RE = re.compile(r"\b(GR3D\d?)_FREQ\s+(?:(\d+)%)?(?:@\[?(\d+(?:\s*,\s*\d+)*)\]?)?")
_EMC_RE = re.compile(r"\bEMC_FREQ\s+(\d+)%(?:@(\d+))?")
# name@value C, optionally followed by "/avgC" (JetPack 7); -256 C marks an absent sensor.
_TEMP_RE = re.compile(r"\b([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C\b(?:/-?\d+(?:\.\d+)?C)?")
# NAME cur[mW]/avg[mW][/max[mW]]: the unit is optional (older boards print bare numbers).
_RAIL_RE = re.compile(
    r"(?<![\w@])([A-Z][A-Z0-9_]*)\s+(\d+(?:\.\d+)?)(?:mW)?\s*/\s*(\d+(?:\.\d+)?)(?:mW)?"
    r"(?:\s*/\s*\d+(?:\.\d+)?(?:mW)?)?(?=\s|$)",
    re.IGNORECASE,
)
# NAME curmW with no average: only accepted with the explicit unit (else "APE 174" would match).
_RAIL_SINGLE_RE = re.compile(r"(?<![\w@/])([A-Z][A-Z0-9_]*)\s+(\d+(?:\.\d+)?)mW(?=\s|$)", re.IGNORECASE)
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "NC"}
ABSENT_SENSOR_C = -256.0


def parse_tegrastats_line(line: str) -> TegrastatsSample | None:
    """Parse one tegrastats line by pattern (field order, spacing and case may vary).

    Returns None for a blank or unrecognised line (no RAM, GR3D or rail field), so a live
    stream can carry stray messages; raises InputError only if ``line`` is not a string.
    Temperatures of -256 C (sensor absent) and rails named ``NC`` (not connected) are dropped.
    """
    if not isinstance(line, str):
        raise InputError(f"a tegrastats line must be a string, got {type(line).__name__}")
    s = TegrastatsSample()
    if m := _TS_RE.search(line):
        s.timestamp = " ".join(m.group(1).split())
    if m := _RAM_RE.search(line):
        s.ram_used_mb, s.ram_total_mb = int(m.group(1)), int(m.group(2))
    if m := _SWAP_RE.search(line):
        s.swap_used_mb, s.swap_total_mb = int(m.group(1)), int(m.group(2))
    if m := _CPU_RE.search(line):
        shared_freq = int(m.group(2)) if m.group(2) else None
        for item in m.group(1).split(","):
            im = _CPU_ITEM_RE.match(item)
            if im:
                s.cpu_load.append(int(im.group(1)))
                s.cpu_freq_mhz.append(int(im.group(2)) if im.group(2) else shared_freq)
            elif item.strip().lower() == "off":
                s.cpu_load.append(None)
                s.cpu_freq_mhz.append(None)
    loads, freqs = [], []
    for _name, load, freq in _GR3D_RE.findall(line):
        if load:
            loads.append(float(load))
        if freq:
            freqs.extend(int(f) for f in freq.split(","))
    if loads:
        s.gpu_load = sum(loads) / len(loads)
    if freqs:
        s.gpu_freq_mhz = max(freqs)
    if m := _EMC_RE.search(line):
        s.emc_load = int(m.group(1))
        s.emc_freq_mhz = int(m.group(2)) if m.group(2) else None
    for name, value in _TEMP_RE.findall(line):
        v = float(value)
        if v > ABSENT_SENSOR_C:
            s.temps_c[name] = v
    for name, cur, avg in _RAIL_RE.findall(line):
        if name.upper() not in _NOT_RAILS:
            s.rails[name] = Rail(cur_mw=float(cur), avg_mw=float(avg))
    for name, cur in _RAIL_SINGLE_RE.findall(line):
        if name.upper() not in _NOT_RAILS and name not in s.rails:
            s.rails[name] = Rail(cur_mw=float(cur), avg_mw=None)
    if s.ram_total_mb is None and s.gpu_load is None and s.gpu_freq_mhz is None and not s.rails:
        return None
    return s


def parse_tegrastats_lines(lines: Iterable[str]) -> list[TegrastatsSample]:
    """Parse many lines, skipping blank lines, ``#`` comments and unrecognised lines."""
    out = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sample = parse_tegrastats_line(line)
        if sample is not None:
            out.append(sample)
    return out


# --------------------------------------------------------------------------- power summary

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def total_power_mw(sample: TegrastatsSample) -> tuple[float, str] | None:
    """Total power of one sample and the rule used (see the module docstring); None without rails."""
    if not sample.rails:
        return None
    upper = {k.upper(): k for k in sample.rails}
    for rail in INPUT_RAILS:
        if rail in upper:
            return sample.rails[upper[rail]].cur_mw, f"{rail} (module input)"
    names = sorted(sample.rails)
    return sum(r.cur_mw for r in sample.rails.values()), "sum of rails " + "+".join(names)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise_power(samples: Sequence[TegrastatsSample], duration_s: float, frames: int) -> dict[str, Any]:
    """Power, GPU load and memory over a run of ``duration_s`` seconds that processed ``frames``.

    Returns mean power per rail (mW), mean / max total power (mW) and the rule used, energy per
    frame (mJ) = mean total power x duration / frames, GPU load mean / max (%), RAM peak (MB),
    and the max of each temperature. Values with no data are None (e.g. tegrastats without root
    reports no rails on some releases, so energy is None there).
    """
    if (
        isinstance(duration_s, bool)
        or not isinstance(duration_s, (int, float))
        or not math.isfinite(duration_s)
        or duration_s <= 0
    ):
        raise InputError(f"duration_s must be a finite number > 0, got {duration_s!r}")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InputError(f"frames must be an integer >= 1, got {frames!r}")
    samples = list(samples)
    rail_values: dict[str, list[float]] = {}
    totals: list[float] = []
    rules: set[str] = set()
    for s in samples:
        for name, rail in s.rails.items():
            rail_values.setdefault(name, []).append(rail.cur_mw)
        tot = total_power_mw(s)
        if tot is not None:
            totals.append(tot[0])
            rules.add(tot[1])
    mean_total = _mean(totals)
    gpu = [s.gpu_load for s in samples if s.gpu_load is not None]
    ram = [s.ram_used_mb for s in samples if s.ram_used_mb is not None]
    ram_total = [s.ram_total_mb for s in samples if s.ram_total_mb is not None]
    temps: dict[str, float] = {}
    for s in samples:
        for name, v in s.temps_c.items():
            temps[name] = max(v, temps.get(name, -math.inf))
    return {
        "n_samples": len(samples),
        "duration_s": float(duration_s),
        "frames": frames,
        "source": sorted({s.source for s in samples}) or None,
        "rails_mean_mw": {k: sum(v) / len(v) for k, v in sorted(rail_values.items())},
        "total_power_rule": " | ".join(sorted(rules)) if rules else None,
        "total_power_mean_mw": mean_total,
        "total_power_max_mw": max(totals) if totals else None,
        "energy_per_frame_mj": mean_total * duration_s / frames if mean_total is not None else None,
        "gpu_load_mean_pct": _mean(gpu),
        "gpu_load_max_pct": max(gpu) if gpu else None,
        "ram_peak_mb": max(ram) if ram else None,
        "ram_total_mb": max(ram_total) if ram_total else None,
        "temp_max_c": temps,
    }


# --------------------------------------------------------------------------- samplers


class _SamplerBase:
    """Shared sample store; subclasses fill ``self._samples`` from a background thread."""

    def __init__(self) -> None:
        self._samples: list[TegrastatsSample] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.t_start: float | None = None
        self.t_stop: float | None = None

    def _add(self, sample: TegrastatsSample) -> None:
        with self._lock:
            self._samples.append(sample)

    @property
    def samples(self) -> list[TegrastatsSample]:
        """A copy of the samples collected so far."""
        with self._lock:
            return list(self._samples)

    def samples_between(self, t0: float, t1: float) -> list[TegrastatsSample]:
        """Samples read between two ``time.monotonic()`` instants (inclusive)."""
        return [s for s in self.samples if s.t is not None and t0 <= s.t <= t1]

    def summarise(self, duration_s: float, frames: int) -> dict[str, Any]:
        return summarise_power(self.samples, duration_s, frames)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    #: how long ``stop`` waits for the reader thread
    join_timeout_s = 5.0

    def _start_reader(self, name: str) -> None:
        """Mark the start and run ``self._read()`` on a daemon thread."""
        self._stop.clear()
        self.t_start = time.monotonic()
        self._thread = threading.Thread(target=self._guarded_read, name=name, daemon=True)
        self._thread.start()

    def _guarded_read(self) -> None:
        try:
            self._read()
        except self._read_errors as exc:  # surfaced through .error, not lost (unless we stopped it)
            if not self._stop.is_set():
                self.error = exc

    def stop(self) -> None:
        """Signal the reader, release the source (``_release``), join the reader thread."""
        self._stop.set()
        self.t_stop = time.monotonic()
        after_join = self._release()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout_s)
            self._thread = None
        if after_join is not None:
            after_join()

    #: exceptions of ``_read`` that end sampling (kept in ``.error``)
    _read_errors: tuple[type[BaseException], ...] = (Exception,)

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _read(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _release(self) -> Callable[[], None] | None:  # pragma: no cover - overridden
        """Stop the source; may return what to do once the reader thread has ended."""
        raise NotImplementedError


class TegrastatsSampler(_SamplerBase):
    """Run ``tegrastats --interval N`` in a subprocess and parse its lines on a reader thread.

    No ``--logfile``: lines are read from the pipe. Power rails may need root on some releases
    (run the profiler with sudo, or expect ``energy_per_frame_mj = None``).

    >>> with TegrastatsSampler(interval_ms=100) as sampler:   # doctest: +SKIP
    ...     run_benchmark()
    >>> sampler.summarise(duration_s, frames)                 # doctest: +SKIP
    """

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats", stop_timeout_s: float = 3.0) -> None:
        super().__init__()
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms < 1:
            raise InputError(f"interval_ms must be an integer >= 1, got {interval_ms!r}")
        self.interval_ms = interval_ms
        self.executable = executable
        self.stop_timeout_s = stop_timeout_s
        self.join_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen | None = None
        self.unparsed: list[str] = []

    def start(self) -> None:
        exe = shutil.which(self.executable)
        if exe is None:
            raise BackendUnavailable(f"{self.executable} not found; it ships with L4T on NVIDIA Jetson")
        cmd = [exe, "--interval", str(self.interval_ms)]
        stdbuf = shutil.which("stdbuf")
        if stdbuf:  # line-buffer the tool's stdout so samples arrive as they are printed
            cmd = [stdbuf, "-oL"] + cmd
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, bufsize=1
        )
        self._start_reader("tegrastats-reader")

    _read_errors = (OSError, ValueError)  # the pipe closed under us at stop

    def _read(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            now = time.monotonic()
            sample = parse_tegrastats_line(line)
            if sample is None:
                if line.strip() and len(self.unparsed) < 20:
                    self.unparsed.append(line.rstrip("\n"))
                continue
            sample.t = now
            self._add(sample)

    def _release(self) -> Callable[[], None] | None:
        """Terminate tegrastats (kill after ``stop_timeout_s``); close its pipe after the join."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self.stop_timeout_s)
        return proc.stdout.close if proc.stdout is not None else None


def jtop_available() -> bool:
    """jetson-stats is importable (its service may still be down: see ``jtop_service_ok``)."""
    return importlib.util.find_spec("jtop") is not None


def jtop_service_ok() -> bool:
    """Connect to the jtop service once; False when jetson-stats is missing or its service is down."""
    if not jtop_available():
        return False
    try:
        client = jtop_module.jtop()
        client.start()  # raises JtopException when the service is down or not permitted
        client.close()
        return True
    except Exception:
        return False


def sample_from_jtop(jetson: Any, t: float | None = None) -> TegrastatsSample:
    """Convert a running ``jtop`` client into a TegrastatsSample.

    Uses ``jetson.memory['RAM']`` (KB), ``jetson.gpu[name]['status']['load']`` (%) and
    ``['freq']['cur']`` (kHz), ``jetson.power['rail'][name]['power'|'avg']`` (mW) and
    ``jetson.temperature[name]['temp']`` (C), as documented by jetson-stats 4.x.
    """
    s = TegrastatsSample(source="jtop", t=t)
    try:
        ram = jetson.memory["RAM"]
        s.ram_used_mb, s.ram_total_mb = int(ram["used"] // 1024), int(ram["tot"] // 1024)
        swap = jetson.memory.get("SWAP") if hasattr(jetson.memory, "get") else None
        if swap:
            s.swap_used_mb, s.swap_total_mb = int(swap["used"] // 1024), int(swap["tot"] // 1024)
    except (KeyError, TypeError):
        pass
    loads, freqs = [], []
    try:
        for gpu in jetson.gpu.values():
            status, freq = gpu.get("status", {}), gpu.get("freq", {})
            if status.get("load") is not None:
                loads.append(float(status["load"]))
            if freq.get("cur") is not None:
                freqs.append(int(freq["cur"]) // 1000)
    except (AttributeError, TypeError):
        pass
    s.gpu_load = sum(loads) / len(loads) if loads else None
    s.gpu_freq_mhz = max(freqs) if freqs else None
    try:
        for name, rail in (jetson.power or {}).get("rail", {}).items():
            if name.upper() != "NC" and rail.get("power") is not None:
                s.rails[name] = Rail(
                    cur_mw=float(rail["power"]), avg_mw=float(rail["avg"]) if rail.get("avg") is not None else None
                )
    except (AttributeError, TypeError):
        pass
    try:
        for name, temp in (jetson.temperature or {}).items():
            value = temp.get("temp") if isinstance(temp, dict) else None
            if value is not None and temp.get("online", True) and float(value) > ABSENT_SENSOR_C:
                s.temps_c[name] = float(value)
    except (AttributeError, TypeError):
        pass
    return s


class JtopSampler(_SamplerBase):
    """Sample power, GPU load, RAM and temperatures through jetson-stats (``from jtop import jtop``)."""

    def __init__(self, interval_ms: int = 100) -> None:
        super().__init__()
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms < 1:
            raise InputError(f"interval_ms must be an integer >= 1, got {interval_ms!r}")
        self.interval_ms = interval_ms
        self._client: Any = None

    def start(self) -> None:
        try:
            client = jtop_module.jtop(interval=self.interval_ms / 1000.0)
        except ImportError:
            raise BackendUnavailable("jetson-stats is not installed; pip install cass-deploy[jetson]") from None
        try:
            client.start()
        except Exception as exc:
            raise BackendUnavailable(f"jtop service not reachable: {exc}") from None
        self._client = client
        self._start_reader("jtop-reader")

    def _read(self) -> None:
        client = self._client
        while not self._stop.is_set() and client.ok():
            self._add(sample_from_jtop(client, t=time.monotonic()))

    def _release(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead service connection must not raise
                pass


def make_sampler(interval_ms: int = 100) -> JtopSampler | TegrastatsSampler | None:
    """jtop when importable and its service answers, else tegrastats when on PATH, else None."""
    if jtop_service_ok():
        return JtopSampler(interval_ms=interval_ms)
    if shutil.which("tegrastats") is not None:
        return TegrastatsSampler(interval_ms=interval_ms)
    return None


__all__ = [
    "Rail",
    "TegrastatsSample",
    "parse_tegrastats_line",
    "parse_tegrastats_lines",
    "total_power_mw",
    "summarise_power",
    "TegrastatsSampler",
    "JtopSampler",
    "sample_from_jtop",
    "make_sampler",
    "jtop_available",
    "jtop_service_ok",
]
