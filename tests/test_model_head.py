"""Detection head: CenterNet targets, loss, decoding, and that the detector actually learns."""

from __future__ import annotations

import math

import pytest
import torch

from cass_deploy.errors import InputError
from cass_deploy.model.detector import PrunedDetector
from cass_deploy.model.head import (
    INSIDE_BOX_WEIGHT,
    MIN_TARGET_DISTANCE,
    decode,
    detection_loss,
    detection_targets,
    gaussian_radius,
    ltrb_giou,
)

from conftest import tiny_model_config

IMAGE = (64, 96)
OUT = (8, 12)  # stride 8


def test_targets_peak_and_box_on_a_hand_made_box():
    # centre (32, 21) → cell row 21 // 8 = 2, column 32 // 8 = 4; that cell's centre is (36, 20)
    t = detection_targets([torch.tensor([[20.0, 12.0, 44.0, 30.0]])], [torch.tensor([1])], IMAGE, OUT, 3)
    heat = t["heatmap"]
    assert heat.shape == (1, 3, 8, 12)
    assert float(heat[0, 1, 2, 4]) == 1.0
    assert int(heat[0, 1].argmax()) == 2 * 12 + 4 and int((heat[0, 1] == 1.0).sum()) == 1
    assert float(heat[0, 0].abs().sum()) == 0.0 and float(heat[0, 2].abs().sum()) == 0.0
    assert t["box"][0, :, 2, 4].tolist() == [16.0, 8.0, 8.0, 10.0]
    assert float(t["box_weight"][0, 2, 4]) == 1.0
    assert int(t["num_objects"]) == 1
    # 18 x 24 px is 2.25 x 3 cells: CenterNet radius < 1, so the peak is the only non-zero cell
    assert float(gaussian_radius(torch.tensor(18 / 8), torch.tensor(24 / 8))) < 1
    assert int((heat > 0).sum()) == 1


def test_targets_gaussian_decays_and_is_cut_at_the_radius():
    box = torch.tensor([[8.0, 8.0, 88.0, 56.0]])  # 10 x 6 cells, centre (48, 32) → cell (4, 6)
    r = int(gaussian_radius(torch.tensor(6.0), torch.tensor(10.0)).floor())
    assert r >= 1
    heat = detection_targets([box], [torch.tensor([0])], IMAGE, OUT, 3)["heatmap"][0, 0]
    sigma = (2 * r + 1) / 6
    assert float(heat[4, 6]) == 1.0
    assert float(heat[4, 6 + 1]) == pytest.approx(math.exp(-1 / (2 * sigma**2)))
    assert float(heat[4 - 1, 6 - 1]) == pytest.approx(math.exp(-2 / (2 * sigma**2)))
    assert float(heat[4, 6 + r + 1]) == 0.0 and float(heat[4 + r + 1, 6]) == 0.0


def test_targets_for_tiny_box_and_max_merge():
    boxes = [
        torch.tensor(
            [
                [1.0, 1.0, 4.0, 3.0],  # smaller than a cell, centre in cell (0, 0)
                [40.0, 30.0, 56.0, 42.0],  # two overlapping same-class boxes
                [44.0, 30.0, 60.0, 42.0],
            ]
        ),
        torch.zeros(0, 4),
    ]
    labels = [torch.tensor([0, 2, 2]), torch.zeros(0, dtype=torch.long)]
    t = detection_targets(boxes, labels, IMAGE, OUT, 3)
    assert float(t["heatmap"][0, 0, 0, 0]) == 1.0
    # the tiny box's centre cell regresses to it, distances floored at MIN_TARGET_DISTANCE px
    assert float(t["box_weight"][0, 0, 0]) == 1.0
    assert t["box"][0, :, 0, 0].tolist() == [3.0, 3.0, MIN_TARGET_DISTANCE, MIN_TARGET_DISTANCE]
    # both class-2 boxes are centred in cell (4, 6): one merged peak; equal Gaussians and equal
    # areas → the cell regresses to the first box (cell centre (52, 36))
    assert torch.nonzero(t["heatmap"][0, 2] == 1.0).tolist() == [[4, 6]]
    assert t["box"][0, :, 4, 6].tolist() == [12.0, 6.0, 4.0, 6.0]
    assert float(t["heatmap"][1].abs().sum()) == 0.0 and float(t["box_weight"][1].sum()) == 0.0
    assert int(t["num_objects"]) == 3


def test_targets_merge_by_max_per_class():
    a, b = [8.0, 8.0, 88.0, 56.0], [24.0, 16.0, 96.0, 64.0]  # overlapping windows
    one = [detection_targets([torch.tensor([bx])], [torch.tensor([1])], IMAGE, OUT, 3)["heatmap"] for bx in (a, b)]
    both = detection_targets([torch.tensor([a, b])], [torch.tensor([1, 1])], IMAGE, OUT, 3)["heatmap"]
    assert float((one[0] * one[1]).sum()) > 0  # they really overlap
    torch.testing.assert_close(both, torch.maximum(one[0], one[1]))
    split = detection_targets([torch.tensor([a, b])], [torch.tensor([1, 2])], IMAGE, OUT, 3)["heatmap"]
    torch.testing.assert_close(split[0, 1], one[0][0, 1])
    torch.testing.assert_close(split[0, 2], one[1][0, 1])


def test_targets_peaks_of_adjacent_far_cars_are_separate():
    # two 8-px cars inside one 16-px patch get separate stride-8 peaks
    boxes = [torch.tensor([[16.0, 16.0, 23.0, 22.0], [24.0, 16.0, 31.0, 22.0]])]
    t = detection_targets(boxes, [torch.tensor([0, 0])], IMAGE, OUT, 3)
    assert sorted(torch.nonzero(t["heatmap"][0, 0] == 1.0).tolist()) == [[2, 2], [2, 3]]


@pytest.mark.parametrize(
    "boxes, labels, match",
    [
        ([torch.tensor([[10.0, 10.0, 5.0, 20.0]])], [torch.tensor([0])], "image 0 box 0"),
        ([torch.tensor([[10.0, 10.0, 20.0, float("nan")]])], [torch.tensor([0])], "image 0 box 0"),
        (
            [torch.zeros(0, 4), torch.tensor([[1.0, 1.0, 9.0, 9.0], [1, 1, 2, 2]])],
            [torch.zeros(0), torch.tensor([0, 3])],
            "image 1 box 1: label 3",
        ),
        ([torch.tensor([1.0, 1.0, 9.0, 9.0])], [torch.tensor([0])], "image 0"),
        ([torch.tensor([[1.0, 1.0, 9.0, 9.0]])], [torch.tensor([0]), torch.tensor([0])], "labels for 2"),
    ],
)
def test_targets_reject_bad_boxes(boxes, labels, match):
    with pytest.raises(InputError, match=match):
        detection_targets(boxes, labels, IMAGE, OUT, 3)


def test_ltrb_giou_golden():
    same = torch.tensor([2.0, 3.0, 4.0, 5.0])
    assert float(ltrb_giou(same, same)) == pytest.approx(1.0)
    # nested squares about the same point: inter 4, union 16, enclosure 16 → IoU = GIoU = 0.25
    assert float(ltrb_giou(torch.tensor([1.0, 1, 1, 1]), torch.tensor([2.0, 2, 2, 2]))) == pytest.approx(0.25)
    # shifted: pred spans x 0..2, target x 1..4 (heights 2): inter 2, union 8, enclosure 8
    assert float(ltrb_giou(torch.tensor([1.0, 1, 1, 1]), torch.tensor([0.0, 1, 3, 1]))) == pytest.approx(0.25)


def _outputs_with_peak(cls: int, cell: tuple[int, int], ltrb: list[float], batch: int = 2):
    heat = torch.full((batch, 3, *OUT), -10.0)
    heat[0, cls, cell[0], cell[1]] = 5.0
    box = torch.ones(batch, 4, *OUT)
    box[0, :, cell[0], cell[1]] = torch.tensor(ltrb)
    return {"heatmap": heat, "box": box}


def test_decode_recovers_a_box():
    dets = decode(_outputs_with_peak(1, (2, 4), [16.0, 8.0, 8.0, 10.0]), IMAGE, score_thresh=0.05)
    assert len(dets) == 2
    assert dets[0]["boxes"].tolist() == [[20.0, 12.0, 44.0, 30.0]]
    assert dets[0]["labels"].tolist() == [1] and dets[0]["labels"].dtype == torch.int64
    assert float(dets[0]["scores"][0]) == pytest.approx(1 / (1 + math.exp(-5.0)))
    assert dets[1]["boxes"].shape == (0, 4)


def test_decode_suppresses_non_peaks_and_clips():
    out = _outputs_with_peak(0, (0, 0), [30.0, 30.0, 8.0, 8.0], batch=1)
    out["heatmap"][0, 0, 0, 1] = 4.0  # neighbour of the peak: not a local maximum
    out["heatmap"][0, 2, 5, 9] = 3.0  # another class far away: its own peak
    dets = decode(out, IMAGE, score_thresh=0.5, max_dets=10, method="peak")[0]
    assert dets["labels"].tolist() == [0, 2]
    assert dets["boxes"][0].tolist() == [0.0, 0.0, 12.0, 12.0]  # clipped at the image edge
    assert bool((dets["scores"][:-1] >= dets["scores"][1:]).all())


def test_nms_decode_keeps_neighbours_with_their_own_boxes():
    """Fast NMS: a neighbouring cell whose box overlaps the best one (IoU > 0.5, same class) is
    dropped; a neighbour with a disjoint box (a second far-field car) survives, which the 3×3
    peak decode cannot do; another class at the same place survives (class-aware)."""
    stride = IMAGE[0] / OUT[0]
    out = _outputs_with_peak(0, (3, 3), [6.0, 6.0, 6.0, 6.0], batch=1)  # box 12 px around cell (3, 3)
    out["heatmap"][0, 0, 3, 4] = 4.0  # right neighbour, same box shifted by one cell: IoU 0.33 -> kept?
    out["box"][0, :, 3, 4] = torch.tensor([6.0 + stride, 6.0, 6.0 - stride, 6.0])  # -> identical box: IoU 1
    out["heatmap"][0, 0, 4, 3] = 3.0  # lower neighbour with a small box of its own: IoU 0
    out["box"][0, :, 4, 3] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    out["heatmap"][0, 1, 3, 3] = 2.0  # class 1 at the same cell and box: another class, kept
    out["box"][0, :, 3, 3] = torch.tensor([6.0, 6.0, 6.0, 6.0])
    dets = decode(out, IMAGE, score_thresh=0.5, max_dets=10, method="nms")[0]
    centre = (3 + 0.5) * stride
    assert dets["labels"].tolist() == [0, 0, 1]
    assert dets["boxes"][0].tolist() == [centre - 6, centre - 6, centre + 6, centre + 6]
    lower = (4 + 0.5) * stride
    assert dets["boxes"][1].tolist() == [centre - 1, lower - 1, centre + 1, lower + 1]
    peak = decode(out, IMAGE, score_thresh=0.5, max_dets=10, method="peak")[0]
    assert peak["labels"].tolist() == [0, 1]  # the peak decode loses the lower neighbour


def test_fast_nms_matches_greedy_nms_without_chains():
    """On candidates where no suppressed box would itself suppress another, Fast NMS equals
    torchvision-style greedy NMS (computed here by hand, box by box)."""
    from cass_deploy.model.head import fast_nms_keep

    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5], [40, 0, 50, 9]]])
    labels = torch.tensor([[0, 0, 0, 1, 0]])
    keep = fast_nms_keep(boxes.float(), labels, 0.5)
    # greedy: box 0 kept; box 1 IoU(0,1) = 81/119 = 0.68 > 0.5 -> dropped; box 2 disjoint -> kept;
    # box 3 other class -> kept; box 4 disjoint -> kept
    assert keep.tolist() == [[True, False, True, True, True]]


def test_decode_of_targets_round_trips_boxes():
    boxes = torch.tensor([[20.0, 12.0, 44.0, 30.0], [60.0, 33.0, 90.0, 60.0]])
    t = detection_targets([boxes], [torch.tensor([0, 2])], IMAGE, OUT, 3)
    logits = torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4))
    dets = decode({"heatmap": logits, "box": t["box"]}, IMAGE, score_thresh=0.9)[0]
    order = dets["labels"].argsort()
    torch.testing.assert_close(dets["boxes"][order], boxes)


def test_loss_finite_without_boxes_and_lower_for_the_truth():
    raw = {
        "heatmap": torch.randn(2, 3, *OUT, requires_grad=True),
        "box": torch.rand(2, 4, *OUT, requires_grad=True) * 10 + 1,
    }
    loss = detection_loss(raw, [torch.zeros(0, 4), torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)] * 2, IMAGE)
    assert all(math.isfinite(float(v.detach())) for v in loss.values()) and float(loss["box"]) == 0.0
    loss["total"].backward()
    assert torch.isfinite(raw["heatmap"].grad).all() and float(raw["heatmap"].grad.abs().sum()) > 0

    boxes, labels = [torch.tensor([[20.0, 12.0, 44.0, 30.0]])] * 2, [torch.tensor([1])] * 2
    t = detection_targets(boxes, labels, IMAGE, OUT, 3)
    truth = {"heatmap": torch.logit(t["heatmap"].clamp(1e-3, 1 - 1e-3)), "box": t["box"]}
    good = detection_loss(truth, boxes, labels, IMAGE)
    bad = detection_loss({k: v.detach() for k, v in raw.items()}, boxes, labels, IMAGE)
    assert float(good["box"]) == pytest.approx(0.0, abs=1e-5)
    assert float(good["heatmap"]) < 0.1 * float(bad["heatmap"])


def _rectangle_batch(n: int, seed: int = 0):
    """Grey road, coloured rectangles: small cars (label 0) high, big trucks (label 1) low."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.full((n, 3, *IMAGE), 0.4)
    boxes, labels = [], []
    for i in range(n):
        bx = []
        for j in range(3):
            x = 6 + 28 * j + float(torch.rand(1, generator=g)) * 10
            bx.append([x, 10.0, x + 10, 17.0])
        x = float(torch.rand(1, generator=g)) * 40
        bx.append([x, 34.0, x + 48, 60.0])
        for (x1, y1, x2, y2), c in zip(bx, ([0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.9])):
            imgs[i, :, int(y1) : int(y2), int(x1) : int(x2)] = torch.tensor(c)[:, None, None]
        boxes.append(torch.tensor(bx))
        labels.append(torch.tensor([0, 0, 0, 1]))
    return imgs, boxes, labels


def test_a_few_steps_lower_the_detection_loss():
    model = PrunedDetector(tiny_model_config(IMAGE, mode="global", keep_ratio=0.5))
    x, boxes, labels = _rectangle_batch(2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model.loss(model(x), boxes, labels)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses


def test_every_cell_inside_a_large_box_regresses_to_it():
    # 80 x 48 px box (10 x 6 cells): its Gaussian window has radius r < 5, yet every cell whose
    # centre lies inside the box regresses to it, with weight max(Gaussian, INSIDE_BOX_WEIGHT)
    box = torch.tensor([[8.0, 8.0, 88.0, 56.0]])
    t = detection_targets([box], [torch.tensor([0])], IMAGE, OUT, 3)
    r = int(gaussian_radius(torch.tensor(6.0), torch.tensor(10.0)).floor())
    cy = (torch.arange(OUT[0]) + 0.5) * 8
    cx = (torch.arange(OUT[1]) + 0.5) * 8
    inside = ((cx[None] >= 8) & (cx[None] <= 88) & (cy[:, None] >= 8) & (cy[:, None] <= 56)).float()
    torch.testing.assert_close((t["box_weight"][0] > 0).float(), inside)
    i, j = 1, 1  # a corner cell, outside the window (centre cell (4, 6), radius r)
    assert abs(j - 6) > r and float(t["box_weight"][0, i, j]) == pytest.approx(INSIDE_BOX_WEIGHT)
    assert t["box"][0, :, i, j].tolist() == [12.0 - 8.0, 12.0 - 8.0, 88.0 - 12.0, 56.0 - 12.0]
    assert float(t["box_weight"][0, 4, 6]) == 1.0
