"""profile / validate / report / demo commands end to end on the tiny model, and their bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from cass_deploy.backends.probe import is_available
from cass_deploy.cli import main
from cass_deploy.data.synthetic import write_synthetic_dataset
from cass_deploy.errors import InputError
from cass_deploy.evaluation.validate import open_model
from cass_deploy.evaluation.verify import run_verify
from cass_deploy.export.device_engine import engine_from_export
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest
from cass_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from cass_deploy.profiling.latency import profile_artefact
from cass_deploy.runtime.manifest import Manifest

from conftest import TINY_OVERRIDES


def usage_exit(argv: list[str]) -> int:
    """The exit code of ``main(argv)``, argparse's usage errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def fp32_export(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("dep") / "export"
    run_export(ExportRequest(checkpoint=tiny_checkpoint, out=out), log=lambda s: None)
    return out


def test_profile_checkpoint_sweep_and_export(tiny_checkpoint, fp32_export, tmp_path, capsys):
    out = tmp_path / "prof"
    assert (
        main(
            ["profile", str(tiny_checkpoint), "--sweep", "0.25,0.5", "--warmup", "1", "--iters", "3", "--out", str(out)]
        )
        == 0
    )
    data = json.loads((out / "profile.json").read_text())
    labels = [r["label"] for r in data["results"]]
    assert labels == ["dense", "global keep 0.25", "global keep 0.5"]
    assert all(r["latency_ms"]["n"] == 3 and r["latency_ms"]["p50"] > 0 for r in data["results"])
    assert (out / "sweep.png").stat().st_size > 1000
    assert main(["profile", str(fp32_export), "--warmup", "1", "--iters", "3"]) == 0
    assert "onnxruntime/cpu" in capsys.readouterr().out


def test_profile_bad_input(tiny_checkpoint, fp32_export, tmp_path, capsys):
    assert main(["profile", str(tmp_path / "missing.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert usage_exit(["profile", str(tiny_checkpoint), "--iters", "0"]) == 2  # argparse: an integer >= 1
    capsys.readouterr()
    assert usage_exit(["profile", str(tiny_checkpoint), "--sweep", "0.5,1.5", "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert "--sweep" in err and "0.5,1.5" in err
    assert main(["profile", str(fp32_export), "--batch", "4", "--iters", "1"]) == 2
    assert "batch" in capsys.readouterr().err


def test_validate_gates_pass_and_fail(fp32_export, tmp_path, capsys):
    out = tmp_path / "val.json"
    rc = main(["validate", str(fp32_export), "--images", "8", "--json", str(out), "--max-recall-drop", "1.0"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["reference"]["pruned"] is False and data["result"]["pruned"] is True
    assert set(data["result"]["by_field"]) >= {"far", "mid", "near", "all"}
    near = data["result"]["by_field"]["near"]
    assert near["n_gt"] > 0 and 0 <= near["retention_mean"] <= 1
    # an impossible gate fails with exit 1 and names the failing number
    rc = main(
        ["validate", str(fp32_export), "--images", "8", "--min-near-retention", "1.0", "--min-near-recall", "1.0"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "near" in err


def test_validate_bad_input(tiny_checkpoint, tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert usage_exit(["validate", str(tiny_checkpoint), "--images", "0"]) == 2
    assert usage_exit(["validate", str(tiny_checkpoint), "--min-near-recall", "1.5"]) == 2
    assert "1.5" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["validate", str(tiny_checkpoint), "--data", str(empty), "--images", "2"]) == 2
    # model/data size mismatch: a COCO set of another image size, no resize asked

    write_synthetic_dataset(tmp_path / "coco", 2, image_size=(128, 224))
    assert main(["validate", str(tiny_checkpoint), "--data", str(tmp_path / "coco"), "--images", "2"]) == 2
    assert "128x224 images but the model takes 96x160" in capsys.readouterr().err
    assert main(["validate", str(tiny_checkpoint), "--data", str(tmp_path / "coco"), "--images", "2", "--resize"]) == 0
    pred_only = tmp_path / "pred"
    run_export(ExportRequest(checkpoint=tiny_checkpoint, out=pred_only, parts="predictor"), log=lambda s: None)
    assert main(["validate", str(pred_only), "--images", "2"]) == 2
    assert "--parts full" in capsys.readouterr().err


def test_report_renders_sections(tiny_checkpoint, fp32_export, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["validate", str(fp32_export), "--images", "8", "--json", str(run / "validate-fp32.json")]) == 0
    assert (
        main(
            [
                "verify",
                "--reference",
                str(tiny_checkpoint),
                "--candidate",
                str(fp32_export),
                "--images",
                "2",
                "--json",
                str(run / "verify.json"),
            ]
        )
        == 0
    )
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "Recall and retention by field" in html and "Keep-mask fidelity" in html
    assert html.count("data:image/png;base64,") >= 2  # recall and retention charts embedded
    assert 'src="http' not in html  # self-contained
    assert json.loads((run / "report.json").read_text())["validate"]
    assert main(["report", str(run)]) == 2  # no overwrite without --force
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--config",
        "",
        "--out",
        str(out),
        "--validate-images",
        "8",
        "--verify-images",
        "2",
        "--profile-iters",
        "2",
        "--profile-until-ci",
        "0",
        "--max-recall-drop",
        "1.0",
        "--no-progress",
    ]
    for o in TINY_OVERRIDES:
        args += ["--set", o]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "report:" in text
    for rel in (
        "train/best.pt",
        "export-fp32/model.onnx",
        "export-int8/model.onnx",
        "verify.json",
        "profile/profile.json",
        "validate-fp32.json",
        "validate-int8.json",
        "report.html",
        "summary.json",
    ):
        assert (out / rel).is_file(), rel
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["recall"]) == {"fp32", "int8", "dense"}
    assert main(args) == 2  # a second run does not clobber the first


def test_engine_from_export_without_tensorrt_is_a_clear_error(fp32_export, tmp_path, capsys):

    if is_available("tensorrt"):
        pytest.skip("TensorRT is installed here; the missing-backend message cannot be shown")
    assert main(["export", str(fp32_export), "--engine", "--out", str(tmp_path / "eng")]) == 2
    assert "TensorRT" in capsys.readouterr().err
    assert not (tmp_path / "eng").exists()
    assert main(["export", str(fp32_export), "--out", str(tmp_path / "eng")]) == 2
    assert "add --engine" in capsys.readouterr().err


def test_engine_from_export_with_recording_tensorrt(fp32_export, tmp_path, monkeypatch):
    """The on-device build path (export dir -> engine + manifest) against the TensorRT stand-in."""
    import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "10.3.0")
    man = engine_from_export(fp32_export, tmp_path / "eng", workspace_mib=512, log=lambda s: None)
    assert set(man.artefact_roles) == {"onnx", "engine"}
    assert man.extra["tensorrt"]["tensorrt"] == "10.3.0"
    assert (tmp_path / "eng" / "model.engine").read_bytes().startswith(fake_tensorrt.PLAN_MAGIC)
    assert man.k == 30 and man.source_checkpoint_sha256
    assert Manifest.read(tmp_path / "eng") == man


def test_engine_from_tampered_export_is_refused(fp32_export, tmp_path, capsys):

    bad = tmp_path / "bad"
    shutil.copytree(fp32_export, bad)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"x")
    assert main(["export", str(bad), "--engine", "--out", str(tmp_path / "eng")]) == 2
    assert "hash" in capsys.readouterr().err


def test_validate_against_a_saved_reference(fp32_export, tmp_path, capsys):
    ref = tmp_path / "ref.json"
    assert main(["validate", str(fp32_export), "--images", "8", "--json", str(ref)]) == 0
    dense_near = json.loads(ref.read_text())["reference"]["by_field"]["near"]["recall"]
    capsys.readouterr()
    assert (
        main(["validate", str(fp32_export), "--images", "8", "--reference", str(ref), "--max-recall-drop", "1.0"]) == 0
    )
    out = capsys.readouterr().out
    assert "near recall dropped by" in out and f"({dense_near:.4f} ->" in out  # compared with the saved dense run
    # on other data the object counts differ and the comparison is refused
    assert (
        main(["validate", str(fp32_export), "--images", "4", "--reference", str(ref), "--max-recall-drop", "0.5"]) == 2
    )
    assert "not evaluated on the same data" in capsys.readouterr().err


def test_more_bad_input_is_one_line_and_exit_2(tiny_checkpoint, fp32_export, tmp_path, capsys):
    cases = [
        (["profile", str(tiny_checkpoint), "--sweep", "0.5,abc", "--iters", "1"], "--sweep"),
        (["profile", str(tiny_checkpoint), "--device", "foo", "--iters", "1"], "'foo'"),
        (["profile", str(tiny_checkpoint), "--threads", "-1", "--iters", "1"], "--threads"),
        (["validate", str(tiny_checkpoint), "--device", "foo", "--images", "2"], "'foo'"),
        (["export", str(tiny_checkpoint), "--out", str(tmp_path / "e"), "--dynamic-batch", "1", "1", "1"], "--batch 1"),
        (["report", str(tmp_path), "--out", str(tmp_path / "x.json")], ".html"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["profile", str(tiny_checkpoint), "--device", "cuda", "--iters", "1"], "CUDA"))
    for args, fragment in cases:
        assert usage_exit(args) == 2, args
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, (args, err)
    bad_ref = tmp_path / "ref.json"
    bad_ref.write_text('{"reference": "x"}')
    assert main(["validate", str(fp32_export), "--reference", str(bad_ref), "--images", "2"]) == 2
    assert "validate --json" in capsys.readouterr().err


def test_dense_checkpoint_with_nothing_to_profile(tiny_checkpoint, tmp_path, capsys):

    ck = load_checkpoint(tiny_checkpoint, pruner_mode="none")
    dense = tmp_path / "dense.pt"
    save_checkpoint(dense, ck.model, ck.cass_config)
    assert main(["profile", str(dense), "--no-dense", "--iters", "1"]) == 2
    assert "nothing to profile" in capsys.readouterr().err


def test_int8_export_with_a_fixed_batch_of_two(tiny_checkpoint, tmp_path):

    run_export(
        ExportRequest(checkpoint=tiny_checkpoint, out=tmp_path / "q", precision="int8", batch=2, calib_images=4),
        log=lambda s: None,
    )
    report, _ = run_verify(str(tiny_checkpoint), [str(tmp_path / "q")], images=4)
    assert report.images == 4 and report.candidates[0].precision == "int8"


def test_engine_rebuild_in_place_needs_force(fp32_export, tmp_path, monkeypatch):

    import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "10.3.0")
    d = tmp_path / "exp"
    shutil.copytree(fp32_export, d)
    engine_from_export(d, d, log=lambda s: None)
    assert (d / "model.engine").is_file()
    with pytest.raises(InputError, match="--force"):
        engine_from_export(d, d, log=lambda s: None)
    engine_from_export(d, d, force=True, log=lambda s: None)


@pytest.mark.parametrize("batching", [dict(batch=2), dict(dynamic_batch=(1, 2, 4))])
def test_every_reader_takes_the_batch_from_the_manifest(tiny_checkpoint, tmp_path, monkeypatch, batching):
    """verify, validate, profile and the on-device build read one batch: fixed 2, or opt 2 of (1, 2, 4)."""
    import fake_tensorrt

    out = tmp_path / "exp"
    res = run_export(ExportRequest(checkpoint=tiny_checkpoint, out=out, **batching), log=lambda s: None)
    man = Manifest.read(out)
    assert man == res.manifest and man.batch_step == 2
    assert man.fixed_batch == batching.get("batch") and man.dynamic_batch == batching.get("dynamic_batch")
    report, _ = run_verify(str(tiny_checkpoint), [str(out)], images=5)
    assert report.images == 4  # whole steps of batch_step
    assert open_model(str(out)).batch == man.fixed_batch  # fixed: padded to it; dynamic: free
    assert profile_artefact(str(out), warmup=0, iters=1).batch == man.batch_step
    fake_tensorrt.install(monkeypatch, "10.3.0")
    built = engine_from_export(out, tmp_path / "eng", log=lambda s: None)
    assert (built.fixed_batch, built.dynamic_batch, built.batch_step) == (man.fixed_batch, man.dynamic_batch, 2)
    assert ("--optShapes=images:2x3x96x160" in built.trtexec) == (man.dynamic_batch is not None)


def test_validate_decides_on_intervals_and_fails_closed_when_inconclusive(fp32_export, tmp_path, capsys):
    out = tmp_path / "val.json"
    rc = main(
        ["validate", str(fp32_export), "--images", "8", "--json", str(out), "--max-recall-drop", "0.02"]
        + ["--allow-inconclusive"]
    )
    data = json.loads(out.read_text())
    assert data["statistics"]["gate_on"] == "bound" and data["statistics"]["resamples"] == 2000
    for d in data["drops"].values():  # every field's drop carries its paired interval
        if d["point"] is not None:
            assert d["method"] == "paired bootstrap" and d["lo"] <= d["point"] <= d["hi"]
    near = data["result"]["by_field"]["near"]
    assert near["recall_lo"] <= near["recall"] <= near["recall_hi"]
    for c in data["gates"]:  # the decision follows the bounds (module docstring of gates)
        if c["status"] == "pass":
            assert c["hi"] <= 0.02 + 1e-9
        elif c["status"] == "inconclusive":
            assert c["lo"] <= 0.02 < c["hi"] and c["hi"] - c["lo"] > 0.02 and c["passed"]
            assert c["objects_needed"] > c["n_objects"]
    assert rc == (1 if any(c["status"] == "fail" for c in data["gates"]) else 0)
    text = capsys.readouterr().out
    assert "CI" in text and "paired" in text  # the interval columns (headers may wrap)
    # a minimum at the measured near recall itself cannot be decided by 8 images: exit 1, says so
    r = f"{math.floor(near['recall'] * 1e6) / 1e6:.6f}"  # at (or just below) the measured recall
    if 0 < near["recall"] < 1:
        assert main(["validate", str(fp32_export), "--images", "8", "--min-near-recall", r]) == 1
        err = capsys.readouterr().err
        assert "inconclusive" in err and "--allow-inconclusive" in err
        assert "would be needed" in err or "no finite set" in err
        assert main(["validate", str(fp32_export), "--images", "8", "--min-near-recall", r, "--gate-on", "point"]) == 0
