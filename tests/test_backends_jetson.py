"""Jetson helpers: board / L4T / JetPack, nvpmodel, jetson_clocks, tegrastats parsing and sampling."""

from __future__ import annotations

import re
import stat
import sys
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
from cass_deploy.errors import BackendUnavailable, InputError
from cass_deploy.profiling import power
from cass_deploy.profiling.power import (
    Rail,
    TegrastatsSample,
    TegrastatsSampler,
    parse_tegrastats_line,
    parse_tegrastats_lines,
    sample_from_jtop,
    summarise_power,
    total_power_mw,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tegrastats"


def _lines(name: str) -> list[str]:
    return [ln for ln in (FIXTURES / name).read_text().splitlines() if ln and not ln.startswith("#")]


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


def _write_tool(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


needs_sh = pytest.mark.skipif(sys.platform == "win32", reason="fake tools are POSIX shell scripts")


@needs_sh
def test_tools_absent_return_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert jetson.nvpmodel_mode() is None
    assert jetson.clocks_locked() is None
    assert jetson.jetson_clocks_state() is None


@needs_sh
def test_tools_present_failing_or_hanging(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    _write_tool(tmp_path, "nvpmodel", 'printf "NV Power Mode: MAXN\\n0\\n"\n')
    _write_tool(tmp_path, "jetson_clocks", 'echo "Please run as root"; exit 1\n')
    assert jetson.nvpmodel_mode() == jetson.PowerMode("MAXN", 0)
    assert jetson.clocks_locked() is None  # needs root -> unknown, not False
    _write_tool(tmp_path, "nvpmodel", "exec sleep 5\n")
    t0 = time.monotonic()
    assert jetson.nvpmodel_mode(timeout=0.3) is None
    assert time.monotonic() - t0 < 3


@needs_sh
def test_clocks_locked_from_tool_output(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    (tmp_path / "show.txt").write_text(_pin(CLOCKS_AGX_ORIN))
    _write_tool(tmp_path, "jetson_clocks", f'cat "{tmp_path / "show.txt"}"\n')
    assert jetson.clocks_locked() is True


# --------------------------------------------------------------------------- tegrastats fixtures


def test_every_fixture_documents_its_source_and_every_line_parses():
    files = sorted(FIXTURES.glob("*.txt"))
    assert len(files) >= 5
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("# ") and ("github" in first.lower() or "/" in first), f.name
        for line in _lines(f.name):
            s = parse_tegrastats_line(line)
            assert s is not None, (f.name, line[:60])
            assert s.ram_total_mb and s.rails and s.cpu_load and s.temps_c


def test_agx_orin_jp5_line():
    s = parse_tegrastats_line(_lines("agx_orin_jp5.txt")[0])
    assert s.timestamp == "04-11-2025 10:36:27"
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (4321, 62801, 19, 31400)
    assert s.cpu_load == [0] * 12 and s.cpu_freq_mhz == [729] * 12
    assert (s.gpu_load, s.gpu_freq_mhz) == (0.0, 0)  # GR3D_FREQ 0%@[0,0]
    assert (s.emc_load, s.emc_freq_mhz) == (0, 2133)
    assert s.temps_c == {
        "CPU": 44.562,
        "Tboard": 32.0,
        "SOC2": 40.093,
        "Tdiode": 33.0,
        "SOC0": 41.093,
        "tj": 44.343,
        "SOC1": 41.25,
    }  # CV0-2 and GPU at -256C dropped
    assert s.rails == {
        "VDD_GPU_SOC": Rail(2340, 2340),
        "VDD_CPU_CV": Rail(390, 390),
        "VIN_SYS_5V0": Rail(4025, 4025),
        "VDDQ_VDD2_1V8AO": Rail(301, 301),
    }  # NC dropped
    assert total_power_mw(s)[0] == 2340 + 390 + 4025 + 301


def test_agx_orin_jp5_two_gpc_fields():
    s = parse_tegrastats_line(_lines("agx_orin_jp5.txt")[1])  # GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0
    assert s.timestamp == "04-24-2023 00:01:24"
    assert (s.gpu_load, s.gpu_freq_mhz) == (0.0, 0)
    assert s.rails["VDD_GPU_SOC"].cur_mw == 2399 and s.rails["VIN_SYS_5V0"].cur_mw == 4032
    assert s.temps_c["tj"] == 42.593 and "GPU" not in s.temps_c


def test_agx_orin_jp6_padded_line():
    line = _lines("agx_orin_jp6.txt")[0]
    s = parse_tegrastats_line(line)
    assert s.timestamp is None
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (29114, 30697, 4915, 15348)
    assert s.cpu_load == [3, 4, 0, 1, 0, 100, 1, 0, 100, 0, 0, 0]
    assert s.cpu_freq_mhz == [729] * 4 + [2201] * 8
    assert (s.gpu_load, s.gpu_freq_mhz) == (0.0, 305)  # GR3D_FREQ 0%@[305,305]
    assert (s.emc_load, s.emc_freq_mhz) == (1, 2133)
    assert s.temps_c == {"cpu": 53.062, "soc2": 48.25, "soc0": 48.843, "gpu": 47.812, "tj": 53.062, "soc1": 48.968}
    assert s.rails == {"VDD_GPU_SOC": Rail(3205, 3205), "VDD_CPU_CV": Rail(4405, 4405), "VIN_SYS_5V0": Rail(4767, 4767)}
    # spacing does not matter: collapsing the runs of spaces gives the same sample
    assert parse_tegrastats_line(" ".join(line.split())) == s


def test_agx_orin_jp6_gpu_without_frequency():
    s = parse_tegrastats_line(_lines("agx_orin_jp6.txt")[1])
    assert (s.gpu_load, s.gpu_freq_mhz, s.emc_load) == (0.0, None, None)  # "GR3D_FREQ 0%", no EMC field
    assert s.ram_used_mb == 2448 and s.cpu_freq_mhz == [2201] * 12
    assert s.temps_c["cpu"] == 42.0 and s.rails["VDD_CPU_CV"] == Rail(988, 988)


def test_agx_orin_jp7_line():
    s = parse_tegrastats_line(_lines("agx_orin_jp7.txt")[0])
    assert s.timestamp == "07-25-2026 09:08:28"
    assert (s.gpu_load, s.gpu_freq_mhz) == (12.0, 1300)  # GR3D_FREQ 12%@[1300,1300]
    assert s.cpu_load[:3] == [23, 10, 4] and s.cpu_load[-1] == 27
    assert s.temps_c == {"cpu": 52.968, "soc2": 48.406, "soc0": 49.531, "gpu": 47.625}
    assert s.rails["VDD_GPU_SOC"] == Rail(5139, 5139) and s.rails["VIN_SYS_5V0"] == Rail(5500, 5500)
    assert s.swap_total_mb is None


def test_orin_nx_jp5_line():
    s = parse_tegrastats_line(_lines("orin_nx_jp5.txt")[0])
    assert (s.ram_used_mb, s.ram_total_mb) == (6334, 15388)
    assert s.cpu_load == [6, 9, 5, 16, None, None, None, None]  # four cores "off"
    assert s.cpu_freq_mhz == [729] * 4 + [None] * 4
    assert (s.gpu_load, s.gpu_freq_mhz) == (0.0, 611)
    assert s.temps_c["CV0"] == 45.812 and s.temps_c["GPU"] == 45.875 and s.temps_c["tj"] == 48.875
    assert s.rails == {"VDD_IN": Rail(5299, 5299), "VDD_CPU_GPU_CV": Rail(773, 773), "VDD_SOC": Rail(1424, 1424)}
    assert total_power_mw(s) == (5299, "VDD_IN (module input)")


def test_orin_nx_jp6_loaded_line():
    s = parse_tegrastats_line(_lines("orin_nx_jp6.txt")[0])
    assert s.timestamp == "05-15-2025 18:30:28"
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (6982, 7620, 2640, 16384)
    assert s.cpu_load == [97, 95, 95, 91, 88, 93] and s.cpu_freq_mhz[-1] == 247
    assert (s.gpu_load, s.gpu_freq_mhz) == (84.0, 713)  # GR3D_FREQ 84%@[713]
    assert (s.emc_load, s.emc_freq_mhz) == (18, 3199)
    assert s.temps_c["cv2"] == 60.875 and s.temps_c["gpu"] == 63.5
    assert s.rails == {"VDD_IN": Rail(17946, 15710), "VDD_CPU_GPU_CV": Rail(8896, 7585), "VDD_SOC": Rail(3923, 3515)}
    # engine fields such as "NVDEC 40%@115" or "APE 174" are not rails
    assert not {"NVDEC", "APE", "VIC", "NVENC"} & set(s.rails)


def test_legacy_rails_without_unit():
    nano, xnx, tx2 = (parse_tegrastats_line(x) for x in _lines("legacy_no_mw.txt"))
    assert nano.rails == {"POM_5V_IN": Rail(1022, 1022), "POM_5V_GPU": Rail(0, 0), "POM_5V_CPU": Rail(204, 204)}
    assert total_power_mw(nano) == (1022, "POM_5V_IN (module input)")
    assert (nano.gpu_load, nano.gpu_freq_mhz, nano.temps_c["PMIC"]) == (0.0, 76, 100.0)
    assert "IRAM" not in nano.rails and nano.swap_used_mb == 5
    assert xnx.rails["VDD_IN"] == Rail(4067, 4067) and xnx.gpu_load == 62.0
    assert tx2.cpu_load == [1, None, None, 1, 0, 2] and tx2.rails["VDD_SYS_DDR"] == Rail(883, 883)
    assert total_power_mw(tx2)[0] == 3056


def test_case_and_unit_variants():
    # synthetic: lower-case unit, no timestamp, rail without an average, GPU load without frequency
    s = parse_tegrastats_line("ram 1000/2000mb GR3D_FREQ 45% VDD_IN 1234mw/1200mw VDD_SOC 300mW")
    assert (s.ram_used_mb, s.ram_total_mb, s.gpu_load) == (1000, 2000, 45.0)
    assert s.rails == {"VDD_IN": Rail(1234, 1200), "VDD_SOC": Rail(300, None)}


@pytest.mark.parametrize(
    "line", ["", "   ", "hello world", "Please run as root", "tegrastats: Invalid argument", "APE 174 NVDEC 40%@115"]
)
def test_unrecognised_lines_return_none(line):
    assert parse_tegrastats_line(line) is None


def test_non_string_line_is_an_input_error():
    with pytest.raises(InputError):
        parse_tegrastats_line(b"RAM 1/2MB")


def test_parse_lines_skips_comments_and_junk():
    text = (FIXTURES / "legacy_no_mw.txt").read_text().splitlines() + ["garbage", ""]
    assert len(parse_tegrastats_lines(text)) == 3


# --------------------------------------------------------------------------- power summary


def _sample(rails: dict[str, float], gpu=None, ram=None, temps=None) -> TegrastatsSample:
    return TegrastatsSample(
        rails={k: Rail(v, v) for k, v in rails.items()},
        gpu_load=gpu,
        ram_used_mb=ram,
        ram_total_mb=8000 if ram else None,
        temps_c=temps or {},
    )


def test_summarise_power_with_input_rail():
    samples = [
        _sample({"VDD_IN": 5000, "VDD_SOC": 1000}, gpu=50, ram=100, temps={"tj": 50.0}),
        _sample({"VDD_IN": 6000, "VDD_SOC": 1200}, gpu=70, ram=300, temps={"tj": 61.5}),
        _sample({"VDD_IN": 7000, "VDD_SOC": 1400}, gpu=None, ram=200),
    ]
    out = summarise_power(samples, duration_s=2.0, frames=100)
    # mean VDD_IN = 6000 mW; energy = 6000 mW * 2 s / 100 frames = 120 mJ
    assert out["total_power_mean_mw"] == pytest.approx(6000)
    assert out["energy_per_frame_mj"] == pytest.approx(120.0)
    assert out["total_power_max_mw"] == 7000
    assert out["total_power_rule"] == "VDD_IN (module input)"
    assert out["rails_mean_mw"] == {"VDD_IN": pytest.approx(6000), "VDD_SOC": pytest.approx(1200)}
    assert out["gpu_load_mean_pct"] == pytest.approx(60) and out["gpu_load_max_pct"] == 70
    assert out["ram_peak_mb"] == 300 and out["ram_total_mb"] == 8000
    assert out["temp_max_c"] == {"tj": 61.5} and out["n_samples"] == 3


def test_summarise_power_sums_rails_without_input_rail():
    # AGX Orin style: no module-input rail -> total = sum of rails (NC never becomes a rail)
    samples = [parse_tegrastats_line(x) for x in _lines("agx_orin_jp6.txt")]
    out = summarise_power(samples, duration_s=0.5, frames=10)
    totals = [3205 + 4405 + 4767, 4940 + 988 + 4442]
    mean_total = sum(totals) / 2
    assert out["total_power_mean_mw"] == pytest.approx(mean_total)
    assert out["energy_per_frame_mj"] == pytest.approx(mean_total * 0.5 / 10)
    assert out["total_power_rule"].startswith("sum of rails")
    assert "VIN_SYS_5V0" in out["total_power_rule"]


def test_summarise_power_without_data():
    out = summarise_power([], duration_s=1.0, frames=1)
    assert out["n_samples"] == 0 and out["energy_per_frame_mj"] is None
    assert out["gpu_load_mean_pct"] is None and out["rails_mean_mw"] == {}
    no_rails = summarise_power([TegrastatsSample(gpu_load=10.0)], duration_s=1.0, frames=1)
    assert no_rails["energy_per_frame_mj"] is None and no_rails["gpu_load_mean_pct"] == 10.0


@pytest.mark.parametrize("duration, frames", [(0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0), (1.0, 2.5), (True, 1)])
def test_summarise_power_argument_errors(duration, frames):
    with pytest.raises(InputError):
        summarise_power([], duration_s=duration, frames=frames)


# --------------------------------------------------------------------------- samplers


@needs_sh
def test_tegrastats_sampler_reads_and_stops(tmp_path):
    lines = _lines("orin_nx_jp6.txt") + _lines("orin_nx_jp5.txt")
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\nnot a tegrastats line\n")
    exe = _write_tool(
        tmp_path,
        "tegrastats",
        f'echo "$@" > "{tmp_path / "args.txt"}"\nwhile true; do cat "{tmp_path / "lines.txt"}"; sleep 0.02; done\n',
    )
    sampler = TegrastatsSampler(interval_ms=20, executable=str(exe))
    with sampler:
        deadline = time.monotonic() + 5
        while len(sampler.samples) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    samples = sampler.samples
    assert len(samples) >= 4
    assert (tmp_path / "args.txt").read_text().split() == ["--interval", "20"]
    assert sampler._proc is None and sampler._thread is None and sampler.error is None
    ts = [s.t for s in samples]
    assert ts == sorted(ts) and sampler.t_start <= ts[0] and ts[-1] <= sampler.t_stop
    assert {s.rails["VDD_IN"].cur_mw for s in samples} <= {17946.0, 5299.0}
    assert "not a tegrastats line" in sampler.unparsed
    assert sampler.samples_between(sampler.t_start, sampler.t_stop) == samples
    n = len(samples)
    time.sleep(0.1)
    assert len(sampler.samples) == n  # nothing arrives after stop
    summary = sampler.summarise(duration_s=1.0, frames=10)
    assert summary["n_samples"] == n and summary["energy_per_frame_mj"] is not None


def test_tegrastats_sampler_missing_executable(tmp_path):
    with pytest.raises(BackendUnavailable):
        TegrastatsSampler(executable=str(tmp_path / "no-such-tegrastats")).start()
    with pytest.raises(InputError):
        TegrastatsSampler(interval_ms=0)


@needs_sh
def test_make_sampler_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(power, "jtop_service_ok", lambda: False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert power.make_sampler() is None
    _write_tool(tmp_path, "tegrastats", "exit 0\n")
    assert isinstance(power.make_sampler(interval_ms=50), TegrastatsSampler)
    monkeypatch.setattr(power, "jtop_service_ok", lambda: True)
    assert isinstance(power.make_sampler(), power.JtopSampler)


def test_jtop_service_absent_is_false():
    if power.jtop_available():
        pytest.skip("jetson-stats installed here")
    assert power.jtop_service_ok() is False
    with pytest.raises(BackendUnavailable):
        power.JtopSampler().start()


def test_sample_from_jtop_structure():
    class FakeJtop:  # the attribute layout documented by jetson-stats 4.x
        memory = {"RAM": {"tot": 7800 * 1024, "used": 2048 * 1024}, "SWAP": {"tot": 3900 * 1024, "used": 0}}
        gpu = {"gpu": {"status": {"load": 42.5}, "freq": {"cur": 612000}}}
        power = {
            "rail": {"VDD_IN": {"power": 5200, "avg": 5000}, "VDD_CPU_GPU_CV": {"power": 900, "avg": 850}},
            "tot": {"power": 5200, "avg": 5000},
        }
        temperature = {"cpu": {"temp": 48.5, "online": True}, "cv0": {"temp": -256.0, "online": False}}

    s = sample_from_jtop(FakeJtop(), t=1.5)
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_total_mb) == (2048, 7800, 3900)
    assert (s.gpu_load, s.gpu_freq_mhz) == (42.5, 612)
    assert s.rails == {"VDD_IN": Rail(5200, 5000), "VDD_CPU_GPU_CV": Rail(900, 850)}
    assert s.temps_c == {"cpu": 48.5} and s.source == "jtop" and s.t == 1.5
    assert total_power_mw(s) == (5200, "VDD_IN (module input)")


@pytest.mark.jetson
def test_real_board():
    info = read_board_info("/")
    assert info.is_jetson and info.l4t is not None
    sampler = power.make_sampler(interval_ms=100)
    assert sampler is not None
    with sampler:
        time.sleep(1.0)
    assert sampler.samples and sampler.samples[-1].ram_total_mb
