"""Export to ONNX (parts, sizes, batches, precisions) and tie-aware verification against torch."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest

from cass_deploy.cli import main
from cass_deploy.errors import ExportError, LimitError
from cass_deploy.evaluation.verify import (
    band_groups,
    boundary_scores,
    compare_outputs,
    run_verify,
    thresholds_for,
    tie_aware_iou,
)
from cass_deploy.export import precision
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest
from cass_deploy.export.tensorrt_build import inspect_onnx
from cass_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from cass_deploy.runtime.manifest import Manifest
from cass_deploy.runtime.ort_runner import OrtRunner


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    made = {}
    specs = {
        "full_fp32": dict(parts="full"),
        "pred_fp32_big": dict(parts="predictor", image_size=(128, 224), batch=2),
        "full_dyn": dict(parts="full", dynamic_batch=(1, 2, 4)),
        "full_fp16": dict(parts="full", precision="fp16"),
        "full_int8": dict(parts="full", precision="int8", calib_images=4),
    }
    for name, kw in specs.items():
        run_export(ExportRequest(checkpoint=tiny_checkpoint, out=root / name, **kw), log=quiet)
        made[name] = root / name
    return made


def test_manifest_and_metadata(exports, tiny_checkpoint):
    man = json.loads((exports["full_fp32"] / "manifest.json").read_text())
    assert man["k"] == 30 and man["grid"] == [6, 10] and man["pruner_mode"] == "global"
    assert [o["name"] for o in man["outputs"]] == [
        "num_dets",
        "det_boxes",
        "det_scores",
        "det_classes",
        "scores",
        "keep_idx",
        "keep_mask",
    ]
    assert man["outputs"][1] == {"name": "det_boxes", "shape": [1, 100, 4], "dtype": "float32"}
    assert man["extra"]["max_dets"] == 100 and man["extra"]["class_names"] == ["car", "truck", "bus"]
    dtypes = {o["name"]: o["dtype"] for o in man["outputs"]}
    assert dtypes["keep_idx"] == "int64" and dtypes["keep_mask"] == "bool"
    assert dtypes["num_dets"] == dtypes["det_classes"] == "int32" and dtypes["det_scores"] == "float32"
    assert man["trtexec"].startswith("trtexec --onnx=model.onnx")

    assert (
        man["artefacts"]["onnx"]["sha256"]
        == hashlib.sha256((exports["full_fp32"] / "model.onnx").read_bytes()).hexdigest()
    )
    assert man["source_checkpoint"]["sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    props = {p.key: p.value for p in onnx.load(exports["full_fp32"] / "model.onnx").metadata_props}
    assert props["pruner_mode"] == "global" and json.loads(props["k"]) == 30


def test_other_size_and_batch(exports):
    man = Manifest.read(exports["pred_fp32_big"])
    assert man.image_size == (128, 224) and man.grid == (8, 14) and man.k == 56
    assert man.fixed_batch == 2 and man.dynamic_batch is None and man.batch_step == 2
    assert man.inputs[0]["shape"] == [2, 3, 128, 224]
    assert [o["name"] for o in man.outputs] == ["scores", "keep_idx", "keep_mask"]
    dyn = Manifest.read(exports["full_dyn"])
    assert dyn.dynamic_batch == (1, 2, 4) and dyn.fixed_batch is None and dyn.batch_step == 2
    assert Manifest.from_onnx(exports["full_dyn"] / "model.onnx").dynamic_batch == (1, 2, 4)


def test_dynamic_batch_runs_at_several_sizes(exports):

    with OrtRunner(exports["full_dyn"] / "model.onnx") as r:
        for b in (1, 3):
            out = r.infer({"images": np.random.rand(b, 3, 96, 160).astype(np.float32)})
            assert out["keep_idx"].shape == (b, 30)
            assert (np.diff(out["keep_idx"], axis=1) > 0).all()  # sorted by patch index


@pytest.mark.parametrize("name", ["full_fp32", "pred_fp32_big", "full_dyn", "full_fp16", "full_int8"])
def test_verify_passes_precision_thresholds(exports, tiny_checkpoint, name):
    report, _ = run_verify(str(tiny_checkpoint), [str(exports[name])], images=4)
    c = report.candidates[0]
    assert c, c.failures
    if name in ("full_fp32", "pred_fp32_big", "full_dyn"):
        assert c.keep_iou_min == 1.0 and c.score_max_abs <= 1e-4
        assert c.detection_max_abs.get("heatmap", 0) < 1e-3
    else:
        assert c.keep_iou_mean >= thresholds_for(c.precision)["min_keep_iou"]


def test_int8_and_fp16_graphs_keep_predictor_fp32(exports):

    qf, hf = inspect_onnx(exports["full_int8"] / "model.onnx"), inspect_onnx(exports["full_fp16"] / "model.onnx")
    assert qf.has_qdq and not hf.has_qdq and hf.is_fp16 and not qf.is_fp16
    h = onnx.load(exports["full_fp16"] / "model.onnx")
    topk = [n for n in h.graph.node if n.op_type == "TopK"]
    assert topk  # the pruner is in the graph, fed by fp32 scores
    (scores_out,) = [o for o in h.graph.output if o.name == "scores"]
    assert scores_out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_verify_fails_on_a_wrong_model(exports, tiny_checkpoint, tmp_path):
    """A candidate exported from other weights must fail fp32 verification with exit code 1."""
    import torch

    ck = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        for p in ck.model.predictor_parameters():
            p.add_(torch.randn_like(p))
    other = tmp_path / "other.pt"
    save_checkpoint(other, ck.model, ck.cass_config)
    run_export(ExportRequest(checkpoint=other, out=tmp_path / "exp"), log=quiet)
    rc = main(
        [
            "verify",
            "--reference",
            str(tiny_checkpoint),
            "--candidate",
            str(tmp_path / "exp"),
            "--images",
            "4",
            "--json",
            str(tmp_path / "v.json"),
        ]
    )
    assert rc == 1
    rep = json.loads((tmp_path / "v.json").read_text())
    assert rep["passed"] is False and rep["candidates"][0]["keep_iou_mean"] < 1.0
    assert any("different checkpoint" in n for n in rep["notes"])


def test_tie_aware_iou_counts_ties_as_interchangeable():
    scores = np.array([[5.0, 3.0, 3.0, 1.0]])
    ref = np.array([[True, True, False, False]])
    swapped = np.array([[True, False, True, False]])  # picks the other member of the tie
    wrong = np.array([[False, True, True, False]])  # drops the clear winner
    iou, plain = tie_aware_iou(scores, ref, swapped, tie_tol=1e-6)
    assert iou[0] == 1.0 and plain[0] == pytest.approx(1 / 3)
    iou, _ = tie_aware_iou(scores, ref, wrong, tie_tol=1e-6)
    # matched = |A∩B \ T| (0) + min(|A∩T|, |B∩T|) (1) = 1; union = 2 + 2 - 1 = 3
    assert iou[0] == pytest.approx(1 / 3)


def test_band_groups_tie_boundaries():

    groups = band_groups("band", (3, 2), bands=3)
    assert groups.tolist() == [0, 0, 1, 1, 2, 2]
    scores = np.array([[9.0, 1.0, 4.0, 2.0, 0.5, 0.7]])
    ref = np.array([[True, False, True, False, False, True]])
    assert boundary_scores(scores, ref, groups).tolist() == [[9.0, 9.0, 4.0, 4.0, 0.7, 0.7]]


def test_tensorrt_topk_limit_refused_before_export(tiny_checkpoint, tmp_path):
    with pytest.raises(LimitError, match="band"):
        run_export(
            ExportRequest(
                checkpoint=tiny_checkpoint, out=tmp_path / "big", image_size=(1088, 1920), target="tensorrt10"
            ),
            log=quiet,
        )
    assert not (tmp_path / "big").exists()


def test_no_overwrite_without_force_and_failed_export_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(tiny_checkpoint), "--out", str(out)]) == 0
    before = (out / "model.onnx").read_bytes()
    assert main(["export", str(tiny_checkpoint), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "model.onnx").read_bytes() == before

    def boom(*a, **k):
        raise ExportError("simulated failure in int8 quantisation")

    monkeypatch.setattr(precision, "to_int8", boom)
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "q"), "--precision", "int8"]) == 1
    assert not (tmp_path / "q").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no temp directory left behind


def test_export_bad_input(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "a")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    assert main(["export", str(bad), "--out", str(tmp_path / "a")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "a"), "--dynamic-batch", "4", "2", "1"]) == 2
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "a"), "--image-size", "100", "160"]) == 2
    assert "multiple" in capsys.readouterr().err
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "a"), "--profile", "nope"]) == 2
    assert not (tmp_path / "a").exists()


def test_corrupt_onnx_candidate(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    assert main(["verify", "--reference", str(tiny_checkpoint), "--candidate", str(bad)]) == 2
    assert "model.onnx" in capsys.readouterr().err


def test_non_finite_candidate_outputs_fail():

    scores = np.array([[3.0, 1.0, 2.0, 0.0]])
    mask = np.array([[True, False, True, False]])
    ref = {"scores": scores, "keep_mask": mask, "heatmap": np.zeros((1, 1, 2, 2))}
    cand = {"scores": scores.copy(), "keep_mask": mask.copy(), "heatmap": np.full((1, 1, 2, 2), np.nan)}
    rep = compare_outputs("c", "fp16", ref, cand, thresholds_for("fp16"))
    assert not rep and "heatmap" in rep.failures[0]


def _dets(rows):
    """SPEC 6b outputs of one image from (class, score, x1, y1, x2, y2) rows, N = 6."""
    n = len(rows)
    out = {
        "num_dets": np.array([[n]], np.int32),
        "det_boxes": np.zeros((1, 6, 4), np.float32),
        "det_scores": np.zeros((1, 6), np.float32),
        "det_classes": np.zeros((1, 6), np.int32),
    }
    for i, (c, s, *box) in enumerate(rows):
        out["det_classes"][0, i], out["det_scores"][0, i], out["det_boxes"][0, i] = c, s, box
    return out


def test_detections_are_compared_by_matching():
    from cass_deploy.evaluation.verify import compare_detections, thresholds_for

    thr = thresholds_for("fp32")
    a = [(0, 0.9, 10, 10, 50, 50), (1, 0.8, 60, 10, 90, 40), (0, 0.3, 0, 0, 5, 5), (2, 0.04, 70, 70, 80, 80)]
    same = compare_detections(_dets(a), _dets(a), thr)
    assert same["match"] == same["precision"] == 1.0 and same["n_reference"] == 3 and same["score_max_abs"] == 0
    # another export cut at score 0.1 (a threshold recorded nowhere): the 0.04 row is not a miss
    cut = compare_detections(_dets(a), _dets(a[:3]), thr)
    assert cut["match"] == 1.0 and cut["score_floor"] == pytest.approx(0.3)
    # rows in another order with slightly other scores still match; a moved box and a wrong class do not
    b = [(1, 0.8005, 60, 10, 90, 40), (0, 0.9, 11, 10, 50, 51), (0, 0.3, 0, 0, 5, 5)]
    moved = compare_detections(_dets(a[:3]), _dets(b), thr)
    assert moved["match"] == 1.0 and moved["score_max_abs"] == pytest.approx(5e-4, abs=1e-6)
    assert moved["matched_iou_min"] == pytest.approx(39 * 40 / (1600 + 39 * 41 - 39 * 40), abs=1e-6)
    wrong = compare_detections(_dets(a[:3]), _dets([(2, 0.9, 10, 10, 50, 50), *a[1:3]]), thr)
    assert wrong["match"] == pytest.approx(2 / 3) and wrong["precision"] == pytest.approx(2 / 3)
    gone = compare_detections(_dets(a[:3]), _dets([(0, 0.9, 200, 200, 240, 240), *a[1:3]]), thr)
    assert gone["match"] == pytest.approx(2 / 3)
