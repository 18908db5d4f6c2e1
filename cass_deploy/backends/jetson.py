"""NVIDIA Jetson facts: board / L4T / JetPack detection, power mode (nvpmodel) and clocks.

Power, GPU load and memory sampled during a run live in :mod:`cass_deploy.profiling.power`.

Everything here degrades to ``None`` off a Jetson: a missing tool, a tool that needs root, a
timeout or unexpected output never raises from the query functions. File readers take a
``root`` directory so tests can point them at a fake filesystem.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 5.0

# --------------------------------------------------------------------------- L4T -> JetPack
# L4T release -> JetPack version, from NVIDIA's JetPack archive as tabulated by jetson-stats
# (jtop/core/jetson_variables.py, NVIDIA_JETPACK). Unknown releases map to None, never to a guess;
# ``jetpack_major`` still gives the family from the L4T major version.
JETPACK_BY_L4T: dict[str, str] = {
    # JetPack 7
    "39.2.0": "7.2",
    "38.4.0": "7.1",
    "38.2.2": "7.0",
    "38.2.1": "7.0",
    "38.2.0": "7.0",
    # JetPack 6
    "36.5.0": "6.2.2",
    "36.4.7": "6.2.1",
    "36.4.4": "6.2.1",
    "36.4.3": "6.2",
    "36.4.2": "6.1 (rev 1)",
    "36.4.0": "6.1",
    "36.3.0": "6.0",
    "36.2.0": "6.0 DP",
    # JetPack 5
    "35.6.4": "5.1.6",
    "35.6.3": "5.1.5",
    "35.6.2": "5.1.5",
    "35.6.1": "5.1.5",
    "35.6.0": "5.1.4",
    "35.5.0": "5.1.3",
    "35.4.1": "5.1.2",
    "35.3.1": "5.1.1",
    "35.2.1": "5.1",
    "35.1.0": "5.0.2",
    "34.1.1": "5.0.1 DP",
    "34.1.0": "5.0 DP",
    # JetPack 4 (end of line)
    "32.7.6": "4.6.6",
    "32.7.5": "4.6.5",
    "32.7.4": "4.6.4",
    "32.7.3": "4.6.3",
    "32.7.2": "4.6.2",
    "32.7.1": "4.6.1",
    "32.6.1": "4.6",
}
JETPACK_MAJOR_BY_L4T_MAJOR = {32: 4, 34: 5, 35: 5, 36: 6, 38: 7, 39: 7}

_L4T_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)", re.IGNORECASE)


def parse_l4t_release(text: str) -> str | None:
    """``"# R36 (release), REVISION: 4.3, GCID: ..."`` -> ``"36.4.3"`` (None if not recognised)."""
    m = _L4T_RE.search(text or "")
    if not m:
        return None
    parts = [m.group(1)] + m.group(2).split(".")
    parts += ["0"] * (3 - len(parts))
    return ".".join(str(int(p)) for p in parts[:3])


def jetpack_from_l4t(l4t: str | None) -> str | None:
    """JetPack version for an exact L4T release such as ``"36.4.3"`` -> ``"6.2"``; None if unknown."""
    return JETPACK_BY_L4T.get(l4t) if l4t else None


def jetpack_major_from_l4t(l4t: str | None) -> int | None:
    """JetPack major version from the L4T major (R35 -> 5, R36 -> 6); None if unknown."""
    if not l4t:
        return None
    try:
        return JETPACK_MAJOR_BY_L4T_MAJOR.get(int(l4t.split(".")[0]))
    except ValueError:
        return None


# --------------------------------------------------------------------------- board

# model string fragment (lower case) -> export profile name; first match wins.
_PROFILE_BY_MODEL = (
    ("agx orin", "jetson-agx-orin"),
    ("orin nx", "jetson-orin-nx"),
    ("orin nano", "jetson-orin-nano"),
)


@dataclass(frozen=True)
class BoardInfo:
    """What the filesystem says about this board; every field may be None off a Jetson."""

    is_jetson: bool
    model: str | None = None
    l4t: str | None = None
    jetpack: str | None = None
    jetpack_major: int | None = None
    compatible: tuple[str, ...] = ()
    suggested_profile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["compatible"] = list(self.compatible)
        return out


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


def read_board_info(root: str | Path = "/") -> BoardInfo:
    """Read ``/proc/device-tree/model``, ``/proc/device-tree/compatible`` and ``/etc/nv_tegra_release``
    under ``root``. A board is a Jetson if ``nv_tegra_release`` exists or the device tree says
    ``nvidia,tegra``."""
    root = Path(root)
    model_raw = _read_text(root / "proc/device-tree/model")
    model = None
    if model_raw is not None:
        model = model_raw.replace("\x00", "").strip() or None
    compat_raw = _read_text(root / "proc/device-tree/compatible") or ""
    compatible = tuple(c.strip() for c in compat_raw.split("\x00") if c.strip())
    release = _read_text(root / "etc/nv_tegra_release")
    l4t = parse_l4t_release(release) if release is not None else None
    is_jetson = release is not None or any(c.startswith("nvidia,tegra") for c in compatible)
    suggested = None
    if model:
        low = model.lower()
        suggested = next((name for frag, name in _PROFILE_BY_MODEL if frag in low), None)
    return BoardInfo(
        is_jetson=is_jetson,
        model=model,
        l4t=l4t,
        jetpack=jetpack_from_l4t(l4t),
        jetpack_major=jetpack_major_from_l4t(l4t),
        compatible=compatible,
        suggested_profile=suggested,
    )


# --------------------------------------------------------------------------- external tools


def run_tool(cmd: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """stdout of ``cmd``, or None when the tool is absent, fails, needs root or times out."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout


@dataclass(frozen=True)
class PowerMode:
    """``nvpmodel -q``: the mode name (``MAXN``, ``15W`` ...) and its id when printed."""

    name: str
    mode_id: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NVP_NAME_RE = re.compile(r"NV Power Mode\s*:\s*(\S+)", re.IGNORECASE)
_NVP_ID_RE = re.compile(r"^\s*(?:mode\s*id\s*[:=]\s*)?(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


def parse_nvpmodel_query(text: str) -> PowerMode | None:
    """Parse ``nvpmodel -q`` output, e.g. ``"NV Power Mode: MAXN\\n0\\n"`` -> PowerMode("MAXN", 0)."""
    m = _NVP_NAME_RE.search(text or "")
    if not m:
        return None
    tail = text[m.end() :]
    mid = _NVP_ID_RE.search(tail)
    return PowerMode(name=m.group(1), mode_id=int(mid.group(1)) if mid else None)


def nvpmodel_mode(timeout: float = DEFAULT_TIMEOUT_S) -> PowerMode | None:
    """Current power mode from ``nvpmodel -q``; None off a Jetson or when the query fails."""
    out = run_tool(["nvpmodel", "-q"], timeout=timeout)
    return parse_nvpmodel_query(out) if out is not None else None


@dataclass(frozen=True)
class ClockState:
    """``jetson_clocks --show``: current / max frequencies (Hz for GPU/EMC, kHz for CPU)."""

    locked: bool
    gpu_cur: int | None
    gpu_min: int | None
    gpu_max: int | None
    cpu_online: int
    cpu_at_max: int
    emc_cur: int | None = None
    emc_max: int | None = None
    power_mode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FREQ_RE = re.compile(r"MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)")
_CPU_LINE_RE = re.compile(r"^cpu\d+\s*:\s*Online=(\d)(.*)$", re.MULTILINE)
_GPU_LINE_RE = re.compile(r"^GPU\s+(MinFreq=.*)$", re.MULTILINE)
_EMC_LINE_RE = re.compile(r"^EMC\s+(MinFreq=.*)$", re.MULTILINE)


def parse_jetson_clocks_show(text: str) -> ClockState | None:
    """Parse ``jetson_clocks --show``; None when no GPU or CPU frequency line is present.

    ``locked`` is True when the GPU and every online CPU run at MaxFreq *and* MinFreq == MaxFreq.
    ``CurrentFreq == MaxFreq`` alone also holds for any busy core under DVFS; ``jetson_clocks``
    pins the minimum to the maximum, which is what makes latency repeatable.
    """
    text = text or ""
    cpus = []
    for online, rest in _CPU_LINE_RE.findall(text):
        if online != "1":
            continue
        m = _FREQ_RE.search(rest)
        if m:
            cpus.append(tuple(int(v) for v in m.groups()))
    gpu = None
    gm = _GPU_LINE_RE.search(text)
    if gm and (m := _FREQ_RE.search(gm.group(1))):
        gpu = tuple(int(v) for v in m.groups())
    if gpu is None and not cpus:
        return None
    emc = None
    em = _EMC_LINE_RE.search(text)
    if em and (m := _FREQ_RE.search(em.group(1))):
        emc = tuple(int(v) for v in m.groups())
    pinned = [f for f in cpus + ([gpu] if gpu else []) if f[0] == f[1] == f[2]]
    locked = gpu is not None and len(pinned) == len(cpus) + 1
    pm = _NVP_NAME_RE.search(text)
    return ClockState(
        locked=locked,
        gpu_cur=gpu[2] if gpu else None,
        gpu_min=gpu[0] if gpu else None,
        gpu_max=gpu[1] if gpu else None,
        cpu_online=len(cpus),
        cpu_at_max=sum(1 for f in cpus if f[2] == f[1]),
        emc_cur=emc[2] if emc else None,
        emc_max=emc[1] if emc else None,
        power_mode=pm.group(1) if pm else None,
    )


def jetson_clocks_state(timeout: float = DEFAULT_TIMEOUT_S) -> ClockState | None:
    """``jetson_clocks --show`` parsed; None when absent or not permitted (it needs root)."""
    out = run_tool(["jetson_clocks", "--show"], timeout=timeout)
    return parse_jetson_clocks_show(out) if out is not None else None


def clocks_locked(timeout: float = DEFAULT_TIMEOUT_S) -> bool | None:
    """True / False from ``jetson_clocks --show``; None when unknown (not a Jetson, not root)."""
    state = jetson_clocks_state(timeout)
    return state.locked if state is not None else None


__all__ = [
    "BoardInfo",
    "read_board_info",
    "parse_l4t_release",
    "jetpack_from_l4t",
    "jetpack_major_from_l4t",
    "JETPACK_BY_L4T",
    "PowerMode",
    "parse_nvpmodel_query",
    "nvpmodel_mode",
    "ClockState",
    "parse_jetson_clocks_show",
    "jetson_clocks_state",
    "clocks_locked",
    "run_tool",
]
