"""Jetson helpers (backends/jetson.py): board / L4T / JetPack, nvpmodel and jetson_clocks parsing and
the tools behind them; on a real board, board info and a power sampler."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from cass_deploy.backends import jetson
from cass_deploy.backends.jetson import (
    jetpack_from_l4t,
    jetpack_major_from_l4t,
    parse_jetson_clocks_show,
    parse_l4t_release,
    parse_nvpmodel_query,
    read_board_info,
)
from cass_deploy.profiling import power

from conftest import needs_sh, write_tool

# --------------------------------------------------------------------------- L4T / JetPack / board


@pytest.mark.parametrize(
    "text, l4t, jetpack, major",
    [
        (
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 "
            "01:49:37 UTC 2025",
            "36.4.3",
            "6.2",
            6,
        ),
        (
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 "
            "19:57:35 UTC 2023",
            "35.4.1",
            "5.1.2",
            5,
        ),
        ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64", "36.3.0", "6.0", 6),
        ("# R35 (release), REVISION: 6.1", "35.6.1", "5.1.5", 5),
        ("# R36 (release), REVISION: 9.9", "36.9.9", None, 6),  # unknown release: no guess
    ],
)
def test_l4t_release_and_jetpack(text, l4t, jetpack, major):
    assert parse_l4t_release(text) == l4t
    assert jetpack_from_l4t(l4t) == jetpack
    assert jetpack_major_from_l4t(l4t) == major


def test_l4t_release_rejects_other_text():
    assert parse_l4t_release("Ubuntu 22.04") is None
    assert jetpack_from_l4t(None) is None and jetpack_major_from_l4t("x.y") is None


def _fake_root(tmp_path: Path, model: str, release: str | None, compatible: str) -> Path:
    dt = tmp_path / "proc" / "device-tree"
    dt.mkdir(parents=True)
    (dt / "model").write_bytes(model.encode() + b"\x00")
    (dt / "compatible").write_bytes(compatible.encode())
    if release is not None:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "nv_tegra_release").write_text(release + "\n")
    return tmp_path


def test_board_info_on_fake_agx_orin(tmp_path):
    root = _fake_root(
        tmp_path,
        "NVIDIA Jetson AGX Orin Developer Kit",
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64",
        "nvidia,p3737-0000+p3701-0005\x00nvidia,p3701-0005\x00nvidia,tegra234\x00",
    )
    info = read_board_info(root)
    assert info.is_jetson
    assert info.model == "NVIDIA Jetson AGX Orin Developer Kit"
    assert (info.l4t, info.jetpack, info.jetpack_major) == ("36.4.3", "6.2", 6)
    assert info.compatible[-1] == "nvidia,tegra234"
    assert info.suggested_profile == "jetson-agx-orin"
    assert info.to_dict()["compatible"] == list(info.compatible)


@pytest.mark.parametrize(
    "model, profile",
    [
        ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
        ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "jetson-orin-nx"),
        ("NVIDIA Jetson Xavier NX Developer Kit", None),
    ],
)
def test_board_info_suggests_profile_from_model(tmp_path, model, profile):
    root = _fake_root(tmp_path, model, "# R35 (release), REVISION: 4.1", "nvidia,tegra234\x00")
    info = read_board_info(root)
    assert info.suggested_profile == profile
    assert info.jetpack == "5.1.2"


def test_board_info_off_jetson(tmp_path):
    info = read_board_info(tmp_path)
    assert not info.is_jetson
    assert (info.model, info.l4t, info.jetpack, info.suggested_profile) == (None, None, None, None)


def test_board_info_from_device_tree_alone(tmp_path):
    root = _fake_root(tmp_path, "NVIDIA Orin Nano Developer Kit", None, "nvidia,tegra234\x00")
    info = read_board_info(root)
    assert info.is_jetson and info.l4t is None and info.jetpack is None


# --------------------------------------------------------------------------- nvpmodel / jetson_clocks


def test_parse_nvpmodel_query():
    # "NV Power Mode: MAXN_SUPER\n2\n" is the form quoted by several public Orin Nano Super setups
    assert parse_nvpmodel_query("NV Power Mode: MAXN_SUPER\n2\n") == jetson.PowerMode("MAXN_SUPER", 2)
    assert parse_nvpmodel_query("NV Fan Mode:quiet\nNV Power Mode: 15W\n1\n") == jetson.PowerMode("15W", 1)
    assert parse_nvpmodel_query("NV Power Mode: MAXN") == jetson.PowerMode("MAXN", None)
    assert parse_nvpmodel_query("nvpmodel: command failed") is None
    assert parse_nvpmodel_query("") is None


# `jetson_clocks --show`, recorded on a Jetson AGX Orin 64GB, JetPack 5.1 (catid's AGX Orin setup
# blog post, 2023-04-24); kept verbatim (trailing blanks included) in tests/fixtures/jetson_clocks/.
CLOCKS_AGX_ORIN = (Path(__file__).parent / "fixtures" / "jetson_clocks" / "agx_orin_jp5.txt").read_text()


def _pin(text: str, pin_min: bool = True) -> str:
    """What jetson_clocks does: every CPU / GPU / EMC line at its MaxFreq (and MinFreq raised to it)."""

    def repl(m):
        lo = m.group(2) if pin_min else m.group(1)
        return f"MinFreq={lo} MaxFreq={m.group(2)} CurrentFreq={m.group(2)}"

    return re.sub(r"MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=\d+", repl, text)


def test_parse_jetson_clocks_show_recorded_unlocked():
    st = parse_jetson_clocks_show(CLOCKS_AGX_ORIN)
    assert st.locked is False
    assert (st.gpu_cur, st.gpu_min, st.gpu_max) == (306000000, 306000000, 1300500000)
    # cpu0, 1, 2, 4, 5, 8 run at 2201600; the other six below
    assert (st.cpu_online, st.cpu_at_max) == (12, 6)
    assert (st.emc_cur, st.emc_max) == (2133000000, 3199000000)
    assert st.power_mode == "MAXN"


def test_parse_jetson_clocks_show_locked_and_busy_but_unpinned():
    locked = parse_jetson_clocks_show(_pin(CLOCKS_AGX_ORIN))
    assert locked.locked is True and locked.cpu_at_max == 12 and locked.gpu_cur == 1300500000
    # every clock at max but MinFreq still low: a busy board under DVFS, not jetson_clocks
    busy = parse_jetson_clocks_show(_pin(CLOCKS_AGX_ORIN, pin_min=False))
    assert busy.locked is False and busy.cpu_at_max == 12


def test_parse_jetson_clocks_show_unknown_output():
    assert parse_jetson_clocks_show("Please run as root") is None
    assert parse_jetson_clocks_show("") is None


@needs_sh
def test_tools_absent_return_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert jetson.nvpmodel_mode() is None
    assert jetson.clocks_locked() is None
    assert jetson.jetson_clocks_state() is None


@needs_sh
def test_tools_present_failing_or_hanging(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    write_tool(tmp_path, "nvpmodel", 'printf "NV Power Mode: MAXN\\n0\\n"\n')
    write_tool(tmp_path, "jetson_clocks", 'echo "Please run as root"; exit 1\n')
    assert jetson.nvpmodel_mode() == jetson.PowerMode("MAXN", 0)
    assert jetson.clocks_locked() is None  # needs root -> unknown, not False
    write_tool(tmp_path, "nvpmodel", "exec sleep 5\n")
    t0 = time.monotonic()
    assert jetson.nvpmodel_mode(timeout=0.3) is None
    assert time.monotonic() - t0 < 3


@needs_sh
def test_clocks_locked_from_tool_output(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    (tmp_path / "show.txt").write_text(_pin(CLOCKS_AGX_ORIN))
    write_tool(tmp_path, "jetson_clocks", f'cat "{tmp_path / "show.txt"}"\n')
    assert jetson.clocks_locked() is True


@pytest.mark.jetson
def test_real_board():
    info = read_board_info("/")
    assert info.is_jetson and info.l4t is not None
    sampler = power.make_sampler(interval_ms=100)
    assert sampler is not None
    with sampler:
        time.sleep(1.0)
    assert sampler.samples and sampler.samples[-1].ram_total_mb
