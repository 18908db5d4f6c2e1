"""Engines say what built them: the manifest's ``built_on`` facts, compared with the device before loading."""

from __future__ import annotations

import sys

import pytest

from cass_deploy.cli import main
from cass_deploy.errors import InputError
from cass_deploy.export.device_engine import engine_from_export
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest
from cass_deploy.runtime import trt_engine
from cass_deploy.runtime.manifest import Manifest
from cass_deploy.runtime.trt_engine import DeviceFacts, compare_device, device_facts
from cass_deploy.runtime.trt_runner import TrtRunner

BUILT = DeviceFacts(
    tensorrt="10.3.0",
    gpu="Orin (nvgpu)",
    compute_capability="8.7",
    cuda="12.6",
    cuda_driver="12.6",
    board="NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
    l4t="36.4.3",
    jetpack="6.2",
    power_mode="MAXN",
)


def _with(**kw) -> DeviceFacts:
    return DeviceFacts.from_dict({**BUILT.to_dict(), **kw})


@pytest.mark.parametrize(
    "running, refused",
    [
        (dict(tensorrt="10.7.0"), "tensorrt: built with 10.3.0, running 10.7.0"),
        (
            dict(gpu="NVIDIA GeForce RTX 4090", compute_capability="8.9"),
            "compute capability: built with 8.7, running 8.9",
        ),
        (dict(l4t="36.3.0", jetpack="6.0"), "l4t: built with 36.4.3, running 36.3.0"),
    ],
)
def test_binding_facts_refuse_and_others_are_noted(running, refused):
    refusals, notes = compare_device(BUILT, _with(**running))
    assert refused in refusals
    same, none = compare_device(BUILT, BUILT)
    assert same == [] and none == []
    # CUDA and the power mode change numbers, not whether the engine loads
    refusals, notes = compare_device(BUILT, _with(power_mode="15W", cuda_driver="12.8"))
    assert refusals == [] and set(notes) == {
        "power mode: built with MAXN, running 15W",
        "cuda driver: built with 12.6, running 12.8",
    }
    # an unknown fact (older manifest, not a Jetson) is not compared
    assert compare_device(DeviceFacts(tensorrt="10.3.0"), _with(l4t=None)) == ([], [])


def test_compatible_engines_relax_exactly_their_fact():
    newer = _with(tensorrt="10.16.1")
    assert compare_device(BUILT, newer, version_compatible=True)[0] == []
    assert compare_device(BUILT, _with(tensorrt="11.0.0"), version_compatible=True)[0]  # not across majors
    assert compare_device(BUILT, _with(tensorrt="10.2.0"), version_compatible=True)[0]  # not older
    ampere = _with(gpu="NVIDIA A10", compute_capability="8.6")
    assert compare_device(BUILT, ampere, hardware_compatible=True)[0] == []
    turing = _with(gpu="Tesla T4", compute_capability="7.5")
    assert len(compare_device(BUILT, turing, hardware_compatible=True)[0]) == 2


def test_device_facts_on_a_jetson(tmp_path, monkeypatch):
    from cass_deploy.backends.jetson import PowerMode

    import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "10.3.0")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0")
    monkeypatch.setattr(trt_engine, "nvpmodel_mode", lambda: PowerMode("MAXN", 0))
    facts = device_facts(device=0, jetson_root=tmp_path)
    assert facts == _with(gpu="Fake GPU")
    assert device_facts().l4t is None or facts.l4t == "36.4.3"  # this machine: not a Jetson (or a real one)


@pytest.fixture(scope="module")
def engine_dir(tiny_checkpoint, tmp_path_factory):
    """An export with an engine built by the TensorRT 10.3 stand-in on the stand-in GPU."""
    import fake_tensorrt

    base = tmp_path_factory.mktemp("sidecar")
    run_export(ExportRequest(checkpoint=tiny_checkpoint, out=base / "export"), log=lambda s: None)
    with pytest.MonkeyPatch.context() as mp:
        fake_tensorrt.install(mp, "10.3.0")
        engine_from_export(base / "export", base / "engine", log=lambda s: None)
    return base / "engine"


def test_the_engine_manifest_records_what_built_it(engine_dir):
    built = Manifest.read(engine_dir).engine_built_on
    assert built["tensorrt"] == "10.3.0" and built["gpu"] == "Fake GPU" and built["compute_capability"] == "8.7"
    assert built["cuda"] == "12.6" and built["cuda_driver"] == "12.6"
    assert set(built) == set(DeviceFacts.__dataclass_fields__)


def test_same_device_loads_and_runs(engine_dir, monkeypatch):
    import fake_tensorrt

    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    with TrtRunner(engine_dir / "model.engine") as runner:
        assert {s.name for s in runner.output_specs()} >= {"scores", "keep_mask"}
    assert any(name == "deserialize_cuda_engine" for name, _ in trt.calls)


@pytest.mark.parametrize(
    "version, gpu, expected",
    [
        ("10.16.1", None, "tensorrt: built with 10.3.0, running 10.16.1"),
        ("10.3.0", ("NVIDIA GeForce RTX 4090", (8, 9)), "gpu: built with Fake GPU, running NVIDIA GeForce RTX 4090"),
    ],
)
def test_a_mismatched_engine_is_refused_before_deserialising(engine_dir, monkeypatch, capsys, version, gpu, expected):
    import fake_tensorrt

    trt = fake_tensorrt.install(monkeypatch, version)
    if gpu is not None:
        driver = sys.modules["pycuda.driver"]
        monkeypatch.setattr(driver, "gpu_name", gpu[0])
        monkeypatch.setattr(driver, "compute_capability", gpu[1])
    with pytest.raises(InputError, match="built for another device or TensorRT") as info:
        TrtRunner(engine_dir / "model.engine").activate()
    assert expected in str(info.value) and "rebuild it here" in str(info.value)
    assert not any(name == "deserialize_cuda_engine" for name, _ in trt.calls)
    # through the CLI: one line, exit 2
    assert main(["validate", str(engine_dir / "model.engine"), "--images", "2"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
