"""Synthetic roadside scenes: determinism, the geometry contract, the dataset and the COCO writer."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cass_deploy.config import from_dict
from cass_deploy.data.coco import CocoDataset
from cass_deploy.data.synthetic import (
    SceneConfig,
    SyntheticRoadside,
    field_of_boxes,
    generate_scene,
    split_seed,
    write_synthetic_dataset,
)
from cass_deploy.errors import ConfigError, InputError

H, W = 256, 448
N_SCENES = 20


@pytest.fixture(scope="module")
def scenes():
    """20 default scenes of one seed: [(image, boxes, labels)]."""
    return [generate_scene(11, i) for i in range(N_SCENES)]


def _fields(boxes: np.ndarray, height: int = H) -> np.ndarray:
    # independent of field_of_boxes: bottom edge against 0.5 H and 0.75 H
    bottom = boxes[:, 3]
    return np.where(bottom < 0.5 * height, 0, np.where(bottom <= 0.75 * height, 1, 2))


# --------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_scenes_whatever_the_call_order():
    a = generate_scene(3, 7)
    generate_scene(3, 8)
    generate_scene(99, 0)
    b = generate_scene(3, 7)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_different_index_or_seed_gives_different_scenes():
    img, boxes, _ = generate_scene(3, 7)
    img2, boxes2, _ = generate_scene(3, 8)
    img3, _, _ = generate_scene(4, 7)
    assert not np.array_equal(img, img2) and not np.array_equal(img, img3)
    assert boxes.shape != boxes2.shape or not np.array_equal(boxes, boxes2)


# --------------------------------------------------------------------------- geometry contract


def test_outputs_have_documented_types_and_valid_boxes(scenes):
    for img, boxes, labels in scenes:
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert labels.dtype == np.int64 and labels.shape == (boxes.shape[0],)
        assert set(labels.tolist()) <= {0, 1, 2}  # pedestrians are off by default
        assert np.isfinite(boxes).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
        assert (boxes[:, 2] - boxes[:, 0] >= 2).all() and (boxes[:, 3] - boxes[:, 1] >= 2).all()
        # every vehicle stands on the ground, below the horizon (>= 0.25 H)
        assert (boxes[:, 3] > 0.25 * H).all()
        assert img.std() > 10  # not a blank frame


def test_field_counts_are_within_the_contract(scenes):
    counts = np.array([np.bincount(_fields(b), minlength=3) for _, b, _ in scenes])
    far, mid, near = counts.T
    assert (near >= 1).all() and (near <= 3).all()
    assert (mid >= 2).all() and (mid <= 8).all()
    # occlusion by big near-field vehicles may cost a couple of far ones in a rare scene
    assert (far >= 10).all() and (far <= 40).all()
    assert far.mean() >= 12
    assert np.array_equal(counts, np.array([np.bincount(field_of_boxes(b, H), minlength=3) for _, b, _ in scenes]))


def test_near_field_is_larger_and_lower_than_far_field(scenes):
    boxes = np.concatenate([b for _, b, _ in scenes])
    labels = np.concatenate([lab for _, _, lab in scenes])
    f = _fields(boxes)
    w = boxes[:, 2] - boxes[:, 0]
    area = w * (boxes[:, 3] - boxes[:, 1])
    assert area[f == 2].mean() > 20 * area[f == 0].mean()
    assert boxes[f == 2, 3].mean() > boxes[f == 1, 3].mean() > boxes[f == 0, 3].mean()
    # far field: mostly smaller than one 16-px patch; near field: large vehicles
    assert np.median(w[f == 0]) < 16 and (w[f == 0] < 16).mean() > 0.6
    assert np.median(w[f == 2]) > 60 and w[f == 2].max() <= 260
    # trucks and buses dominate the near field, cars the far field
    assert (labels[f == 2] > 0).mean() > 0.5 and (labels[f == 0] == 0).mean() > 0.6


def test_far_field_is_denser_on_the_left(scenes):
    left = right = 0
    for _, b, _ in scenes:
        far = b[_fields(b) == 0]
        cx = 0.5 * (far[:, 0] + far[:, 2])
        left += int((cx < W / 2).sum())
        right += int((cx >= W / 2).sum())
    assert left > right


def test_left_right_bias_is_configurable():
    mirrored = SceneConfig(
        vanishing_x_range=(0.6, 0.7), far_left_weight=0.3, cross_road_prob=0.0, camera_lateral_range=(0.6, 0.8)
    )
    left = right = 0
    for i in range(8):
        _, b, _ = generate_scene(2, i, cfg=mirrored)
        cx = 0.5 * (b[_fields(b) == 0, 0] + b[_fields(b) == 0, 2])
        left += int((cx < W / 2).sum())
        right += int((cx >= W / 2).sum())
    assert right > left


def test_other_multiples_of_16_work():
    img, boxes, _ = generate_scene(0, 1, image_size=(320, 576))
    assert img.shape == (320, 576, 3)
    assert (boxes[:, 2] <= 576).all() and (boxes[:, 3] <= 320).all()
    counts = np.bincount(_fields(boxes, 320), minlength=3)
    assert counts[0] >= 10 and counts[2] >= 1


@pytest.mark.parametrize("size", [(250, 448), (256, 440), (32, 448), (256,)])
def test_bad_image_size_is_refused(size):
    with pytest.raises(ConfigError, match="image_size"):
        generate_scene(0, 0, image_size=size)


def test_bad_seed_is_refused():
    with pytest.raises(InputError, match="seed"):
        generate_scene(-1, 0)


def test_scene_config_validates_and_loads_from_a_mapping():
    with pytest.raises(ConfigError, match="far_bottom"):
        SceneConfig(far_bottom=0.2)  # above the horizon
    with pytest.raises(ConfigError, match="far_count_range"):
        SceneConfig(far_count_range=(10, 5))
    with pytest.raises(ConfigError, match="near_class_probs"):
        SceneConfig(near_class_probs=(0.0, 0.0, 0.0))
    cfg = from_dict(SceneConfig, {"far_count_range": [5, 6], "pedestrians": True})
    assert cfg.far_count_range == (5, 6) and cfg.classes == ("car", "truck", "bus", "pedestrian")
    _, boxes, labels = generate_scene(0, 2, cfg=cfg)
    far_vehicles = (_fields(boxes) == 0) & (labels < 3)
    assert 1 <= far_vehicles.sum() <= 6
    assert (labels == 3).any()
    peds = boxes[labels == 3]
    assert ((peds[:, 3] - peds[:, 1]) > (peds[:, 2] - peds[:, 0])).all()  # people are tall and thin


# --------------------------------------------------------------------------- dataset


def test_dataset_items_match_generate_scene():
    ds = SyntheticRoadside(3, split="train", seed=5)
    assert len(ds) == 3 and ds.classes == ("car", "truck", "bus")
    item = ds[1]
    assert set(item) == {"image", "boxes", "labels", "image_id"}
    img, boxes, labels = generate_scene(split_seed(5, "train"), 1)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    expected = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    assert torch.allclose(item["image"], expected, atol=1e-6)
    assert item["boxes"].dtype == torch.float32 and torch.equal(item["boxes"], torch.from_numpy(boxes))
    assert item["labels"].dtype == torch.int64 and torch.equal(item["labels"], torch.from_numpy(labels))
    assert item["image_id"] == 1
    assert torch.equal(ds[-1]["image"], ds[2]["image"])
    with pytest.raises(IndexError):
        ds[3]


def test_train_and_val_use_disjoint_seeds():
    assert split_seed(0, "train") != split_seed(0, "val")
    assert len({split_seed(s, p) for s in range(50) for p in ("train", "val")}) == 100
    train, val = SyntheticRoadside(2, "train"), SyntheticRoadside(2, "val")
    assert not torch.equal(train[0]["image"], val[0]["image"])
    with pytest.raises(ConfigError, match="split"):
        SyntheticRoadside(2, "test")
    with pytest.raises(InputError, match="num_images"):
        SyntheticRoadside(0)


def test_cache_returns_the_same_item():
    ds = SyntheticRoadside(2, cache=True)
    a, b = ds[0], ds[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])


def test_cache_is_shared_by_datasets_of_the_same_scenes_only(monkeypatch):
    import cass_deploy.data.synthetic as syn

    calls = []
    real = syn.generate_scene
    monkeypatch.setattr(syn, "generate_scene", lambda *a, **k: calls.append(a[:2]) or real(*a, **k))
    monkeypatch.setattr(syn, "_SCENE_CACHES", {})
    first = SyntheticRoadside(3, seed=11, image_size=(64, 96), cache=True)
    first[0], first[1]
    again = SyntheticRoadside(5, seed=11, image_size=(64, 96), cache=True)  # same scenes, more of them
    assert torch.equal(again[1]["image"], first[1]["image"]) and len(calls) == 2  # drawn once
    again[4]
    SyntheticRoadside(3, seed=12, image_size=(64, 96), cache=True)[0]  # other seed: its own scenes
    SyntheticRoadside(3, split="val", seed=11, image_size=(64, 96), cache=True)[0]  # other split too
    SyntheticRoadside(3, seed=11, image_size=(64, 96))[0]  # no cache: drawn again
    assert len(calls) == 6


def test_prefill_in_two_processes_draws_the_same_scenes(monkeypatch):
    """prefill(2) draws the missing scenes in forked workers: byte-identical to drawing them one
    by one, only the missing ones, and nothing when the cache is off or one worker is asked for."""
    import cass_deploy.data.synthetic as syn

    monkeypatch.setattr(syn, "_SCENE_CACHES", {})
    ds = SyntheticRoadside(10, seed=5, image_size=(64, 96), cache=True)
    ds[3]  # already cached: not drawn again
    assert ds.prefill(2) == 9
    assert sorted(ds._cache) == list(range(10))
    for i in (0, 3, 9):
        img, boxes, labels = generate_scene(ds.scene_seed, i, (64, 96))
        c = ds._cache[i]
        assert np.array_equal(c[0], img) and np.array_equal(c[1], boxes) and np.array_equal(c[2], labels)
    assert ds.prefill(2) == 0  # complete
    assert SyntheticRoadside(10, seed=6, image_size=(64, 96)).prefill(2) == 0  # no cache
    assert SyntheticRoadside(10, seed=7, image_size=(64, 96), cache=True).prefill(1) == 0


# --------------------------------------------------------------------------- writer


def test_write_synthetic_dataset_round_trips_through_coco(tmp_path):
    out = tmp_path / "syn"
    write_synthetic_dataset(out, 3, seed=4, split="val")
    data = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["car", "truck", "bus"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    ann = data["annotations"][0]
    assert ann["iscrowd"] == 0 and len(ann["bbox"]) == 4
    assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])

    ref = SyntheticRoadside(3, split="val", seed=4)
    coco = CocoDataset(out / "images", out / "annotations.json")
    assert len(coco) == 3
    for i in range(3):
        a, b = ref[i], coco[i]
        assert b["image_id"] == i
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["image"], b["image"])  # PNG is lossless
    n_ann = sum(len(ref[i]["labels"]) for i in range(3))
    assert len(data["annotations"]) == n_ann


def test_write_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "syn"
    write_synthetic_dataset(out, 1)
    before = (out / "annotations.json").read_text()
    with pytest.raises(InputError, match="force"):
        write_synthetic_dataset(out, 2)
    assert (out / "annotations.json").read_text() == before
    write_synthetic_dataset(out, 2, force=True)
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_numpy_paths_work_without_torch(tmp_path):
    """generate_scene, get_numpy and the writer import no torch (ONNX Runtime / TensorRT hosts)."""

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from cass_deploy.data.synthetic import SyntheticRoadside, write_synthetic_dataset\n"
        "from cass_deploy.data.factory import load_dataset\n"
        "img, boxes, labels, i = SyntheticRoadside(2, 'val').get_numpy(1)\n"
        "assert img.shape == (256, 448, 3) and len(boxes) == len(labels) and i == 1\n"
        f"write_synthetic_dataset({str(tmp_path / 'syn')!r}, 1)\n"
        f"ds = load_dataset({str(tmp_path / 'syn')!r})\n"
        "assert ds.get_numpy(0)[0].shape == (256, 448, 3)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_empty_scene_config_gives_empty_arrays():
    cfg = SceneConfig(far_count_range=(0, 0), mid_count_range=(0, 0), near_count_range=(0, 0))
    img, boxes, labels = generate_scene(0, 0, cfg=cfg)
    assert img.shape == (H, W, 3)
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32
    assert labels.shape == (0,) and labels.dtype == np.int64
