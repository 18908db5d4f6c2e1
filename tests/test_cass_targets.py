"""Soft target masks and ownership (SPEC §2, §4): golden values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cass_deploy.cass.loops import target_mask_loop
from cass_deploy.cass.targets import object_patches, patch_owner, soft_target_mask
from cass_deploy.errors import InputError

from conftest import random_boxes

# 64x64 image, 4x4 grid: patch centres at 8, 24, 40, 56 on both axes.
IMG, GRID = (64, 64), (4, 4)


def brute_force_mask(box, grid, image_size, r=0.5, peak=0.5, ensure=True):
    """Independent scalar implementation of SPEC §2 for one box, loop over patches."""
    Hp, Wp = grid
    H, W = image_size
    x1, y1, x2, y2 = box
    ew, eh = (x2 - x1) * r, (y2 - y1) * r
    ed = math.hypot(ew, eh)
    out = [0.0] * (Hp * Wp)
    any_core = False
    for i in range(Hp):
        for j in range(Wp):
            cx, cy = (j + 0.5) * W / Wp, (i + 0.5) * H / Hp
            if x1 <= cx <= x2 and y1 <= cy <= y2:
                out[i * Wp + j] = 1.0
                any_core = True
            elif x1 - ew <= cx <= x2 + ew and y1 - eh <= cy <= y2 + eh:
                dx = max(x1 - cx, 0, cx - x2)
                dy = max(y1 - cy, 0, cy - y2)
                out[i * Wp + j] = peak * max(0.0, 1 - math.hypot(dx, dy) / ed)
    if ensure and not any_core:
        i = min(int((y1 + y2) / 2 * Hp / H), Hp - 1)
        j = min(int((x1 + x2) / 2 * Wp / W), Wp - 1)
        out[i * Wp + j] = 1.0
    return out


def test_core_and_linear_ring_golden():
    # box covers centres 24 and 40 on both axes -> 2x2 core; ew = eh = 16 -> ring reaches 0..64
    t = soft_target_mask([torch.tensor([[16.0, 16.0, 48.0, 48.0]])], GRID, IMG)[0].view(4, 4)
    ed = math.hypot(16, 16)
    corner = 0.5 * (1 - math.hypot(8, 8) / ed)  # centre (8, 8): 8 px from the box on both axes
    edge = 0.5 * (1 - 8 / ed)  # centre (24, 8): 8 px above the box
    expected = torch.tensor(
        [[corner, edge, edge, corner], [edge, 1.0, 1.0, edge], [edge, 1.0, 1.0, edge], [corner, edge, edge, corner]]
    )
    torch.testing.assert_close(t, expected)


def test_bounds_are_inclusive():
    # x1 and y1 fall exactly on the centre 24 -> that patch is core
    t = soft_target_mask([torch.tensor([[24.0, 24.0, 30.0, 30.0]])], GRID, IMG, expansion_ratio=0.0)
    assert t[0, 1 * 4 + 1] == 1.0
    assert t[0].sum() == 1.0


def test_expansion_zero_gives_binary_core():
    t = soft_target_mask([torch.tensor([[16.0, 16.0, 48.0, 48.0]])], GRID, IMG, expansion_ratio=0.0)
    assert set(t.unique().tolist()) == {0.0, 1.0}
    assert t.sum() == 4


def test_ensure_center_patch_for_tiny_box():
    tiny = torch.tensor([[42.0, 1.0, 46.0, 5.0]])  # ring [40,48]x[-1,7] holds no centre; centre (44, 3) -> patch 2
    on = soft_target_mask([tiny], GRID, IMG)[0]
    off = soft_target_mask([tiny], GRID, IMG, ensure_center_patch=False)[0]
    assert on[2] == 1.0 and on.sum() == 1.0
    assert off.sum() == 0.0  # the seed's behaviour: a tiny object gets no supervision


def test_gaussian_decay_value():
    t = soft_target_mask([torch.tensor([[16.0, 16.0, 48.0, 48.0]])], GRID, IMG, decay="gaussian")[0]
    ed = math.hypot(16, 16)
    d = 8.0
    assert t[1].item() == pytest.approx(0.5 * math.exp(-d * d / (2 * (ed / 2) ** 2)), rel=1e-6)


def test_max_merge_and_batch_separation():
    a = torch.tensor([[16.0, 16.0, 48.0, 48.0], [0.0, 0.0, 20.0, 20.0]])
    t = soft_target_mask([a, torch.zeros(0, 4)], GRID, IMG)
    expected = torch.tensor(
        [
            max(u, v)
            for u, v in zip(brute_force_mask(a[0].tolist(), GRID, IMG), brute_force_mask(a[1].tolist(), GRID, IMG))
        ]
    )
    torch.testing.assert_close(t[0], expected)
    assert t[1].abs().sum() == 0


def test_vectorised_equals_brute_force_on_random_boxes():
    g = torch.Generator().manual_seed(3)
    grid, img = (6, 10), (96, 160)
    boxes = random_boxes(g, (7, 0, 12), (150.0, 90.0), 60, (160.0, 96.0))
    t = soft_target_mask(boxes, grid, img)
    for b, bx in enumerate(boxes):
        exp = torch.zeros(60)
        for box in bx:
            exp = torch.maximum(exp, torch.tensor(brute_force_mask(box.tolist(), grid, img)))
        torch.testing.assert_close(t[b], exp, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(t, target_mask_loop(boxes, grid, img), atol=1e-6, rtol=1e-5)


def test_owner_small_inside_large_keeps_its_patches():
    big = [0.0, 0.0, 64.0, 64.0]
    small = [20.0, 20.0, 28.0, 28.0]  # contains centre (24, 24) -> patch 5
    owner = patch_owner([torch.tensor([big, small])], GRID, IMG, expansion_ratio=0.0)[0]
    assert owner[5] == 1
    assert (owner[torch.arange(16) != 5] == 0).all()


def test_owner_tie_breaks_by_area_then_index():
    a = [16.0, 16.0, 48.0, 48.0]  # area 1024
    b = [20.0, 20.0, 44.0, 44.0]  # area 576, same 2x2 core
    c = [20.0, 20.0, 44.0, 44.0]  # identical to b, higher index
    owner = patch_owner([torch.tensor([a, b, c])], GRID, IMG, expansion_ratio=0.0)[0]
    assert owner[[5, 6, 9, 10]].tolist() == [1, 1, 1, 1]
    assert (owner[[0, 1, 2, 3]] == -1).all()


def test_owner_indices_are_flat_over_the_batch():
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 30.0]]), torch.tensor([[34.0, 34.0, 64.0, 64.0]])]
    owner = patch_owner(boxes, GRID, IMG, expansion_ratio=0.0)
    assert owner[0, 0] == 0 and owner[1, 15] == 1


def test_object_patches_membership():
    boxes = [torch.tensor([[16.0, 16.0, 48.0, 48.0], [41.0, 2.0, 46.0, 6.0]])]
    op = object_patches(boxes, GRID, IMG)
    assert op.num_patches.tolist() == [4, 1]
    assert sorted(op.patch[op.box == 0].tolist()) == [5, 6, 9, 10]
    assert op.patch[op.box == 1].tolist() == [2]


@pytest.mark.parametrize(
    "box, fragment",
    [
        ([float("nan"), 0, 10, 10], "finite"),
        ([0, 0, float("inf"), 10], "finite"),
        ([10, 0, 10, 10], "x2 > x1"),
        ([0, 12, 10, 5], "y2 > y1"),
        ([70, 70, 90, 90], "outside"),
    ],
)
def test_invalid_boxes_are_named(box, fragment):
    good = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(InputError, match=fragment) as info:
        soft_target_mask([good, torch.tensor([[1.0, 1.0, 5.0, 5.0], box])], GRID, IMG)
    assert "image 1, box 1" in str(info.value)


def test_partially_outside_box_is_clipped():
    t = soft_target_mask([torch.tensor([[-20.0, -20.0, 30.0, 30.0]])], GRID, IMG, expansion_ratio=0.0)
    u = soft_target_mask([torch.tensor([[0.0, 0.0, 30.0, 30.0]])], GRID, IMG, expansion_ratio=0.0)
    torch.testing.assert_close(t, u)


def test_wrong_box_shape_and_type():
    with pytest.raises(InputError, match=r"shape \[M, 4\]"):
        soft_target_mask([torch.zeros(3, 5)], GRID, IMG)
    with pytest.raises(InputError, match="list"):
        soft_target_mask("boxes", GRID, IMG)
    with pytest.raises(InputError, match="positive"):
        soft_target_mask([torch.zeros(0, 4)], (0, 4), IMG)


def test_other_box_dtypes_give_the_same_result():
    f32 = soft_target_mask([torch.tensor([[16.0, 16.0, 48.0, 48.0]])], GRID, IMG)
    i64 = soft_target_mask([torch.tensor([[16, 16, 48, 48]])], GRID, IMG)
    f16 = soft_target_mask([torch.tensor([[16.0, 16.0, 48.0, 48.0]], dtype=torch.float16)], GRID, IMG)
    torch.testing.assert_close(f32, i64)
    torch.testing.assert_close(f32, f16)


def test_thousand_boxes_in_one_image():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1000, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 1 + torch.rand(1000, 2, generator=g) * 3], 1).clamp(max=64)
    t = soft_target_mask([boxes], GRID, IMG)
    assert torch.isfinite(t).all() and t.max() == 1.0
    torch.testing.assert_close(t, target_mask_loop([boxes], GRID, IMG))
