"""examples/vit_detector.py — a transformers ViT this project did not write — through export, verify,
validate and profile from the CLI (SPEC 6a/6b), after brief training (CASS on its predictor, a
detection loss on its head)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.examples import load_example, train_and_export

from cass_deploy.cli import main
from cass_deploy.runtime.manifest import Manifest

pytest.importorskip("transformers", reason="transformers is in the dev extra: pip install -e .[dev]")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vit_detector.py"
SPEC = f"{EXAMPLE}:build"
STEPS = 30  # CASS + detection steps: enough for the head to find cars (recall > 0), seconds on a CPU
KITTI = ROOT.parent / "shared" / "data" / "kitti"


def _example():
    return load_example("vit_detector")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The example trained for a few steps (CASS + detection), its weights as .safetensors, and its export."""
    d = tmp_path_factory.mktemp("vit")
    return d, train_and_export("vit_detector", d, STEPS, main)


def test_the_example_is_a_transformers_vit_with_a_trained_predictor(trained):
    _, weights = trained
    ex = _example()
    model = ex.build()
    from transformers.models.vit.modeling_vit import ViTLayer

    assert isinstance(model.early[0], ViTLayer) and model.grid == (8, 14) and model.k == 56
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(weights)))
    x = torch.rand(2, 3, 128, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scores = model.predictor_module()(x)[0]
    assert scores.std() > 1e-3  # the predictor is not constant
    # CASS moves the predictor only: every other weight stays as initialised
    fresh = ex.build()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    losses = ex.train_predictor(fresh, steps=2, batch=2)
    assert len(losses) == 2 and all(np.isfinite(losses))
    changed = {k for k, v in fresh.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("predictor.") for k in changed)


def test_export_writes_the_deployed_layout(trained):
    d, weights = trained
    man = Manifest.read(d / "export")
    outs = {o["name"]: (o["shape"], o["dtype"]) for o in man.outputs}
    assert outs["num_dets"] == ([1, 1], "int32") and outs["det_boxes"] == ([1, 100, 4], "float32")
    assert outs["det_scores"] == ([1, 100], "float32") and outs["det_classes"] == ([1, 100], "int32")
    assert outs["keep_mask"] == ([1, 112], "bool") and man.k == 56 and man.grid == (8, 14)
    assert man.extra["model_source"]["kind"] == "adapter" and man.extra["class_names"] == ["car", "truck", "bus"]


def test_verify_matches_keep_masks_and_detections(trained, tmp_path):
    d, weights = trained
    out = tmp_path / "v.json"
    argv = ["verify", "--model", SPEC, "--weights", str(weights), "--candidate", str(d / "export")]
    assert main([*argv, "--images", "4", "--json", str(out)]) == 0
    cand = json.loads(out.read_text())["candidates"][0]
    assert cand["keep_iou_mean"] == 1.0 and cand["score_max_abs"] < 1e-4
    dets = cand["detections"]
    assert dets["n_reference"] > 0 and dets["match"] == 1.0 and dets["matched_iou_mean"] > 0.999


def test_validate_on_real_kitti_with_letterbox_and_profile(trained, tmp_path, capsys):
    d, _ = trained
    data = str(KITTI) if KITTI.is_dir() else "synthetic"
    if data == "synthetic":
        print(f"{KITTI} is absent: validating the example on synthetic scenes instead")
    out = tmp_path / "val.json"
    argv = ["validate", str(d / "export"), "--data", data, "--images", "2", "--json", str(out)]
    assert main([*argv, "--resize"] if data != "synthetic" else argv) == 0
    res = json.loads(out.read_text())
    assert res["result"]["pruned"] is True and res["reference"]["name"] == "torch:dense"
    assert res["result"]["by_field"]["all"]["n_gt"] >= 3  # the 3 KITTI cars (Cyclist and DontCare are not objects)
    assert 0.0 < res["result"]["keep_ratio"] <= 1.0
    assert main(["profile", str(d / "export"), "--warmup", "1", "--iters", "3"]) == 0
    assert "onnxruntime/cpu" in capsys.readouterr().out


def test_tune_takes_the_example_through_model_and_weights(trained, tmp_path, capsys, request):
    """``tune --model SPEC --weights`` (SPEC 6a, 7b): export, verify, validate and time the example
    (as Ray units on the session's local Ray when Ray is installed, SPEC 7d; else in this process)."""
    if importlib.util.find_spec("ray") is not None:
        request.getfixturevalue("ray_session")
    _, weights = trained
    out = tmp_path / "tune"
    argv = ["tune", "--model", SPEC, "--weights", str(weights), "--out", str(out), "--keep", "0.5"]
    fast = [
        "--images",
        "4",
        "--verify-images",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "3",
        "--resamples",
        "200",
        "--quiet-wait",
        "1",
    ]
    rc = main([*argv, *fast, "--max-recall-drop", "1.0", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    record = json.loads((out / "tune.json").read_text())
    assert [r["config"] for r in record["table"]] == ["keep 0.5 fp32"]
    assert record["table"][0]["status"] == "pass" and "--model" in text
    man = Manifest.read(out / "exports" / "keep0.5-fp32" / "manifest.json")
    assert man.extra["model_source"]["spec"] == SPEC


def test_the_trained_head_finds_cars(trained, tmp_path):
    """The head is trained (detection loss), so recall on synthetic scenes is above zero; an
    untrained head (the example before issue 23) found nothing."""
    d, _ = trained
    out = tmp_path / "val.json"
    assert main(["validate", str(d / "export"), "--data", "synthetic", "--images", "16", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["result"]["by_field"]["all"]
    assert res["n_gt"] > 100 and res["n_matched"] > 0


def test_check_the_example_per_target(trained, capsys):
    """`check` (SPEC 7c) on the transformers ViT's export: every GPU target can take it; the fp32
    export is refused for DLA, whose table lists the ViT layers that fall back to the GPU."""
    d, _ = trained
    targets = ["tensorrt10.3", "tensorrt10", "tensorrt11", "tensorrt10-dla", "onnxruntime-cpu"]
    assert main(["check", str(d / "export"), *[a for t in targets for a in ("--target", t)], "--json", "-"]) == 1
    report = {t["target"]: t for t in json.loads(capsys.readouterr().out)["targets"]}
    can = [t for t in targets if report[t]["can_build"]]
    assert can == ["tensorrt10.3", "tensorrt10", "tensorrt11", "onnxruntime-cpu"]
    assert report["tensorrt10"]["restrictions_checked_and_met"] > 100 and not report["tensorrt10"]["findings"]
    dla = report["tensorrt10-dla"]["findings"]
    assert [f["what"] for f in dla if f["level"] == "error"] == ["limit"]
    assert {"LayerNormalization", "MatMul", "TopK"} <= {f["op"] for f in dla if f["level"] == "gpu-fallback"}
