"""``cass-deploy env`` and cass_deploy.envinfo."""

from __future__ import annotations

import importlib.util
import json

import pytest

from cass_deploy import __version__
from cass_deploy.backends.envinfo import BACKENDS, PACKAGES, backend_table, collect, package_version
from cass_deploy.cli import main


@pytest.fixture(scope="module")
def info():
    return collect()


def test_collect_has_every_section(info):
    assert {
        "cass_deploy",
        "python",
        "platform",
        "machine",
        "packages",
        "torch",
        "onnxruntime",
        "tensorrt",
        "pycuda",
        "nvidia_smi",
        "jetson",
        "backends",
    } <= set(info)
    assert info["cass_deploy"] == __version__
    assert set(info["packages"]) == set(PACKAGES)
    assert list(info["backends"]) == list(BACKENDS)
    for name, row in info["backends"].items():
        assert isinstance(row["usable"], bool) and isinstance(row["reason"], str) and row["reason"], name
    assert {"is_jetson", "model", "l4t", "jetpack"} <= set(info["jetson"])
    json.dumps(info)  # JSON-able as is


def test_collect_matches_what_is_installed(info):
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        assert info["packages"]["onnxruntime"] == ort.__version__
        assert info["onnxruntime"]["providers"] == ort.get_available_providers()
        assert info["backends"]["onnxruntime-cpu"]["usable"] is True
    if importlib.util.find_spec("torch") is not None:
        import torch

        assert info["torch"]["version"] == torch.__version__
        assert info["torch"]["cuda_available"] == torch.cuda.is_available()
        assert info["backends"]["torch-cpu"]["usable"] is True
        assert info["backends"]["torch-cuda"]["usable"] == torch.cuda.is_available()
    if importlib.util.find_spec("tensorrt") is None:
        assert info["tensorrt"] is None and info["backends"]["tensorrt"]["usable"] is False
        assert "not installed" in info["backends"]["tensorrt"]["reason"]


def test_package_version_of_missing_package():
    assert package_version("definitely-not-a-package-xyz") is None


def test_backend_table_reasons():
    table = backend_table(
        torch_info={"version": "2.5.0", "cuda_build": "12.4", "cuda_available": False, "gpus": []},
        ort_info={"version": "1.20.0", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
        trt_info={"version": "10.3.0"},
        pycuda_info=None,
    )
    assert table["torch-cpu"]["usable"] and not table["torch-cuda"]["usable"]
    assert "no CUDA device" in table["torch-cuda"]["reason"]
    assert table["onnxruntime-cuda"]["usable"] and not table["onnxruntime-tensorrt"]["usable"]
    assert not table["tensorrt"]["usable"] and "pycuda" in table["tensorrt"]["reason"]
    ok = backend_table(None, None, {"version": "10.8.0"}, {"devices": ["NVIDIA L4"]})
    assert ok["tensorrt"] == {"usable": True, "reason": "TensorRT 10.8.0 on NVIDIA L4"}
    assert not ok["torch-cpu"]["usable"] and "not installed" in ok["onnxruntime-cpu"]["reason"]
    cpu_only = backend_table({"version": "2.5.0+cpu", "cuda_build": None, "cuda_available": False}, None, None, None)
    assert "CPU-only" in cpu_only["torch-cuda"]["reason"]


def test_collect_reads_a_fake_jetson_root(tmp_path, monkeypatch):
    dt = tmp_path / "proc" / "device-tree"
    dt.mkdir(parents=True)
    (dt / "model").write_bytes(b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvpmodel, no nvidia-smi
    out = collect(jetson_root=tmp_path)
    assert out["jetson"]["is_jetson"] and out["jetson"]["jetpack"] == "6.2"
    assert out["jetson"]["suggested_profile"] == "jetson-orin-nx"
    assert out["jetson"]["power_mode"] is None and out["nvidia_smi"] is None


def test_cli_env_json(capsys):
    assert main(["env", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cass_deploy"] == __version__ and set(data["backends"]) == set(BACKENDS)


def test_cli_env_table(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "backends" in out and "onnxruntime-cpu" in out and "cass-deploy[trt]" in out
