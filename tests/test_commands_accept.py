"""``cass-deploy accept`` end to end on CPU: ONNX Runtime, the TensorRT stand-in, a failing gate, a foreign engine."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from cass_deploy.cli import main
from cass_deploy.evaluation.validate import run_validate
from cass_deploy.evaluation.verify import run_verify
from cass_deploy.export.device_engine import engine_from_export
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest
from cass_deploy.io_utils import write_json
from cass_deploy.reporting.acceptance import clock_check
from cass_deploy.runtime.manifest import Manifest

pytest.importorskip("polygraphy", reason="Polygraphy is not installed (pip install -e .[dev])")
FAST = ["--warmup", "1", "--iters", "3", "--images", "4"]


@pytest.fixture(scope="module")
def workstation(tiny_checkpoint, tmp_path_factory):
    """What the workstation hands over: the export, REF.json (validate --json) and the saved reference outputs."""
    base = tmp_path_factory.mktemp("accept")
    run_export(ExportRequest(checkpoint=tiny_checkpoint, out=base / "export"), log=lambda s: None)
    run = run_validate(str(base / "export"), data="synthetic", images=4)
    write_json(base / "ws" / "reference.json", run.to_dict())
    report, _ = run_verify(
        str(tiny_checkpoint), [str(base / "export")], images=2, save_polygraphy=base / "ws" / "reference-outputs"
    )
    assert report
    return base


def _accept(export, ws, out, *extra):
    return main(["accept", str(export), "--data", "synthetic", "--reference", str(ws / "reference.json"), *FAST,
                 "--out", str(out), *extra])  # fmt: skip


def _record(out):
    return json.loads((out / "accept.json").read_text())


def test_accept_with_onnx_runtime_passes_and_writes_one_report(workstation, tmp_path, capsys):
    out = tmp_path / "acc"
    assert _accept(workstation / "export", workstation / "ws", out, "--backend", "onnxruntime") == 0
    printed = capsys.readouterr().out
    assert "verdict: ACCEPTED" in printed and "PASS fidelity: tie-aware keep IoU mean 1.0000" in printed
    rec = _record(out)
    assert rec["verdict"] == "pass" and rec["backend"] == "onnxruntime"
    assert {c["stage"] for c in rec["checks"]} == {"fidelity", "profile", "validate"}
    assert all(c["passed"] for c in rec["checks"])
    for name in ("verify.json", "profile.json", "validate.json", "report.html"):
        assert (out / name).is_file(), name
    assert json.loads((out / "verify.json").read_text())["candidates"][0]["keep_iou_mean"] == 1.0
    page = (out / "report.html").read_text()
    assert "<h2>Acceptance</h2><p><b>ACCEPTED</b>" in page and "Keep-mask fidelity" in page and "Latency" in page
    assert _accept(workstation / "export", workstation / "ws", out) == 2  # exists: --force needed
    assert "--force" in capsys.readouterr().err


def test_a_failing_gate_exits_1_with_the_report(workstation, tmp_path, capsys):
    out = tmp_path / "acc"
    code = _accept(workstation / "export", workstation / "ws", out, "--backend", "onnxruntime", "--max-p50-ms", "1e-6")
    assert code == 1
    assert "acceptance failed" in capsys.readouterr().err
    rec = _record(out)
    failed = [c for c in rec["checks"] if not c["passed"]]
    assert rec["verdict"] == "fail" and [c["stage"] for c in failed] == ["latency"]
    assert "> 1e-06 ms" in failed[0]["message"]


def test_accept_builds_the_engine_with_the_tensorrt_stand_in(workstation, tmp_path, monkeypatch, capsys):
    import fake_tensorrt

    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    export = tmp_path / "export"
    shutil.copytree(workstation / "export", export)
    out = tmp_path / "acc"
    assert _accept(export, workstation / "ws", out) == 0, capsys.readouterr()
    rec = _record(out)
    assert rec["backend"] == "tensorrt" and rec["candidate"] == str(tmp_path / "export-engine" / "model.engine")
    assert "engine" in Manifest.read(tmp_path / "export-engine").artefact_roles
    assert (tmp_path / "export.timing.cache").is_file()
    assert sorted(p.name for p in export.iterdir()) == sorted(p.name for p in (workstation / "export").iterdir())
    assert any(name == "execute_async_v3" for name, _ in trt.calls)
    assert rec["checks"][0]["stage"] == "fidelity" and rec["checks"][0]["passed"]
    # a second run finds the engine and does not rebuild it
    trt.calls.clear()
    assert _accept(export, workstation / "ws", tmp_path / "acc2") == 0
    assert not any(name == "build_serialized_network" for name, _ in trt.calls)


def test_a_mismatched_engine_sidecar_exits_2_before_loading(workstation, tmp_path, monkeypatch, capsys):
    import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "10.3.0")
    export = tmp_path / "export"
    engine_from_export(workstation / "export", export, log=lambda s: None)
    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    monkeypatch.setattr(sys.modules["pycuda.driver"], "gpu_name", "NVIDIA Jetson AGX Orin")
    out = tmp_path / "acc"
    assert _accept(export, workstation / "ws", out) == 2
    err = capsys.readouterr().err
    assert "gpu: built with Fake GPU, running NVIDIA Jetson AGX Orin" in err and "Traceback" not in err
    assert not any(name == "deserialize_cuda_engine" for name, _ in trt.calls)
    assert not out.exists()  # nothing half-written


def test_reference_outputs_of_another_export_are_refused(workstation, tmp_path, capsys):
    ws = tmp_path / "ws"
    shutil.copytree(workstation / "ws", ws)
    index = json.loads((ws / "reference-outputs" / "index.json").read_text())
    index["source"]["onnx_sha256"] = "0" * 64
    (ws / "reference-outputs" / "index.json").write_text(json.dumps(index))
    assert _accept(workstation / "export", ws, tmp_path / "acc", "--backend", "onnxruntime") == 2
    assert "saved for another ONNX" in capsys.readouterr().err
    assert (
        main(["accept", str(workstation / "export"), "--data", "synthetic", "--reference", str(tmp_path / "no.json")])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_clock_check_on_and_off_a_jetson():
    assert clock_check({}, False).passed
    jetson = {"jetson": {"nvpmodel": "MAXN", "clocks_locked": False}}
    assert not clock_check(jetson, False).passed and "NOT locked" in clock_check(jetson, False).message
    assert clock_check(jetson, True).passed
    assert clock_check({"jetson": {"nvpmodel": "MAXN", "clocks_locked": True}}, False).message.endswith("clocks locked")
    assert "unknown" in clock_check({"jetson": {"nvpmodel": "15W", "clocks_locked": None}}, False).message


def test_accept_decides_gates_like_validate(workstation, tmp_path, capsys):
    """accept takes validate's gate flags (SPEC 7a): the tiny model finds no near vehicle, so a 1 %
    near-recall minimum fails on the point, is inconclusive on the Wilson bound (fails closed), and
    passes only with --allow-inconclusive."""
    export, ws = workstation / "export", workstation / "ws"
    gate = ["--backend", "onnxruntime", "--min-near-recall", "0.01"]
    assert _accept(export, ws, tmp_path / "point", *gate, "--gate-on", "point") == 1
    assert _accept(export, ws, tmp_path / "bound", *gate) == 1
    assert "inconclusive" in json.dumps(_record(tmp_path / "bound")["checks"]).lower()
    capsys.readouterr()
    assert _accept(export, ws, tmp_path / "allowed", *gate, "--allow-inconclusive") == 0
    assert _record(tmp_path / "allowed")["verdict"] == "pass"
