"""The detector exports with the dynamo ONNX exporter (opset 17, free batch) and ONNX Runtime
reproduces torch's keep set and scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cass_deploy.export.onnx_export import export_module
from cass_deploy.model.detector import PrunedDetector
from cass_deploy.model.interface import INPUT_NAME

from conftest import tiny_model_config

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _export(module: torch.nn.Module, names: list[str], path, batch: int = 2) -> None:
    proto = export_module(
        module,
        torch.rand(batch, 3, 64, 96),
        input_name=INPUT_NAME,
        output_names=names,
        opset=17,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
        what="the tiny detector",
    )
    onnx.save(proto, str(path))


@pytest.mark.parametrize("mode", ["global", "band", "none", "threshold"])
def test_onnx_round_trip(mode, tmp_path):
    cfg = tiny_model_config(mode=mode, keep_ratio=0.4, bands=2, threshold=0.5)
    model = PrunedDetector(cfg).eval().set_outputs(raw_head=True)
    names = model.output_names("full")
    path = tmp_path / f"{mode}.onnx"
    _export(model.full_module(), names, path)

    proto = onnx.load(str(path))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert [o.name for o in proto.graph.output] == names
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 64, 96, generator=torch.Generator().manual_seed(5))  # another batch size
    got = dict(zip(names, sess.run(None, {INPUT_NAME: x.numpy()})))
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(got["scores"], ref["scores"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["keep_mask"], ref["keep_mask"].numpy())
    if mode != "threshold":
        assert got["keep_idx"].dtype == np.int64 and got["keep_idx"].shape == (3, model.k)
        np.testing.assert_array_equal(got["keep_idx"], ref["keep_idx"].numpy())
    else:
        assert "keep_idx" not in got
    np.testing.assert_allclose(got["heatmap"], ref["heatmap"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["box"], ref["box"].numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("mode", ["band", "threshold"])
def test_onnx_deployed_outputs_match_torch(mode, tmp_path):
    """SPEC 6b: the decode in the graph gives ONNX Runtime the same detections as torch's full module
    (EfficientNMS dtypes and shapes; padded rows zero) at any batch size."""
    cfg = tiny_model_config(mode=mode, keep_ratio=0.4, bands=2, threshold=0.5)
    model = PrunedDetector(cfg).eval().set_outputs(max_dets=20, score_thresh=0.0105)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.head.cls.weight, std=0.5)  # spread the scores: no near-ties for TopK to order
    torch.nn.init.constant_(model.head.cls.bias, -6.0)  # most cells below the 0.0105 threshold: padded rows
    names = model.output_names("full")
    assert names[:4] == ["num_dets", "det_boxes", "det_scores", "det_classes"]
    path = tmp_path / f"{mode}.onnx"
    _export(model.full_module(), names, path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "TopK" in ops and not {"Mod", "NonZero", "NonMaxSuppression"} & ops  # TensorRT-friendly Fast NMS
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    got = dict(zip(names, sess.run(None, {INPUT_NAME: x.numpy()})))
    with torch.no_grad():
        ref = dict(zip(names, (t.numpy() for t in model.full_module()(x))))
    for name, dtype, shape in (
        ("num_dets", np.int32, (3, 1)),
        ("det_boxes", np.float32, (3, 20, 4)),
        ("det_scores", np.float32, (3, 20)),
        ("det_classes", np.int32, (3, 20)),
    ):
        assert got[name].dtype == dtype and got[name].shape == shape, name
    np.testing.assert_array_equal(got["num_dets"], ref["num_dets"])
    np.testing.assert_allclose(got["det_scores"], ref["det_scores"], atol=1e-5)
    np.testing.assert_allclose(got["det_boxes"], ref["det_boxes"], atol=1e-3)
    np.testing.assert_array_equal(got["det_classes"], ref["det_classes"])
    rows = np.arange(20)[None, :] >= got["num_dets"]  # padding: zero everywhere
    assert rows.any() and (got["det_scores"][rows] == 0).all() and (got["det_boxes"][rows] == 0).all()
    assert (got["det_classes"][rows] == 0).all() and (got["det_scores"][~rows] >= 0.0105).all()
    assert (np.diff(got["det_scores"], axis=1) <= 0).all()  # descending


def test_onnx_predictor_part(tmp_path):
    cfg = tiny_model_config(mode="global", keep_ratio=0.5)
    model = PrunedDetector(cfg).eval()
    names = model.output_names("predictor")
    path = tmp_path / "predictor.onnx"
    _export(model.predictor_module(), names, path)
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert "ConvTranspose" not in ops  # the head is not in this part
    assert [n for n in proto.graph.node if n.op_type == "TopK"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 96)
    got = dict(zip(names, sess.run(None, {INPUT_NAME: x.numpy()})))
    with torch.no_grad():
        scores, keep_idx, keep_mask = model.predictor_module()(x)
    np.testing.assert_array_equal(got["keep_idx"], keep_idx.numpy())
    np.testing.assert_array_equal(got["keep_mask"], keep_mask.numpy())
    np.testing.assert_allclose(got["scores"], scores.numpy(), rtol=1e-5, atol=1e-5)
