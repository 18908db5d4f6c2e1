"""Jetson power (profiling/power.py): tegrastats parsing on recorded lines, the power summary, the
tegrastats and jtop samplers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

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

from conftest import needs_sh, write_tool

FIXTURES = Path(__file__).parent / "fixtures" / "tegrastats"


def _lines(name: str) -> list[str]:
    return [ln for ln in (FIXTURES / name).read_text().splitlines() if ln and not ln.startswith("#")]


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
    exe = write_tool(
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
    write_tool(tmp_path, "tegrastats", "exit 0\n")
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
