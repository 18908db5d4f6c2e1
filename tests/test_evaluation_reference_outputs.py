"""Reference inputs / outputs in Polygraphy's format, read back by NVIDIA's own tool (``polygraphy run --onnxrt``)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cass_deploy.cli import main
from cass_deploy.errors import InputError
from cass_deploy.evaluation.reference_outputs import (
    INDEX_FILE,
    OUTPUTS_FILE,
    RUNNER_NAME,
    load_reference_outputs,
    polygraphy_args,
    split_outputs,
)
from cass_deploy.evaluation.verify import run_verify
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest

polygraphy = pytest.importorskip("polygraphy", reason="Polygraphy is not installed (pip install -e .[dev])")
POLYGRAPHY = Path(sys.executable).with_name("polygraphy")


@pytest.fixture(scope="module")
def saved(tiny_checkpoint, tmp_path_factory):
    """An fp32 export and the reference of 4 images saved for Polygraphy beside it."""
    base = tmp_path_factory.mktemp("pg")
    run_export(ExportRequest(checkpoint=tiny_checkpoint, out=base / "export"), log=lambda s: None)
    report, notes = run_verify(str(tiny_checkpoint), [str(base / "export")], images=4, save_polygraphy=base / "ref")
    assert report and any("saved the reference" in n for n in notes)
    return base


def _polygraphy(base: Path, command: str) -> subprocess.CompletedProcess:
    args = shlex.split(command.replace(" model.onnx ", " export/model.onnx ", 1))
    assert args[0] == "polygraphy"
    return subprocess.run([str(POLYGRAPHY), *args[1:]], cwd=base, capture_output=True, text=True, timeout=300)


def test_outputs_are_split_into_elementwise_and_tie_dependent():
    names = ["scores", "keep_idx", "keep_mask", "heatmap", "box", "num_dets", "det_boxes", "det_scores", "det_classes"]
    compared, index = split_outputs(names)
    assert compared == ["scores", "heatmap", "box", "num_dets", "det_boxes", "det_scores", "det_classes"]
    assert index == ["keep_idx", "keep_mask"]
    assert polygraphy_args("fp16", ["scores", "det_scores"]) == [
        "--atol",
        "scores:0.005",
        "det_scores:0.02",
        "--rtol",
        "scores:0.01",
        "det_scores:0.02",
        "--check-error-stat",
        "scores:max",
        "det_scores:median",
    ]
    with pytest.raises(InputError, match="unknown precision"):
        polygraphy_args("bf16", ["scores"])


def test_polygraphy_reads_our_files_and_passes_the_export(saved):
    index = json.loads((saved / "ref" / INDEX_FILE).read_text())
    # the export ends in SPEC 6b's outputs: every one carrying values is judged (the detections by
    # matching, det_scores and scores element-wise); only the keep set's order-dependent indices are not
    assert index["compared_outputs"] == ["num_dets", "det_boxes", "det_scores", "det_classes", "scores"]
    assert index["index_outputs"] == ["keep_idx", "keep_mask"]
    assert sorted(index["judge"]["elementwise"]) == ["det_scores", "scores"]
    command = index["commands"]["onnx"].replace(str(saved / "ref"), "ref")
    assert command.startswith("polygraphy run model.onnx --onnxrt --load-inputs ref/inputs.json --load-outputs")
    assert index["commands"]["engine"].startswith("polygraphy run model.engine --model-type engine --trt --load-inputs")
    out = _polygraphy(saved, command)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "Passed: 4/4 iterations" in log and "PASSED" in log
    assert log.count("cass-deploy judge | det_boxes: 1.000 of the reference's") == 4
    assert "keep_idx" not in log.split("Iteration: 0")[1]  # index outputs are not compared


def test_polygraphy_fails_a_wrong_reference(saved, tmp_path):
    """The judge judges: scores moved by 1e-3 (10x the fp32 tolerance) fail Polygraphy's check."""
    from polygraphy.comparator import RunResults

    shutil.copytree(saved / "export", tmp_path / "export")
    shutil.copytree(saved / "ref", tmp_path / "ref")
    results = RunResults.load(str(saved / "ref" / OUTPUTS_FILE))
    for iteration in results[RUNNER_NAME]:
        iteration["scores"] = iteration["scores"] + np.float32(1e-3)
    results.save(str(tmp_path / "ref" / OUTPUTS_FILE))
    index = json.loads((saved / "ref" / INDEX_FILE).read_text())
    out = _polygraphy(tmp_path, index["commands"]["onnx"].replace(str(saved / "ref"), "ref"))
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr


def test_saved_outputs_load_back_hash_checked(saved, tmp_path):
    feeds, outputs, index = load_reference_outputs(saved / "ref")
    assert len(feeds) == len(outputs) == index["batches"] == 4
    assert feeds[0]["images"].shape == (1, 3, 96, 160) and feeds[0]["images"].dtype == np.float32
    assert set(outputs[0]) == {"num_dets", "det_boxes", "det_scores", "det_classes", "scores", "keep_idx", "keep_mask"}
    assert outputs[0]["keep_mask"].dtype == np.bool_ and outputs[0]["keep_mask"].sum() == outputs[0]["keep_idx"].size
    bad = tmp_path / "ref"
    shutil.copytree(saved / "ref", bad)
    with open(bad / OUTPUTS_FILE, "a") as f:
        f.write(" ")
    with pytest.raises(InputError, match="does not match its SHA-256"):
        load_reference_outputs(bad)
    with pytest.raises(InputError, match="no saved reference outputs"):
        load_reference_outputs(tmp_path)


def test_verify_cli_refuses_an_existing_directory(saved, tiny_checkpoint, capsys):
    args = ["verify", "--reference", str(tiny_checkpoint), "--candidate", str(saved / "export"), "--images", "1"]
    assert main([*args, "--save-polygraphy", str(saved / "ref")]) == 2
    assert "--force" in capsys.readouterr().err


def test_polygraphy_fails_wrong_boxes_and_passes_right_ones_swapped_in_a_tie(saved, tmp_path):
    """The judge compares det_boxes by matched detections: reference boxes moved by 2 px (8x the fp32
    limit) fail Polygraphy's run; the same detections with rows swapped (as a tie in scores does) pass."""
    from polygraphy.comparator import RunResults

    index = json.loads((saved / "ref" / INDEX_FILE).read_text())
    command = index["commands"]["onnx"].replace(str(saved / "ref"), "ref")
    results = RunResults.load(str(saved / "ref" / OUTPUTS_FILE))
    assert all(int(it["num_dets"].reshape(-1)[0]) >= 2 for it in results[RUNNER_NAME])  # something to match
    for case, change in (("wrong", "shift"), ("right", "swap")):
        d = tmp_path / case
        shutil.copytree(saved / "export", d / "export")
        shutil.copytree(saved / "ref", d / "ref")
        edited = RunResults.load(str(saved / "ref" / OUTPUTS_FILE))
        for it in edited[RUNNER_NAME]:
            boxes, classes = it["det_boxes"].copy(), it["det_classes"].copy()
            if change == "shift":
                boxes[:, :, [0, 2]] += np.float32(2.0)
            else:
                boxes[:, [0, 1]], classes[:, [0, 1]] = boxes[:, [1, 0]], classes[:, [1, 0]]
            it["det_boxes"], it["det_classes"] = boxes, classes
        edited.save(str(d / "ref" / OUTPUTS_FILE))
        out = _polygraphy(d, command)
        log = out.stdout + out.stderr
        if case == "wrong":
            assert out.returncode != 0 and "largest corner error 2 px (limit 0.25)" in log, log
        else:
            assert out.returncode == 0 and "largest corner error 0 px" in log, log
