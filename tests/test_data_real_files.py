"""Real-format quirks on real files (../shared/data: KITTI frame 000007, its devkit label file and the
mmdetection3d COCO JSON of the same frame), and letterbox / stretch fitting with detections scored
in the original image. Files derived from them (a crowd flag, lower-case types, a crop) are written
to tmp_path."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cass_deploy.data.coco import CocoDataset
from cass_deploy.data.common import fit_transform
from cass_deploy.data.factory import load_dataset
from cass_deploy.data.kitti import KittiDataset, parse_label_file
from cass_deploy.errors import InputError
from cass_deploy.evaluation.scoring import content_patches, evaluate, to_original
from cass_deploy.evaluation.validate import load_batches

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"the real sample files are absent: {DATA} not found")
FRAME = DATA / "training" / "image_2" / "000007.png"
LABEL = DATA / "training" / "label_2" / "000007.txt"
JSON = DATA / "kitti_infos_mono3d.coco.json"
INPUT = (128, 224)
GRID = (8, 14)


def _kitti(tmp_path: Path, lines: list[str] | None = None, extra: dict | None = None) -> Path:
    """A KITTI directory with frame 000007 (and ``extra``: stem -> (PIL image, label text))."""
    root = tmp_path / "kitti"
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    shutil.copy(FRAME, root / "image_2" / "000007.png")
    text = "\n".join(lines) + "\n" if lines is not None else LABEL.read_text()
    (root / "label_2" / "000007.txt").write_text(text)
    for stem, (image, label) in (extra or {}).items():
        image.save(root / "image_2" / f"{stem}.png")
        (root / "label_2" / f"{stem}.txt").write_text(label)
    return root


def _perfect(batch, extra_boxes=None):
    """A predictor that returns the ground truth (input frame), score 0.9, and optional extra boxes."""

    def predict(images):
        boxes, scores, labels = [], [], []
        for b in range(len(images)):
            bx = batch["boxes"][b]
            add = extra_boxes[b] if extra_boxes is not None else torch.zeros(0, 4)
            boxes.append(torch.cat([bx, add]))
            scores.append(torch.cat([torch.full((len(bx),), 0.9), torch.full((len(add),), 0.95)]))
            labels.append(torch.cat([batch["labels"][b], torch.zeros(len(add), dtype=torch.int64)]))
        return {
            "boxes": boxes,
            "scores": scores,
            "labels": labels,
            "keep_mask": torch.ones(len(images), 112, dtype=bool),
        }

    return predict


@needs_data
def test_palette_png_reads_through_its_palette():
    with Image.open(FRAME) as im:
        assert im.mode == "P" and im.size == (1242, 375)
        rgb = np.asarray(im.convert("RGB"))
        index = np.asarray(im)
        palette = np.asarray(im.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(rgb, palette[index])  # the palette lookup, independently
    item = KittiDataset(FRAME.parent, LABEL.parent)[0]
    assert item["image"].shape == (3, 375, 1242)
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-6)


@needs_data
def test_kitti_dontcare_is_an_ignore_region_and_cyclist_is_dropped():
    boxes, labels, _, ignore = parse_label_file(LABEL, {"car": 0, "van": 0, "truck": 1, "bus": 2}, with_ignore=True)
    assert labels.tolist() == [0, 0, 0]  # 3 Car; the Cyclist is outside the vehicle map
    np.testing.assert_allclose(ignore, [[753.33, 164.32, 798.00, 186.74], [738.50, 171.32, 753.27, 184.42]], atol=1e-3)
    item = KittiDataset(FRAME.parent, LABEL.parent)[0]
    assert item["ignore"].shape == (2, 4) and item["ignore_labels"].tolist() == [-1, -1]
    np.testing.assert_allclose(item["orig_boxes"][0].numpy(), [564.62, 174.59, 616.43, 224.74], atol=1e-3)


@needs_data
def test_a_detection_on_dontcare_is_neither_hit_nor_false_positive(tmp_path):
    """mAP (pycocotools, DontCare as crowd regions) is unchanged by a detection on a DontCare box and
    lowered by the same detection on empty road; recall counts the 3 cars only."""
    batches = load_batches(str(_kitti(tmp_path)), INPUT, 1, resize="letterbox")
    b = batches[0]
    tf = b["transforms"][0]
    on_dontcare = b["ignore"][0][:1] * tf[[0, 1, 0, 1]] + tf[[2, 3, 2, 3]]  # mapped into the input
    elsewhere = torch.tensor([[10.0, 40.0, 30.0, 60.0]])
    res = {
        name: evaluate(_perfect(b, extra), batches, INPUT, GRID, score_thr=0.3, num_classes=3)
        for name, extra in (("clean", None), ("dontcare", [on_dontcare]), ("road", [elsewhere]))
    }
    assert res["clean"].by_field["all"].n_gt == 3 and res["clean"].recall("all") == 1.0
    assert res["clean"].map50 == pytest.approx(1.0)
    assert res["dontcare"].map50 == pytest.approx(1.0)  # ignored, as pycocotools does for crowd regions
    assert res["road"].map50 < 0.99  # the same detection where nothing is: a false positive above every hit


@needs_data
def test_coco_json_ids_from_zero_subfolder_paths_and_extra_keys(tmp_path):
    ds = load_dataset(str(DATA))  # the directory holds the JSON: COCO wins over KITTI
    assert isinstance(ds, CocoDataset) and len(ds) == 1
    item = ds[0]
    assert item["image"].shape == (3, 375, 1242) and item["labels"].tolist() == [0, 0, 0]  # Car id 2 -> car
    assert item["image_id"] == 7
    # category ids permuted so that Car is 0 (a falsy id): still 3 cars
    data = json.loads(JSON.read_text())
    swap = {0: 2, 2: 0, 1: 1}
    for c in data["categories"]:
        c["id"] = swap[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = swap[a["category_id"]]
    (tmp_path / "training").symlink_to(DATA / "training")
    (tmp_path / "a.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path, tmp_path / "a.json")
    assert ds[0]["labels"].tolist() == [0, 0, 0] and ds.records[0]["file_name"] == "training/image_2/000007.png"


@needs_data
def test_iscrowd_is_excluded_as_pycocotools_does(tmp_path):
    """One Car marked iscrowd: not an object for recall, an ignore region for mAP — and our mAP equals
    pycocotools' own COCOeval on the same JSON and detections."""
    data = json.loads(JSON.read_text())
    data["annotations"][0]["iscrowd"] = 1
    for a in data["annotations"]:
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    (tmp_path / "training").symlink_to(DATA / "training")
    (tmp_path / "c.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path, tmp_path / "c.json")
    item = ds[0]
    assert item["labels"].tolist() == [0, 0] and item["ignore_labels"].tolist() == [0]
    # detections: the crowd box (score 0.95), one real car (0.9), one false box (0.8)
    cars = [a["bbox"] for a in data["annotations"] if a["category_id"] == 2]
    xywh = [cars[0], cars[1], [100.0, 300.0, 40.0, 30.0]]
    scores = [0.95, 0.9, 0.8]
    dets = [{"image_id": 7, "category_id": 2, "bbox": b, "score": s} for b, s in zip(xywh, scores)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "c.json"))
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.catIds = [2]
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    pr = ev.eval["precision"][0, :, 0, 0, 0]
    golden = float(np.mean(pr[pr > -1]))
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in xywh])
    batches = load_batches(str(tmp_path / "c.json"), (375, 1242), 1)

    def predict(images):
        return {"boxes": [xyxy], "scores": [torch.tensor(scores)], "labels": [torch.zeros(3, dtype=torch.int64)]}

    res = evaluate(predict, batches, (375, 1242), (23, 77), score_thr=0.3, num_classes=3)
    assert res.n_objects == 2 and res.recall("all") == 0.5  # the crowd box is not counted
    assert res.map50 == pytest.approx(golden, abs=1e-9) and 0 < golden < 1


@needs_data
def test_lower_case_rope3d_types(tmp_path):
    base = LABEL.read_text().splitlines()[0].split()
    lines = [" ".join([t, *base[1:]]) for t in ("car", "van", "truck", "bus", "cyclist", "dontcare")]
    ds = KittiDataset(_kitti(tmp_path, lines) / "image_2", tmp_path / "kitti" / "label_2")
    item = ds[0]
    assert item["labels"].tolist() == [0, 0, 1, 2] and item["ignore"].shape == (1, 4)


@needs_data
def test_mixed_sizes_need_resize_and_each_image_keeps_its_own_transform(tmp_path):
    with Image.open(FRAME) as im:
        crop = im.convert("RGB").crop((400, 100, 900, 375))  # 500 x 275, holds the 3 cars
    lines = []
    for line in LABEL.read_text().splitlines():
        f = line.split()
        x1, y1, x2, y2 = map(float, f[4:8])
        if f[0] == "Car":
            f[4:8] = [f"{x1 - 400:.2f}", f"{y1 - 100:.2f}", f"{x2 - 400:.2f}", f"{y2 - 100:.2f}"]
            lines.append(" ".join(f))
    root = _kitti(tmp_path, extra={"000008": (crop, "\n".join(lines) + "\n")})
    with pytest.raises(InputError, match=r"has 375x1242 images but the model takes 128x224; .* pass --resize"):
        load_batches(str(root), INPUT, 2)
    with pytest.raises(InputError, match=r"000008.png is 275x500 but .*000007.png is 375x1242"):
        KittiDataset(root / "image_2", root / "label_2")[1]
    batches = load_batches(str(root), INPUT, 2, resize=True)
    b = batches[0]
    assert b["orig_sizes"].tolist() == [[375, 1242], [275, 500]]
    assert not torch.equal(b["transforms"][0], b["transforms"][1])
    res = evaluate(_perfect(b), batches, INPUT, GRID, score_thr=0.3, num_classes=3)
    assert res.n_objects == 6 and res.recall("all") == 1.0  # mapped in and back exactly


def test_fit_transform_letterbox_and_stretch():
    assert fit_transform((375, 1242), (128, 224), "letterbox") == pytest.approx(
        (224 / 1242, 68 / 375, 0, 30, 224, 68), abs=1e-9
    )
    assert fit_transform((1080, 1920), (1088, 1920), "letterbox") == (1.0, 1.0, 0, 4, 1920, 1080)
    assert fit_transform((375, 1242), (128, 224), "stretch") == (224 / 1242, 128 / 375, 0, 0, 224, 128)
    with pytest.raises(InputError, match=r"a 1x5000 image letterboxed into 128x224 would be 0x224 px"):
        fit_transform((1, 5000), (128, 224), "letterbox")
    with pytest.raises(InputError, match="--resize must be one of letterbox, stretch, got 'crop'"):
        fit_transform((10, 10), (16, 16), "crop")
    with pytest.raises(InputError, match="sizes must be >= 1"):
        fit_transform((0, 10), (16, 16), "stretch")


def test_letterbox_detections_map_back_and_padding_is_never_image():
    tf = torch.tensor([0.5, 0.5, 0.0, 30.0])
    back = to_original(
        {"boxes": torch.tensor([[10.0, 40.0, 20.0, 50.0], [0.0, 0.0, 50.0, 20.0]]), "scores": torch.ones(2)},
        tf,
        (100, 448),
    )
    # the first box maps back by (x - p) / s; the second lies on the top padding only and is dropped
    np.testing.assert_allclose(back["boxes"].numpy(), [[20.0, 20.0, 40.0, 40.0]])
    content = content_patches(tf, (100, 448), GRID, INPUT)  # image rows 30..80 of 128: patch rows 2..4
    rows = content.reshape(GRID).any(1)
    assert rows.tolist() == [False, False, True, True, True, False, False, False]
    assert content_patches(None, INPUT, GRID, INPUT).all()


def test_degenerate_image_is_an_input_error(tmp_path):
    root = tmp_path / "k"
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    Image.new("RGB", (3000, 1)).save(root / "image_2" / "000001.png")
    (root / "label_2" / "000001.txt").write_text("")
    with pytest.raises(InputError, match=r"000001.png: a 1x3000 image letterboxed into 128x224 would be 0x224 px"):
        load_batches(str(root), INPUT, 1, resize="letterbox")
