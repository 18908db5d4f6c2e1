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
    assert compared == ["scores", "heatmap", "box", "det_scores"]
    assert index == ["keep_idx", "keep_mask", "num_dets", "det_boxes", "det_classes"]
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
    assert index["compared_outputs"] == ["scores", "heatmap", "box"] and index["index_outputs"] == [
        "keep_idx",
        "keep_mask",
    ]
    command = index["commands"]["onnx"].replace(str(saved / "ref"), "ref")
    assert command.startswith("polygraphy run model.onnx --onnxrt --load-inputs ref/inputs.json --load-outputs")
    assert index["commands"]["engine"].startswith("polygraphy run model.engine --model-type engine --trt --load-inputs")
    out = _polygraphy(saved, command)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "Passed: 4/4 iterations" in log and "All outputs matched | Outputs: ['scores', 'heatmap', 'box']" in log
    assert "keep_idx" not in log.split("Accuracy Comparison")[1]  # index outputs are not compared


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
    assert set(outputs[0]) == {"scores", "heatmap", "box", "keep_idx", "keep_mask"}
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
