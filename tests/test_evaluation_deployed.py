"""SPEC 6b end to end: the decode in the graph equals the Python decode on the trained tiny (demo
config) checkpoint; validate and verify take any ONNX with the deployed layout (another toolchain's,
without our metadata, with --grid) and refuse one without it; a 1920x1080 frame validates through
a 1088x1920 band-pruned export (8160 patches, every TopK <= 3840) on CPU."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from cass_deploy.cli import main
from cass_deploy.config import CassConfig
from cass_deploy.data.factory import load_dataset
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import request_from
from cass_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from cass_deploy.model.detector import PrunedDetector
from cass_deploy.model.head import decode
from cass_deploy.runtime.manifest import Manifest
from cass_deploy.runtime.ort_runner import OrtRunner

from conftest import tiny_model_config

KITTI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti"
quiet = lambda s: None  # noqa: E731


@pytest.fixture(scope="module")
def export(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("deployed") / "export"
    run_export(request_from(checkpoint=tiny_checkpoint, out=out, det_score_thresh=0.0), log=quiet)
    return out


@pytest.fixture(scope="module")
def foreign(export, tmp_path_factory):
    """The export's ONNX as another toolchain would ship it: no cass-deploy metadata at all."""
    proto = onnx.load(export / "model.onnx")
    del proto.metadata_props[:]
    path = tmp_path_factory.mktemp("foreign") / "other.onnx"
    onnx.save(proto, path)
    return path


def test_in_graph_decode_equals_the_python_decode(tiny_checkpoint, export):
    """ONNX Runtime's num_dets / det_* against head.decode on torch's raw maps, image by image, up to
    ties (rows compared as sets of (class, rounded score, rounded box))."""
    model = load_checkpoint(tiny_checkpoint).model.eval()
    ds = load_dataset("synthetic", num_images=6, image_size=model.image_size, seed=3)
    x = torch.stack([ds[i]["image"] for i in range(6)])
    with torch.no_grad():
        raw = model(x)
    ref = decode(raw, model.image_size, score_thresh=0.0, max_dets=100)
    total = 0
    with OrtRunner(export / "model.onnx") as ort:
        for i in range(6):
            out = ort.infer({"images": x[i : i + 1].numpy()})
            n = int(out["num_dets"][0, 0])
            assert n == len(ref[i]["scores"]), i
            got = {
                (int(c), round(float(s), 4), *np.round(b, 1).tolist())
                for c, s, b in zip(out["det_classes"][0, :n], out["det_scores"][0, :n], out["det_boxes"][0, :n])
            }
            want = {
                (int(c), round(float(s), 4), *np.round(b.numpy(), 1).tolist())
                for c, s, b in zip(ref[i]["labels"], ref[i]["scores"], ref[i]["boxes"])
            }
            assert len(got ^ want) <= 4, (i, sorted(got ^ want)[:4])  # a tie or rounding edge at most
            total += n
    assert total == 600  # threshold 0: every image fills its N = 100 rows


def test_validate_and_verify_a_file_without_our_metadata(foreign, export, tiny_checkpoint, tmp_path, capsys):
    assert main(["validate", str(foreign), "--images", "4"]) == 2
    err = capsys.readouterr().err
    assert "no cass-deploy metadata and no 'grid'" in err and "--grid HP WP" in err
    assert main(["validate", str(foreign), "--grid", "5", "10", "--images", "4"]) == 2
    assert "keep_mask has 60 patches but the grid 5x10 has 50" in capsys.readouterr().err
    out = tmp_path / "v.json"
    assert main(["validate", str(foreign), "--grid", "6", "10", "--images", "4", "--json", str(out)]) == 0
    other = json.loads(out.read_text())
    assert other["reference"] is None  # nothing says where its weights are
    ours = tmp_path / "ours.json"
    assert main(["validate", str(export), "--images", "4", "--json", str(ours), "--reference", "none"]) == 0
    a, b = other["result"], json.loads(ours.read_text())["result"]
    assert a["by_field"] == b["by_field"] and a["map50"] == b["map50"]  # the same numbers without a manifest
    argv = ["verify", "--reference", str(tiny_checkpoint), "--candidate", str(foreign), "--grid", "6", "10"]
    assert main([*argv, "--images", "4", "--json", str(tmp_path / "f.json")]) == 0
    cand = json.loads((tmp_path / "f.json").read_text())["candidates"][0]
    assert cand["keep_iou_mean"] == 1.0 and cand["detections"]["match"] == 1.0


def test_a_file_without_the_layout_is_refused(tmp_path, capsys):
    """An ONNX ending in other outputs (here a YOLO-style [B, N, 6] tensor): exit 2, naming what is
    missing and the layout expected."""
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 64, 96])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output0"])], "g", [inp], [out])
    path = tmp_path / "yolo.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["validate", str(path), "--grid", "4", "6"]) == 2
    err = capsys.readouterr().err
    assert "lacks the output(s) num_dets, det_boxes, det_scores, det_classes, keep_mask (it has output0)" in err
    assert "num_dets [B,1] int32, det_boxes [B,N,4] float32" in err and "Traceback" not in err
    inp2 = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 96])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output0"])], "g", [inp2], [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["validate", str(path), "--grid", "4", "6"]) == 2
    assert "expected one input 'images' [B, 3, H, W] float32, found input[1, 3, 64, 96]" in capsys.readouterr().err


def test_raw_head_export_keeps_the_maps_and_validates(tiny_checkpoint, export, tmp_path):
    out = tmp_path / "raw"
    run_export(request_from(checkpoint=tiny_checkpoint, out=out, raw_head=True), log=quiet)
    names = [o["name"] for o in Manifest.read(out).outputs]
    assert names == ["scores", "keep_idx", "keep_mask", "heatmap", "box"]
    assert main(["validate", str(out), "--images", "2", "--reference", "none"]) == 0
    assert main(["verify", "--reference", str(tiny_checkpoint), "--candidate", str(out), "--images", "2"]) == 0


@pytest.mark.skipif(not KITTI.is_dir(), reason=f"the real sample files are absent: {KITTI} not found")
def test_a_size_mismatch_without_resize_names_both_sizes(export, capsys):
    assert main(["validate", str(export), "--data", str(KITTI), "--images", "1"]) == 2
    err = capsys.readouterr().err
    assert "375x1242 images but the model takes 96x160" in err and "--resize" in err
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error
        main(["validate", str(export), "--data", str(KITTI), "--images", "1", "--resize", "crop"])
    assert exc.value.code == 2 and "invalid choice: 'crop'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not KITTI.is_dir(), reason=f"the real sample files are absent: {KITTI} not found")
def test_1920x1080_frame_through_a_band_pruned_1088x1920_export(tmp_path, capsys):
    """8160 patches (68 x 120): keep 0.5 is k = 4080 > TensorRT's 3840, so the band pruner's three
    TopKs (1360 each) carry it; the export passes the tensorrt10 limits and a 1920x1080 frame (KITTI
    000007 resized, its labels scaled) validates through letterbox (4 px of padding top and bottom)."""
    model = PrunedDetector(tiny_model_config(image_size=(1088, 1920), mode="band", keep_ratio=0.5, bands=3))
    assert model.grid == (68, 120) and model.k == 4080 and max(model.topk_sizes) <= 3840
    save_checkpoint(tmp_path / "hr.pt", model, CassConfig())
    root = tmp_path / "frames"
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    with Image.open(KITTI / "training" / "image_2" / "000007.png") as im:
        w, h = im.size
        im.convert("RGB").resize((1920, 1080), Image.BILINEAR).save(root / "image_2" / "000007.png")
    lines = []
    for line in (KITTI / "training" / "label_2" / "000007.txt").read_text().splitlines():
        f = line.split()
        x1, y1, x2, y2 = map(float, f[4:8])
        f[4:8] = [f"{x1 * 1920 / w:.2f}", f"{y1 * 1080 / h:.2f}", f"{x2 * 1920 / w:.2f}", f"{y2 * 1080 / h:.2f}"]
        lines.append(" ".join(f))
    (root / "label_2" / "000007.txt").write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    argv = ["export", str(tmp_path / "hr.pt"), "--out", str(tmp_path / "e"), "--target", "tensorrt10"]
    assert main(argv) == 0
    t1 = time.perf_counter()
    man = Manifest.read(tmp_path / "e")
    assert man.topk_sizes == (1360, 1360, 1360) and man.grid == (68, 120) and man.image_size == (1088, 1920)
    out = tmp_path / "v.json"
    argv = ["validate", str(tmp_path / "e"), "--data", str(root), "--resize", "--images", "1", "--reference", "none"]
    assert main([*argv, "--json", str(out)]) == 0
    t2 = time.perf_counter()
    res = json.loads(out.read_text())["result"]
    assert res["by_field"]["all"]["n_gt"] == 3 and res["n_images"] == 1
    assert res["keep_ratio"] == pytest.approx(4080 / 8160, abs=0.02)  # over image patches: all 68 rows hold image
    print(f"1920x1080: export {t1 - t0:.1f} s, validate {t2 - t1:.1f} s (CPU)")
    shutil.rmtree(tmp_path / "e")
