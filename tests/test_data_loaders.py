"""COCO and KITTI loaders, collate and load_dataset auto-detection, on small files written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cass_deploy.data.coco import CocoDataset
from cass_deploy.data.collate import collate
from cass_deploy.data.factory import detect_format, load_dataset
from cass_deploy.data.kitti import KittiDataset
from cass_deploy.data.synthetic import SyntheticRoadside
from cass_deploy.errors import ConfigError, InputError


def _png(path: Path, h: int, w: int, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3) + value) % 251
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _kitti_line(kind: str, x1, y1, x2, y2, extra: str = "") -> str:
    return f"{kind} 0.00 0 -1.57 {x1} {y1} {x2} {y2} 1.50 1.60 3.90 1.0 1.5 20.0 0.01{extra}"


# --------------------------------------------------------------------------- KITTI


@pytest.fixture
def kitti_dir(tmp_path):
    root = tmp_path / "kitti"
    _png(root / "image_2" / "000007.png", 48, 80)
    _png(root / "image_2" / "000003.jpg", 48, 80, value=5)
    (root / "label_2").mkdir(parents=True)
    (root / "label_2" / "000007.txt").write_text(
        "\n".join(
            [
                _kitti_line("Car", 1.5, 2.0, 20.5, 12.0),
                _kitti_line("Van", 30, 10, 44, 20),
                _kitti_line("DontCare", 60, 0, 70, 8),
                _kitti_line("Pedestrian", 50, 5, 54, 30),
                "",
                _kitti_line("truck", 10, 20, 60, 47.5, extra=" 0.93"),  # lowercase, with a score
                _kitti_line("Bus", 0, 30, 30, 48),
                _kitti_line("Cyclist", 70, 20, 75, 30),
            ]
        )
        + "\n"
    )
    (root / "label_2" / "000003.txt").write_text("")  # an image with no objects
    return root


def test_kitti_reads_boxes_and_maps_classes(kitti_dir):
    ds = KittiDataset(kitti_dir / "image_2", kitti_dir / "label_2")
    assert len(ds) == 2 and ds.classes == ("car", "truck", "bus")
    empty, item = ds[0], ds[1]  # sorted: 000003, 000007
    assert empty["image_id"] == 3 and empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert item["image_id"] == 7
    expected = torch.tensor(
        [[1.5, 2.0, 20.5, 12.0], [30, 10, 44, 20], [10, 20, 60, 47.5], [0, 30, 30, 48]], dtype=torch.float32
    )
    assert torch.equal(item["boxes"], expected)
    assert item["labels"].tolist() == [0, 0, 1, 2]  # Car, Van -> car; truck; Bus
    assert item["image"].shape == (3, 48, 80) and item["image"].dtype == torch.float32
    raw = np.array(Image.open(kitti_dir / "image_2" / "000007.png"))
    assert torch.allclose(item["image"], torch.from_numpy(raw).permute(2, 0, 1).float() / 255)


def test_kitti_custom_class_map_keeps_pedestrians(kitti_dir):
    ds = KittiDataset(
        kitti_dir / "image_2", kitti_dir / "label_2", class_map={"Car": "car", "Pedestrian": "pedestrian"}
    )
    assert ds.classes == ("car", "truck", "bus", "pedestrian")
    assert ds[1]["labels"].tolist() == [0, 3]
    with pytest.raises(ConfigError, match="bicycle"):
        KittiDataset(kitti_dir / "image_2", kitti_dir / "label_2", class_map={"Cyclist": "bicycle"})


@pytest.mark.parametrize(
    "bad, message",
    [
        ("Car 0.0 0 -1.57 1 2 20 12 1.5 1.6 3.9 1.0 1.5 20.0", "expected 15 fields"),
        (_kitti_line("Car", 1, 2, "abc", 12), "'x2' must be a finite number, got 'abc'"),
        (_kitti_line("Car", 20, 2, 20, 12), "x2 > x1"),
        (_kitti_line("Truck", 1, 12, 20, 3), "y2 > y1"),
    ],
)
def test_kitti_bad_lines_name_file_and_line(kitti_dir, bad, message):
    label = kitti_dir / "label_2" / "000007.txt"
    label.write_text(_kitti_line("Car", 1, 2, 20, 12) + "\n\n" + bad + "\n")
    with pytest.raises(InputError) as err:
        KittiDataset(kitti_dir / "image_2", kitti_dir / "label_2")
    text = str(err.value)
    assert f"{label}:3" in text and message in text


def test_kitti_box_far_outside_the_image_names_file_and_line(kitti_dir):
    label = kitti_dir / "label_2" / "000007.txt"
    label.write_text(_kitti_line("Car", 1, 2, 80.6, 12) + "\n" + _kitti_line("Car", 1, 2, 95, 12) + "\n")
    ds = KittiDataset(kitti_dir / "image_2", kitti_dir / "label_2")
    with pytest.raises(InputError, match=f"{label}:2.*outside"):
        ds[1]
    label.write_text(_kitti_line("Car", -0.5, 2, 80.6, 12) + "\n")  # within 1 px: clipped
    assert KittiDataset(kitti_dir / "image_2", kitti_dir / "label_2")[1]["boxes"].tolist() == [[0, 2, 80, 12]]


def test_kitti_missing_image_and_size_mismatch(kitti_dir):
    (kitti_dir / "label_2" / "000009.txt").write_text(_kitti_line("Car", 1, 2, 20, 12) + "\n")
    with pytest.raises(InputError, match="000009"):
        KittiDataset(kitti_dir / "image_2", kitti_dir / "label_2")
    _png(kitti_dir / "image_2" / "000009.png", 96, 160)
    ds = KittiDataset(kitti_dir / "image_2", kitti_dir / "label_2")
    with pytest.raises(InputError, match="000009.png is 96x160"):
        ds[2]
    # with image_size every image is resized and its boxes scaled
    ds = KittiDataset(kitti_dir / "image_2", kitti_dir / "label_2", image_size=(48, 80))
    item = ds[2]
    assert item["image"].shape == (3, 48, 80)
    assert torch.allclose(item["boxes"], torch.tensor([[0.5, 1.0, 10.0, 6.0]]))


# --------------------------------------------------------------------------- COCO


def _coco(root: Path, sizes=((40, 64), (40, 64)), name: str = "annotations.json") -> Path:
    images = []
    for k, (h, w) in enumerate(sizes):
        _png(root / "images" / f"im{k}.png", h, w, value=k)
        images.append({"id": 10 + k, "file_name": f"im{k}.png", "height": h, "width": w})
    data = {
        "images": images,
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 3, "name": "car"},
            {"id": 6, "name": "bus"},
            {"id": 8, "name": "truck"},
            {"id": 9, "name": "Van"},
            {"id": 12, "name": "traffic light"},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [2, 3, 10, 5], "area": 50, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [20, 3, 4, 10], "area": 40, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 12, "bbox": [30, 3, 4, 4], "area": 16, "iscrowd": 0},
            {"id": 4, "image_id": 10, "category_id": 8, "bbox": [30, 10, 30, 25.5], "area": 765, "iscrowd": 0},
            {"id": 5, "image_id": 10, "category_id": 6, "bbox": [0, 0, 64, 40], "area": 2560, "iscrowd": 1},
            {"id": 6, "image_id": 11, "category_id": 9, "bbox": [1, 1, 8, 8], "area": 64, "iscrowd": 0},
            {"id": 7, "image_id": 11, "category_id": 6, "bbox": [5, 5, 20, 30], "area": 600},
        ],
    }
    path = root / name
    path.write_text(json.dumps(data))
    return path


def test_coco_filters_unknown_categories_and_crowds(tmp_path):
    ann = _coco(tmp_path)
    ds = CocoDataset(tmp_path / "images", ann)
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a["image_id"] == 10 and b["image_id"] == 11
    assert a["boxes"].tolist() == [[2, 3, 12, 8], [30, 10, 60, 35.5]] and a["labels"].tolist() == [0, 1]
    assert b["boxes"].tolist() == [[1, 1, 9, 9], [5, 5, 25, 35]] and b["labels"].tolist() == [0, 2]
    assert a["image"].shape == (3, 40, 64)


def test_coco_resizes_only_when_asked_and_names_the_odd_image(tmp_path):
    ann = _coco(tmp_path, sizes=((40, 64), (80, 128)))
    with pytest.raises(InputError, match="im1.png is 80x128.*image_size"):
        CocoDataset(tmp_path / "images", ann)
    ds = CocoDataset(tmp_path / "images", ann, image_size=(40, 64))
    item = ds[1]
    assert item["image"].shape == (3, 40, 64)
    assert torch.allclose(item["boxes"], torch.tensor([[0.5, 0.5, 4.5, 4.5], [2.5, 2.5, 12.5, 17.5]]))
    assert ds[0]["boxes"].tolist() == [[2, 3, 12, 8], [30, 10, 60, 35.5]]  # right size: untouched


def test_coco_bad_input_is_named(tmp_path):
    ann = _coco(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [2, 3, -1, 5]
    ann.write_text(json.dumps(data))
    with pytest.raises(InputError, match="annotation 1.*width or height"):
        CocoDataset(tmp_path / "images", ann)
    data["annotations"][0]["bbox"] = [2, 3, 100, 5]
    ann.write_text(json.dumps(data))
    with pytest.raises(InputError, match="annotation 1.*outside"):
        CocoDataset(tmp_path / "images", ann)
    ann.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        CocoDataset(tmp_path / "images", ann)
    with pytest.raises(InputError, match="not found"):
        CocoDataset(tmp_path / "images", tmp_path / "missing.json")


# --------------------------------------------------------------------------- collate


def test_collate_stacks_images_and_keeps_box_lists():
    ds = SyntheticRoadside(3, split="val", seed=1)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["images"].shape == (3, 3, 256, 448) and batch["images"].dtype == torch.float32
    assert [b.shape[1] for b in batch["boxes"]] == [4, 4, 4]
    assert [len(b) for b in batch["boxes"]] == [len(lab) for lab in batch["labels"]]
    assert batch["labels"][0].dtype == torch.int64
    assert batch["image_ids"].dtype == torch.int64 and batch["image_ids"].tolist() == [0, 1, 2]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    assert next(iter(loader))["images"].shape == (2, 3, 256, 448)


def test_collate_refuses_mixed_sizes_and_empty_batches():
    a = {"image": torch.zeros(3, 32, 48), "boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "image_id": 1}
    b = {"image": torch.zeros(3, 32, 64), "boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "image_id": 2}
    with pytest.raises(InputError, match="image 2 has shape"):
        collate([a, b])
    with pytest.raises(InputError):
        collate([])


# --------------------------------------------------------------------------- load_dataset


def test_load_dataset_synthetic():
    ds = load_dataset("synthetic", split="train", num_images=4, image_size=(320, 576), seed=3)
    assert isinstance(ds, SyntheticRoadside) and len(ds) == 4 and ds.image_size == (320, 576)
    assert ds.split == "train" and ds.seed == 3
    with pytest.raises(ConfigError, match="class_map"):
        load_dataset("synthetic", class_map={"car": "car"})


def test_load_dataset_detects_coco_and_kitti_layouts(tmp_path, kitti_dir):
    coco_root = tmp_path / "coco"
    _coco(coco_root)
    ds = load_dataset(str(coco_root))
    assert isinstance(ds, CocoDataset) and len(ds) == 2
    assert isinstance(load_dataset(coco_root / "annotations.json"), CocoDataset)
    assert len(load_dataset(coco_root, num_images=1)) == 1

    other = tmp_path / "coco2" / "val"  # <split>/ subdirectory, any *.json name
    _coco(other, name="instances_val.json")
    kind, paths = detect_format(tmp_path / "coco2", split="val")
    assert kind == "coco" and paths["ann_file"].name == "instances_val.json"

    ds = load_dataset(kitti_dir)
    assert isinstance(ds, KittiDataset) and len(ds) == 2
    alt = tmp_path / "alt"  # images/ + labels/ naming
    alt.mkdir()
    (kitti_dir / "image_2").rename(alt / "images")
    (kitti_dir / "label_2").rename(alt / "labels")
    assert detect_format(alt)[0] == "kitti" and len(load_dataset(alt)) == 2


def test_load_dataset_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match="nowhere.*not found.*synthetic"):
        load_dataset(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty.*KITTI"):
        load_dataset(empty)
    kitti = tmp_path / "kitti_empty"
    (kitti / "image_2").mkdir(parents=True)
    (kitti / "label_2").mkdir()
    with pytest.raises(InputError, match="no KITTI label files"):
        load_dataset(kitti)
    coco = tmp_path / "coco_empty"
    (coco / "images").mkdir(parents=True)
    (coco / "annotations.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(InputError, match="no images"):
        load_dataset(coco)
    with pytest.raises(ConfigError, match="split"):
        load_dataset("synthetic", split="test")
