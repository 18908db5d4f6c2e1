"""Multi-stage pruning (SPEC 6c) on examples/evit_detector.py — an EViT-style transformers ViT this
project did not write, pruning at three depths with token fusion — through export, verify, validate
and profile from the CLI, after brief training (CASS on each stage + a detection loss)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.examples import load_example, train_and_export

from cass_deploy.cass.losses import cass_loss, per_patch_loss, stage_cass_loss
from cass_deploy.cli import main
from cass_deploy.config import CassConfig
from cass_deploy.model.interface import final_keep_mask, stage_names_in, stage_output_names
from cass_deploy.profiling.macs import count_macs
from cass_deploy.runtime.manifest import Manifest

pytest.importorskip("transformers", reason="transformers is in the dev extra: pip install -e .[dev]")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "evit_detector.py"
SPEC = f"{EXAMPLE}:build"
STEPS = 6


def _example():
    return load_example("evit_detector")


@pytest.fixture(scope="session")
def evit(tmp_path_factory):
    """The example trained for a few steps (weights cached once per session) and its export."""
    d = tmp_path_factory.mktemp("evit")
    return d, train_and_export("evit_detector", d, STEPS, main)


def test_stage_names_single_stage_unchanged():
    assert stage_output_names(1) == ["scores", "keep_idx", "keep_mask"]
    assert stage_output_names(2, ["global", "threshold"]) == [
        "scores_1",
        "keep_idx_1",
        "keep_mask_1",
        "scores_2",
        "keep_mask_2",
    ]
    assert stage_names_in(["num_dets", "scores", "keep_mask"]) == [{"scores": "scores", "keep_mask": "keep_mask"}]
    names = ["keep_mask_2", "scores_10", "scores_2", "keep_mask_10"]
    assert [st["keep_mask"] for st in stage_names_in(names)] == ["keep_mask_2", "keep_mask_10"]
    assert final_keep_mask(names) == "keep_mask_10" and final_keep_mask(["det_boxes"]) is None


def test_masks_are_nested_over_the_original_grid():
    ex = _example()
    model = ex.build(keep=(0.8, 0.5, 0.5))
    assert [st.k for st in model.stages] == [90, 45, 23] and model.k == 23 and model.topk_sizes == (90, 45, 23)
    x = torch.rand(2, 3, 128, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = dict(zip(model.output_names("full"), model.full_module()(x)))
    m1, m2, m3 = (out[f"keep_mask_{s}"] for s in (1, 2, 3))
    assert m1.shape == (2, 112) and [int(m.sum(1)[0]) for m in (m1, m2, m3)] == [90, 45, 23]
    assert not (m2 & ~m1).any() and not (m3 & ~m2).any()  # a patch dropped stays dropped
    # keep_idx_s are the original indices of keep_mask_s, ascending
    idx = out["keep_idx_2"]
    assert torch.equal(torch.sort(idx, 1).values, idx)
    assert torch.equal(torch.zeros_like(m2).scatter(1, idx, True), m2)
    # a stage scores only the tokens still alive: the others hold the DROPPED_SCORE floor
    assert bool((out["scores_2"][~m1] == ex.DROPPED_SCORE).all()) and bool((out["scores_2"][m1] > -100).all())
    # the dense reference keeps everything at every stage
    dense = model.with_pruner(mode="none")
    with torch.no_grad():
        d = dict(zip(dense.output_names("full"), dense.full_module()(x)))
    assert all(bool(d[f"keep_mask_{s}"].all()) for s in (1, 2, 3))


def test_cass_on_a_later_stage_counts_only_its_scored_patches():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 12, generator=g, requires_grad=True)
    boxes = [torch.tensor([[0.0, 0.0, 24.0, 16.0]]), torch.tensor([[16.0, 8.0, 32.0, 24.0]])]
    scored = torch.rand(2, 12, generator=g) > 0.4
    cfg = CassConfig(normalization="patch", ensure_center_patch=True)
    out = cass_loss(logits, boxes, (3, 4), (24, 32), cfg, scored=scored)
    full = cass_loss(logits, boxes, (3, 4), (24, 32), cfg)
    expected = per_patch_loss(logits, full.target, cfg)[scored].mean()  # independent: mean over scored patches
    assert torch.allclose(out.total, expected, atol=1e-6)
    out.total.backward()
    assert bool((logits.grad[~scored] == 0).all()) and bool((logits.grad[scored] != 0).any())
    # object normalisation: a patch outside the scored set changes nothing
    ocfg = CassConfig(normalization="object")
    moved = logits.detach().clone()
    moved[~scored] += 5.0
    a = cass_loss(logits.detach(), boxes, (3, 4), (24, 32), ocfg, scored=scored).total
    b = cass_loss(moved, boxes, (3, 4), (24, 32), ocfg, scored=scored).total
    assert torch.allclose(a, b)
    # per stage: stage 1 on every patch, stage 2 on stage 1's kept set
    total, parts = stage_cass_loss([logits.detach(), moved], [scored, scored], boxes, (3, 4), (24, 32), ocfg)
    ref1 = cass_loss(logits.detach(), boxes, (3, 4), (24, 32), ocfg).total
    assert torch.allclose(total, (ref1 + b) / 2) and len(parts) == 2


def test_training_moves_predictors_by_cass_only(evit):
    ex = _example()
    model = ex.build()
    images = torch.rand(2, 3, 128, 224, generator=torch.Generator().manual_seed(2))
    boxes = [torch.tensor([[10.0, 60.0, 60.0, 100.0]]), torch.tensor([[100.0, 20.0, 120.0, 32.0]])]
    labels = [torch.tensor([0]), torch.tensor([1])]
    det, cass = model.training_losses(images, boxes, labels)
    det.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.predictors.parameters())
    assert model.head.cls_head.weight.grad.abs().sum() > 0
    cass.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.predictors[2].fc2.parameters())


def test_export_names_outputs_and_stages_in_the_manifest(evit):
    d, _ = evit
    man = Manifest.read(d / "export")
    outs = {o["name"]: (o["shape"], o["dtype"]) for o in man.outputs}
    for s, k in ((1, 79), (2, 56), (3, 40)):
        assert outs[f"keep_mask_{s}"] == ([1, 112], "bool") and outs[f"keep_idx_{s}"] == ([1, k], "int64")
        assert outs[f"scores_{s}"] == ([1, 112], "float32")
    assert "keep_mask" not in outs and outs["det_boxes"] == ([1, 100, 4], "float32")
    assert [st["k"] for st in man.extra["stages"]] == [79, 56, 40] and man.k == 40
    assert man.extra["stages"][0] == {"k": 79, "pruner_mode": "global", "grid": [8, 14], "keep_ratio": 0.7}


def test_verify_reports_fidelity_per_stage(evit, tmp_path, capsys):
    d, weights = evit
    out = tmp_path / "v.json"
    argv = ["verify", "--model", SPEC, "--weights", str(weights), "--candidate", str(d / "export")]
    assert main([*argv, "--images", "4", "--json", str(out)]) == 0
    assert "stage 3: 1.0000" in capsys.readouterr().out
    cand = json.loads(out.read_text())["candidates"][0]
    assert [st["stage"] for st in cand["stages"]] == [1, 2, 3]
    assert all(st["keep_iou_mean"] == 1.0 and st["score_max_abs"] < 1e-4 for st in cand["stages"])
    assert [st["kept_mean"] for st in cand["stages"]] == [79.0, 56.0, 40.0]
    assert cand["detections"]["match"] == 1.0


def test_verify_names_the_stage_that_differs():
    """A candidate whose stage 2 swaps a kept patch for a dropped one (scores unchanged) fails at stage 2."""
    from cass_deploy.evaluation.verify import compare_outputs, thresholds_for

    rng = np.random.default_rng(0)
    s1 = rng.normal(size=(2, 12))
    m1 = s1 >= np.sort(s1, 1)[:, [3]]  # top 9
    s2 = np.where(m1, rng.normal(size=(2, 12)), -1e4)
    m2 = s2 >= np.sort(s2, 1)[:, [-5]]  # top 5 of the kept 9
    ref = {"scores_1": s1, "keep_mask_1": m1, "scores_2": s2, "keep_mask_2": m2}
    bad = m2.copy()
    drop = int(np.nonzero(m2[0])[0][0])
    add = int(np.nonzero(m1[0] & ~m2[0])[0][0])
    bad[0, drop], bad[0, add] = False, True
    rep = compare_outputs("c", "fp32", ref, {**ref, "keep_mask_2": bad}, thresholds_for("fp32"))
    assert [st["keep_iou_mean"] for st in rep.stages][0] == 1.0
    assert rep.stages[1]["keep_iou_min"] == pytest.approx(4 / 6)  # 4 shared of 6 in the union
    assert not rep and "stage 2" in " ".join(rep.failures)


def test_validate_reports_retention_per_stage_and_field(evit, tmp_path):
    d, _ = evit
    out = tmp_path / "val.json"
    assert main(["validate", str(d / "export"), "--data", "synthetic", "--images", "4", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["result"]
    stages = res["by_stage"]
    assert [st["stage"] for st in stages] == [1, 2, 3]
    for field in ("far", "mid", "near", "all"):
        means = [st["by_field"][field]["mean"] for st in stages]
        if None in means:
            continue
        assert means[0] >= means[1] >= means[2]  # nested masks: retention can only fall
        assert means[2] == pytest.approx(res["by_field"][field]["retention_mean"])  # the last stage is keep_mask
    assert res["keep_ratio"] == pytest.approx(40 / 112)


def test_profile_counts_macs_per_stage(evit, capsys):
    d, _ = evit
    macs = count_macs(d / "export" / "model.onnx")
    assert set(macs.by_stage) == {"dense", "stage 1", "stage 2", "stage 3"}
    assert sum(macs.by_stage.values()) == macs.total and macs.complete
    # two blocks run on 1 + 1 + 79 tokens, two on 1 + 2 + 56: the later stage's blocks cost less
    assert macs.by_stage["stage 1"] > macs.by_stage["stage 2"] > 0
    assert main(["profile", str(d / "export"), "--warmup", "1", "--iters", "3"]) == 0
    assert "MMACs by stage" in capsys.readouterr().out


def test_tune_sweeps_a_per_stage_keep_schedule(evit, tmp_path, capsys):
    """``tune --keep 0.7/0.7/0.7,0.9/0.6/0.5`` (SPEC 6c, 7b): each schedule exported, verified per stage,
    validated and timed; a schedule of the wrong length is a one-line exit 2."""
    _, weights = evit
    out = tmp_path / "tune"
    argv = ["tune", "--model", SPEC, "--weights", str(weights), "--out", str(out)]
    fast = ["--images", "4", "--verify-images", "2", "--warmup", "1", "--rounds", "3", "--resamples", "200"]
    rc = main([*argv, "--keep", "0.7/0.7/0.7,0.9/0.6/0.5", *fast, "--max-recall-drop", "1.0", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    record = json.loads((out / "tune.json").read_text())
    assert [r["config"] for r in record["table"]] == ["keep 0.7/0.7/0.7 fp32", "keep 0.9/0.6/0.5 fp32"]
    man = Manifest.read(out / "exports" / "keep0.9_0.6_0.5-fp32" / "manifest.json")
    assert [st["k"] for st in man.extra["stages"]] == [101, 61, 31] and man.k == 31  # ceil(0.9*112), ...
    cfg = json.loads((out / "configs" / "keep0.9_0.6_0.5-fp32.json").read_text())
    assert [st["kept_mean"] for st in cfg["verify"]["stages"]] == [101.0, 61.0, 31.0]
    bad = main([*argv[:-1], str(tmp_path / "t2"), "--keep", "0.7/0.5", *fast, "--max-recall-drop", "1.0"])
    err = capsys.readouterr().err
    assert bad == 2 and "keep schedule [0.7, 0.5] has 2 ratios but the model has 3" in err


def test_check_the_example_per_target(evit, capsys):
    """`check` (SPEC 7c) on the three-stage export: every GPU target takes its three TopKs and the
    fusion; the fp32 export is refused for DLA (its layers fall back to the GPU)."""
    d, _ = evit
    targets = ["tensorrt10.3", "tensorrt10", "tensorrt11", "tensorrt10-dla", "onnxruntime-cpu"]
    assert main(["check", str(d / "export"), *[a for t in targets for a in ("--target", t)], "--json", "-"]) == 1
    report = {t["target"]: t for t in json.loads(capsys.readouterr().out)["targets"]}
    assert [t for t in targets if report[t]["can_build"]] == [
        "tensorrt10.3",
        "tensorrt10",
        "tensorrt11",
        "onnxruntime-cpu",
    ]
    dla = report["tensorrt10-dla"]["findings"]
    assert "TopK" in {f["op"] for f in dla if f["level"] == "gpu-fallback"}
