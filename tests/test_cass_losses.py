"""CASS per-patch losses and normalisations (SPEC §3, §4)."""

from __future__ import annotations

import math

import pytest
import torch

from cass_deploy.cass.losses import CassLoss, cass_loss, focal_loss, mse_loss, total_loss, tv_term
from cass_deploy.cass.targets import patch_owner, soft_target_mask
from cass_deploy.config import CassConfig
from cass_deploy.errors import ConfigError, InputError

IMG, GRID = (64, 64), (4, 4)


def test_focal_golden():
    # x = 0 -> p = 0.5: positive -(0.5^2) log 0.5, negative the same
    v = focal_loss(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 0.5]))
    half = 0.25 * math.log(2)
    torch.testing.assert_close(v, torch.tensor([half, half, half]))
    # x = 2, y = 1: -(1 - s)^2 log s with s = sigmoid(2)
    s = 1 / (1 + math.exp(-2))
    assert focal_loss(torch.tensor(2.0), torch.tensor(1.0)).item() == pytest.approx(-((1 - s) ** 2) * math.log(s))


def test_focal_is_finite_for_extreme_logits():
    x = torch.tensor([-200.0, -30.0, 30.0, 200.0], requires_grad=True)
    loss = focal_loss(x, torch.tensor([1.0, 1.0, 0.0, 0.0])).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # confidently wrong: -(1-p)^2 log p ~ |x| -> 200 + 30 + 30 + 200, not clipped to 0
    assert loss.item() == pytest.approx(460.0, rel=1e-4)


def test_mse_golden():
    s = 1 / (1 + math.exp(-1))
    assert mse_loss(torch.tensor(1.0), torch.tensor(0.25)).item() == pytest.approx((s - 0.25) ** 2)


def test_tv_golden():
    # probabilities [[0.5, p], [0.5, 0.5]] with p = sigmoid(2)
    p = 1 / (1 + math.exp(-2))
    v = tv_term(torch.tensor([[0.0, 2.0, 0.0, 0.0]]), (2, 2))
    # rows: |0.5-0.5|, |0.5-p| -> mean (p-0.5)/2; cols: |p-0.5|, 0 -> mean (p-0.5)/2
    assert v.item() == pytest.approx(p - 0.5)
    assert tv_term(torch.zeros(2, 5), (1, 5)).item() == 0.0


def far_car_and_near_truck():
    """A 2x2-patch far-field car and a 20x30-patch near-field truck on a 32x40 grid (patch 16)."""
    grid, img = (32, 40), (512, 640)
    car = [16.0, 16.0, 48.0, 48.0]  # centres 24, 40 -> 2x2 patches
    truck = [160.0, 176.0, 640.0, 496.0]  # 30 columns x 20 rows
    return grid, img, [torch.tensor([car, truck])]


def gradient_mass(norm: str):
    grid, img, boxes = far_car_and_near_truck()
    cfg = CassConfig(normalization=norm, expansion_ratio=0.0, area_gamma=0.0)
    x = torch.zeros(1, grid[0] * grid[1], dtype=torch.float64, requires_grad=True)
    out = cass_loss(x, boxes, grid, img, cfg)
    out.total.backward()
    owner = patch_owner(boxes, grid, img, expansion_ratio=0.0)[0]
    g = x.grad[0].abs()
    return [g[owner == o].sum().item() for o in (0, 1)], [(owner == o).sum().item() for o in (0, 1)]


def test_defining_property_object_gives_equal_mass():
    (car, truck), (n_car, n_truck) = gradient_mass("object")
    assert (n_car, n_truck) == (4, 600)
    assert car == pytest.approx(truck, rel=1e-9)


def test_defining_property_patch_mass_proportional_to_patches():
    (car, truck), (n_car, n_truck) = gradient_mass("patch")
    assert truck / car == pytest.approx(n_truck / n_car, rel=1e-9)


def random_case(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    boxes = [
        torch.tensor([[16.0, 16.0, 48.0, 48.0], [41.0, 2.0, 46.0, 6.0], [0.0, 30.0, 30.0, 64.0]], dtype=dtype),
        torch.tensor([[30.0, 10.0, 60.0, 40.0]], dtype=dtype),
    ]
    x = torch.randn(2, 16, generator=g, dtype=dtype)
    return x, boxes


@pytest.mark.parametrize("norm", ["patch", "area", "seed_object", "object"])
@pytest.mark.parametrize("extra", [{}, {"tv_weight": 0.1, "area_gamma": 1.0, "loss_type": "mse"}])
def test_gradcheck_every_normalisation(norm, extra):
    x, boxes = random_case()
    cfg = CassConfig(normalization=norm, **extra)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: cass_loss(t, boxes, GRID, IMG, cfg).total, (x,))


def literal_seed_plan1(x, boxes, cfg):
    """Seed plan 1 written out: loop over boxes, single-box mask, mean over P, times area."""
    losses = []
    for b, bx in enumerate(boxes):
        for box in bx:
            m = soft_target_mask([box[None]], GRID, IMG, ensure_center_patch=cfg.ensure_center_patch, dtype=x.dtype)[0]
            y = m
            p = torch.sigmoid(x[b])
            per = -((1 - p) ** 2) * torch.log(p) * y - p**2 * torch.log(1 - p) * (1 - y)
            losses.append(per.mean() * (box[2] - box[0]) * (box[3] - box[1]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("ensure", [True, False])
def test_seed_object_vectorised_equals_literal_loop(ensure):
    x, boxes = random_case(1)
    cfg = CassConfig(normalization="seed_object", ensure_center_patch=ensure)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    va = cass_loss(a, boxes, GRID, IMG, cfg).total
    vb = literal_seed_plan1(b, boxes, cfg)
    va.backward()
    vb.backward()
    torch.testing.assert_close(va, vb)
    torch.testing.assert_close(a.grad, b.grad)


def test_object_normalisation_golden():
    # expansion 0: box A owns 4 patches, box B (image 1) owns 1 via its centre patch.
    boxes = [torch.tensor([[16.0, 16.0, 48.0, 48.0]]), torch.tensor([[42.0, 1.0, 46.0, 5.0]])]
    x = torch.linspace(-2, 2, 32).view(2, 16).double()
    cfg = CassConfig(normalization="object", expansion_ratio=0.0, bg_weight=0.5)
    out = cass_loss(x, boxes, GRID, IMG, cfg)
    fl = focal_loss(x, torch.zeros_like(x))
    fl_pos = focal_loss(x, torch.ones_like(x))
    a = fl_pos[0, [5, 6, 9, 10]].mean()
    b = fl_pos[1, 2]
    bg_mask = torch.ones(2, 16, dtype=torch.bool)
    bg_mask[0, [5, 6, 9, 10]] = False
    bg_mask[1, 2] = False
    torch.testing.assert_close(out.object_term, (a + b) / 2)
    torch.testing.assert_close(out.background_term, 0.5 * fl[bg_mask].mean())
    assert (out.n_objects, out.n_supervised, out.n_unsupervised) == (2, 2, 0)


def test_object_area_gamma_weights():
    boxes = [torch.tensor([[16.0, 16.0, 48.0, 48.0], [0.0, 48.0, 16.0, 64.0]])]  # areas 1024, 256
    x = torch.linspace(-1, 1, 16).view(1, 16).double()
    cfg = CassConfig(normalization="object", expansion_ratio=0.0, area_gamma=1.0)
    out = cass_loss(x, boxes, GRID, IMG, cfg)
    pos = focal_loss(x, torch.ones_like(x))[0]
    la, lb = pos[[5, 6, 9, 10]].mean(), pos[12]
    wa, wb = 1024 / 640, 256 / 640  # area / mean area
    torch.testing.assert_close(out.object_term, (wa * la + wb * lb) / 2)


def test_area_normalisation_golden():
    boxes = [torch.tensor([[16.0, 16.0, 48.0, 48.0]])]  # area fraction 1/4, covers every patch
    x = torch.linspace(-1, 1, 16).view(1, 16).double()
    out = cass_loss(x, boxes, GRID, IMG, CassConfig(normalization="area"))
    target = soft_target_mask(boxes, GRID, IMG, dtype=torch.float64)
    torch.testing.assert_close(out.total, focal_loss(x, target).mean())  # equal weights -> plain mean


def test_unsupervised_objects_counted_without_ensure_center():
    boxes = [torch.tensor([[42.0, 1.0, 46.0, 5.0], [16.0, 16.0, 48.0, 48.0]])]
    x = torch.zeros(1, 16)
    out = cass_loss(x, boxes, GRID, IMG, CassConfig(normalization="object", ensure_center_patch=False))
    assert (out.n_supervised, out.n_unsupervised) == (1, 1)
    assert torch.isfinite(out.total)


@pytest.mark.parametrize("norm", ["patch", "area", "seed_object", "object"])
def test_batch_without_boxes_is_differentiable(norm):
    x = torch.randn(3, 16, requires_grad=True)
    out = cass_loss(x, [torch.zeros(0, 4)] * 3, GRID, IMG, CassConfig(normalization=norm))
    out.total.backward()
    assert torch.isfinite(out.total) and x.grad is not None and torch.isfinite(x.grad).all()
    if norm in ("patch", "object"):  # the background term still teaches "nothing here"
        assert out.total.item() > 0 and x.grad.abs().sum() > 0


def test_many_boxes_finite():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1000, 2, generator=g) * 60
    boxes = [torch.cat([xy, xy + 1 + torch.rand(1000, 2, generator=g) * 3], 1).clamp(max=64)]
    for norm in ("patch", "area", "seed_object", "object"):
        x = torch.randn(1, 16, requires_grad=True)
        out = cass_loss(x, boxes, GRID, IMG, CassConfig(normalization=norm))
        out.total.backward()
        assert torch.isfinite(out.total) and torch.isfinite(x.grad).all()


def test_bad_logits():
    boxes = [torch.zeros(0, 4)]
    with pytest.raises(InputError, match=r"\[B, 16\]"):
        cass_loss(torch.zeros(1, 15), boxes, GRID, IMG)
    with pytest.raises(InputError, match="box lists"):
        cass_loss(torch.zeros(2, 16), boxes, GRID, IMG)
    with pytest.raises(InputError, match="NaN"):
        cass_loss(torch.full((1, 16), float("nan")), boxes, GRID, IMG)
    with pytest.raises(InputError, match="floating"):
        cass_loss(torch.zeros(1, 16, dtype=torch.long), boxes, GRID, IMG)


def test_boxes_on_other_dtype_match():
    x = torch.randn(1, 16)
    b32 = [torch.tensor([[16.0, 16.0, 48.0, 48.0]])]
    b64 = [torch.tensor([[16, 16, 48, 48]], dtype=torch.int64)]
    torch.testing.assert_close(cass_loss(x, b32, GRID, IMG).total, cass_loss(x, b64, GRID, IMG).total)


def test_presets_and_config_validation():
    seed = CassLoss.preset("seed").cfg
    assert seed.normalization == "patch" and not seed.ensure_center_patch
    corrected = CassConfig.preset("corrected")
    assert corrected.normalization == "object" and corrected.ensure_center_patch
    assert corrected.area_gamma == 1.0  # set from the bias ablation (README)
    with pytest.raises(ConfigError, match="bogus"):
        CassConfig.preset("bogus")
    with pytest.raises(ConfigError, match="normalization"):
        CassConfig(normalization="mean")
    with pytest.raises(ConfigError, match="tv_weight"):
        CassConfig(tv_weight=float("nan"))


def test_warmup_schedule():
    cfg = CassConfig(cass_weight=0.05, warmup_epochs=1)
    det = torch.tensor(2.0)
    cass = torch.tensor(10.0, requires_grad=True)
    assert total_loss(det, cass, cfg, epoch=0).item() == 2.0
    assert total_loss(det, cass, cfg, epoch=1).item() == pytest.approx(2.5)


@pytest.mark.parametrize("norm", ["patch", "area", "seed_object", "object"])
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_contributions_sum_to_the_data_term(norm, gamma):
    x, boxes = random_case(2)
    out = cass_loss(
        x, boxes, GRID, IMG, CassConfig(normalization=norm, area_gamma=gamma, bg_weight=0.7), contributions=True
    )
    assert out.contribution.shape == (2, 16)
    torch.testing.assert_close(out.contribution.sum(), (out.object_term + out.background_term).detach())
