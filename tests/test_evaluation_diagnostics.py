"""Bias diagnostics and the ``diagnose`` command."""

from __future__ import annotations

import json

import pytest
import torch

from cass_deploy.cli import main
from cass_deploy.config import CassConfig, FieldConfig
from cass_deploy.evaluation.diagnostics import analyse, row_bands, toy_roadside_scene

GRID, IMG = (16, 28), (256, 448)


def test_row_bands_follow_field_split():
    bands = row_bands(GRID, IMG, FieldConfig(0.5, 0.75)).view(16, 28)
    # row centres (i + 0.5) * 16: rows 0..7 < 128 far; 8..11 mid; 12..15 >= 192 near
    assert bands[:8].eq(0).all() and bands[8:12].eq(1).all() and bands[12:].eq(2).all()


@pytest.mark.parametrize("norm", ["patch", "area", "seed_object", "object"])
def test_shares_sum_to_one(norm):
    boxes = [toy_roadside_scene(IMG)]
    bd, maps = analyse(torch.randn(1, 448), boxes, GRID, IMG, CassConfig(normalization=norm))
    for key in ("loss_share", "grad_share"):
        assert sum(v[key] for v in bd.by_band.values()) == pytest.approx(1.0)
        obj = sum(o[key] for o in bd.objects) + bd.background[key]
        assert obj == pytest.approx(1.0)
    assert maps["grad"].shape == (1, 448)


def test_object_normalisation_equalises_per_object_gradient_against_patch():
    """With uniform logits and no context ring the object mode gives every object the same
    gradient mass; the patch mean gives near-field trucks far more than far-field cars."""
    boxes = [toy_roadside_scene(IMG)]
    x = torch.zeros(1, 448)
    obj, _ = analyse(x, boxes, GRID, IMG, CassConfig(normalization="object", expansion_ratio=0.0))
    pat, _ = analyse(x, boxes, GRID, IMG, CassConfig(normalization="patch", expansion_ratio=0.0))
    per_obj = [o["grad_share"] for o in obj.objects if o["owned_patches"]]
    assert max(per_obj) == pytest.approx(min(per_obj), rel=1e-6)
    ratio = pat.by_field["near"]["grad_share_per_object"] / pat.by_field["far"]["grad_share_per_object"]
    assert ratio > 10


def test_diagnose_command_writes_heatmaps_and_json(tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", "--out", str(out), "--num-images", "1", "--normalizations", "patch,object:1"]) == 0
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["object_g1_img0.png", "patch_img0.png"]
    data = json.loads((out / "diagnostics.json").read_text())
    assert [b["normalization"] for b in data["breakdowns"]] == ["patch", "object"]
    assert "far band" in capsys.readouterr().out


def test_diagnose_bad_input(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["diagnose", "--out", str(out), "--normalizations", "mean"]) == 2
    assert "unknown normalisation 'mean'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["diagnose", "--out", str(out), "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["diagnose", "--out", str(out), "--keep-ratio", "0"]) == 2
    out.mkdir()
    assert main(["diagnose", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_decode_ceiling_counts_cells_and_peak_blocks_by_hand():
    """64x64 image, 8x8 head (stride 8). Far (y2 < 32): cars at cells (0,0), (0,0), (0,1) and a
    truck at (0,2); near: one truck. 3 distinct cells of 4 far objects -> 0.75; per class, the
    cars' cells (0,0),(0,0),(0,1) fit in one 2x2 block in the tiling with offset 0, the truck in
    another -> 2 blocks of 4 -> 0.5. An image without objects adds nothing."""
    from cass_deploy.evaluation.diagnostics import decode_ceiling

    boxes = [
        torch.tensor(
            [[2, 2, 6, 6], [3, 3, 7, 7], [10, 2, 14, 6], [18, 2, 22, 6], [0, 40, 64, 64]], dtype=torch.float32
        ),
        torch.zeros(0, 4),
    ]
    labels = [torch.tensor([0, 0, 0, 1, 1]), torch.zeros(0, dtype=torch.int64)]
    c = decode_ceiling(boxes, labels, (64, 64), (8, 8), method="peak")
    assert set(c) == {"far", "near"}
    assert c["far"] == {"objects": 4, "one_per_cell": 0.75, "one_peak_per_block": 0.5, "bound": 0.5}
    assert c["near"]["bound"] == 1.0
    # the NMS decode keeps neighbouring cells: only one box per cell remains a limit
    c = decode_ceiling(boxes, labels, (64, 64), (8, 8), method="nms")
    assert c["far"] == {"objects": 4, "one_per_cell": 0.75, "one_peak_per_block": 1.0, "bound": 0.75}
    from cass_deploy.errors import InputError

    with pytest.raises(InputError, match="one label per box"):
        decode_ceiling(boxes, [torch.tensor([0, 0]), labels[1]], (64, 64), (8, 8))
    with pytest.raises(InputError, match="labels are needed per image"):
        decode_ceiling(boxes, labels[:1], (64, 64), (8, 8))


@pytest.mark.parametrize("method", ["peak", "nms"])
def test_decode_ceiling_bounds_the_real_decode_with_an_oracle_heat_map(method):
    """The bound holds for the detector's own decode fed an oracle: a distinct high logit at each
    vehicle's centre cell in its class channel and the exact box there (synthetic roadside scenes,
    crowded far field). The oracle's recall per field never exceeds the bound, and the far-field
    bound is well below 1 (the crowding the bound is about)."""
    from cass_deploy.data.synthetic import SyntheticRoadside
    from cass_deploy.evaluation.diagnostics import decode_ceiling, decode_limits, oracle_head_outputs
    from cass_deploy.evaluation.metrics import box_iou, field_of, greedy_match
    from cass_deploy.model.head import decode

    H, W, s = 256, 448, 8
    hh, wh = H // s, W // s
    ds = SyntheticRoadside(6, split="val", seed=3, image_size=(H, W))
    gts = [ds.get_numpy(i) for i in range(len(ds))]
    boxes = [torch.as_tensor(g[1], dtype=torch.float32).reshape(-1, 4) for g in gts]
    labels = [torch.as_tensor(g[2], dtype=torch.int64).reshape(-1) for g in gts]
    bound = decode_ceiling(boxes, labels, (H, W), (hh, wh), method=method)
    lim = decode_limits(boxes, labels, (H, W), (hh, wh), num_classes=3, method=method)
    for name in ("far", "mid", "near"):
        assert lim[name]["oracle_recall"] <= bound[name]["bound"] + 1e-9, (name, lim[name])
        assert lim[name]["objects"] == bound[name]["objects"]
    # the oracle's far-field recall by hand: decode each image, count matched far vehicles
    found = total = 0
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        out = oracle_head_outputs([b], [lab], (H, W), (hh, wh), 3, seed=i)
        det = decode(out, (H, W), 0.5, 1000, method=method, candidates=1024)[0]
        far = field_of(b, H) == 0
        iou = box_iou(det["boxes"], b[far])
        same = det["labels"][:, None] == lab[far][None, :]
        found += int((greedy_match(iou, 0.5, allowed=same) >= 0).sum())
        total += int(far.sum())
    assert lim["far"]["oracle_found"] == found and lim["far"]["objects"] == total
    assert bound["far"]["bound"] < (0.8 if method == "peak" else 1.0) and bound["near"]["bound"] == 1.0
    assert lim["near"]["oracle_recall"] == 1.0  # near-field vehicles do not crowd: the oracle finds every one
