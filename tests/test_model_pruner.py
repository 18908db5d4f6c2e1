"""Pruner: k, band geometry and quotas, top-k / band / threshold selection on hand-made scores."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cass_deploy.backends.limits import TENSORRT_MAX_TOPK, check_request
from cass_deploy.errors import ConfigError, InputError, LimitError
from cass_deploy.model.pruner import (
    Pruner,
    PrunerConfig,
    allocate_quotas,
    band_boundaries,
    band_positive_share,
    compute_k,
    mask_from_indices,
)


def _check_keep_set(keep_idx: torch.Tensor, keep_mask: torch.Tensor, k: int) -> None:
    """keep_idx sorted ascending, unique, int64, and the same set as keep_mask."""
    assert keep_idx.dtype == torch.int64
    assert keep_idx.shape[1] == k
    assert bool((keep_idx[:, 1:] > keep_idx[:, :-1]).all()), "keep_idx must be strictly ascending"
    assert keep_mask.dtype == torch.bool
    for b in range(keep_idx.shape[0]):
        assert set(keep_idx[b].tolist()) == set(torch.nonzero(keep_mask[b]).flatten().tolist())


# --------------------------------------------------------------------------- k and config


@pytest.mark.parametrize("num_patches", [24, 448, 3600])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_compute_k_is_exact_ceiling(num_patches, ratio):
    expected = math.ceil(Fraction(str(ratio)) * num_patches)  # exact rational arithmetic
    assert compute_k(ratio, num_patches) == expected
    assert isinstance(compute_k(ratio, num_patches), int)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mode="topk"),
        dict(keep_ratio=0.0),
        dict(keep_ratio=1.5),
        dict(keep_ratio=True),
        dict(keep_ratio=float("nan")),
        dict(threshold=1.0),
        dict(threshold=0.0),
        dict(bands=0),
        dict(bands=3, band_rows=(4,)),
        dict(bands=2, band_rows=(5, 3, 9)),
        dict(band_quotas="random"),
        dict(bands=2, band_quotas=(0.5, 0.6)),
        dict(bands=2, band_quotas=(0.5, 0.3, 0.2)),
        dict(bands=2, band_positive_share=(-0.5, 1.5)),
    ],
)
def test_pruner_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        PrunerConfig(**kwargs)


def test_pruner_config_normalises_lists():
    cfg = PrunerConfig(mode="band", bands=2, band_rows=[3], band_quotas=[0.25, 0.75])
    assert cfg.band_rows == (3,)
    assert cfg.band_quotas == (0.25, 0.75)


def test_band_boundaries():
    assert band_boundaries(16, 3) == (0, 5, 10, 16)
    assert band_boundaries(16, 3, (4, 9)) == (0, 4, 9, 16)
    assert band_boundaries(16, 3, (0, 4, 9, 16)) == (0, 4, 9, 16)
    with pytest.raises(ConfigError):
        band_boundaries(16, 3, (4, 20))
    with pytest.raises(ConfigError):
        band_boundaries(4, 5)


# --------------------------------------------------------------------------- quotas


def test_allocate_quotas_examples():
    assert allocate_quotas(10, (1, 1, 1), (10, 10, 10)) == (3, 3, 4)  # tie → nearer band
    assert allocate_quotas(10, (0.8, 0.1, 0.1), (4, 10, 10)) == (4, 3, 3)  # capped band overflows
    assert allocate_quotas(8, (0, 0, 1), (5, 5, 5)) == (1, 2, 5)  # zero weights: by room
    with pytest.raises(ConfigError):
        allocate_quotas(16, (1, 1, 1), (5, 5, 5))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.floats(0, 1)), min_size=1, max_size=6), st.data())
def test_allocate_quotas_properties(bands, data):
    caps = [c for c, _ in bands]
    weights = [w for _, w in bands]
    total = data.draw(st.integers(0, sum(caps)))
    q = allocate_quotas(total, weights, caps)
    assert sum(q) == total
    assert all(0 <= qi <= ci for qi, ci in zip(q, caps))
    if total <= sum(c for c, w in zip(caps, weights) if w > 0) and sum(weights) > 0:
        # no capping happened when every band can take its exact share: within 1 of it
        exact = [total * w / sum(weights) for w in weights]
        if all(math.ceil(e) <= c for e, c in zip(exact, caps)):
            assert all(abs(qi - e) < 1 for qi, e in zip(q, exact))


def test_band_pruner_quotas_sum_to_k_and_respect_sizes():
    p = Pruner(PrunerConfig(mode="band", keep_ratio=0.3, bands=3), (16, 28))
    assert p.k == math.ceil(0.3 * 448)
    assert sum(p.quotas) == p.k
    sizes = [(b - a) * 28 for a, b in zip(p.band_bounds, p.band_bounds[1:])]
    assert all(q <= s for q, s in zip(p.quotas, sizes))
    assert p.topk_sizes == tuple(q for q in p.quotas if q > 0)


def test_proportional_quotas_use_positive_share():
    cfg = PrunerConfig(
        mode="band", keep_ratio=0.5, bands=3, band_quotas="proportional", band_positive_share=(0.25, 0.0, 0.75)
    )
    p = Pruner(cfg, (6, 4))  # k = 12, band size 8 each
    # exact shares (3, 0, 9); the near band is capped at 8, its surplus goes to the far band
    assert p.quotas == (4, 0, 8)
    with pytest.raises(ConfigError, match="band_positive_share"):
        Pruner(PrunerConfig(mode="band", band_quotas="proportional"), (6, 4))


def test_band_quota_over_topk_limit_is_refused_per_target():
    # the pruner knows no target: it builds the plan; the limits table refuses it for TensorRT
    one = Pruner(PrunerConfig(mode="band", keep_ratio=0.5, bands=1), (100, 200))
    assert one.topk_sizes == (10000,)
    for target in ("tensorrt10", "tensorrt11"):
        with pytest.raises(LimitError, match=f"k <= {TENSORRT_MAX_TOPK} per band .* band 0: k=10000"):
            check_request(target, pruner_mode="band", topk_sizes=one.topk_sizes)
    assert check_request("onnxruntime-cpu", pruner_mode="band", topk_sizes=one.topk_sizes) == []
    four = Pruner(PrunerConfig(mode="band", keep_ratio=0.5, bands=4), (100, 200))  # 2500 per band: fine
    assert check_request("tensorrt10", pruner_mode="band", topk_sizes=four.topk_sizes) == []


def test_band_positive_share():
    targets = torch.zeros(2, 6 * 4)
    targets[0, 1] = 1.0  # row 0 → band 0
    targets[1, 4 * 4 + 2] = 1.0  # row 4 → band 2
    targets[1, 5 * 4 + 3] = 0.9
    targets[0, 5 * 4 + 0] = 1.0
    targets[0, 2 * 4 + 0] = 0.4  # ring value below the positive threshold: not counted
    assert band_positive_share(targets, (6, 4), 3) == pytest.approx((0.25, 0.0, 0.75))
    assert band_positive_share(targets, (6, 4), (1, 5)) == pytest.approx((0.25, 0.25, 0.5))
    with pytest.raises(InputError):
        band_positive_share(torch.zeros(2, 24), (6, 4), 3)
    with pytest.raises(InputError):
        band_positive_share(torch.zeros(2, 25), (6, 4), 3)


# --------------------------------------------------------------------------- selection


def test_global_topk_equals_torch_topk_set():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 448, generator=g)
    p = Pruner(PrunerConfig(mode="global", keep_ratio=0.25), (16, 28))
    idx, mask = p(scores)
    assert p.k == 112
    _check_keep_set(idx, mask, 112)
    order = np.argsort(-scores.numpy(), axis=1)[:, :112]  # independent reference
    for b in range(3):
        assert set(idx[b].tolist()) == set(order[b].tolist())


def test_band_mode_never_starves_the_near_band():
    hp, wp = 6, 4
    scores = torch.full((2, hp * wp), -5.0)
    scores[:, : 2 * wp] = torch.linspace(5, 10, 2 * wp)  # every high score in the top band
    scores[:, 2 * wp :] -= torch.arange(hp * wp - 2 * wp) * 0.01  # mid beats near
    p = Pruner(PrunerConfig(mode="band", keep_ratio=0.5, bands=3), (hp, wp))
    assert p.quotas == (4, 4, 4)
    idx, mask = p(scores)
    _check_keep_set(idx, mask, 12)
    per_band = mask.view(2, 3, 2 * wp).sum(-1)
    assert per_band.tolist() == [[4, 4, 4], [4, 4, 4]]
    # within each band the kept patches are that band's best
    for band in range(3):
        local = scores[0, band * 8 : (band + 1) * 8]
        best = set((torch.argsort(local, descending=True)[:4] + band * 8).tolist())
        kept = torch.nonzero(mask[0, band * 8 : (band + 1) * 8]).flatten() + band * 8
        assert best == set(kept.tolist())
    # global mode with the same scores starves the near band entirely
    _, gmask = Pruner(PrunerConfig(mode="global", keep_ratio=0.5), (hp, wp))(scores)
    assert int(gmask.view(2, 3, 8)[0, 2].sum()) == 0


def test_threshold_keeps_exactly_sigmoid_at_least_tau():
    tau = 0.7
    logit_tau = math.log(tau / (1 - tau))
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(3, 40, generator=g) * 3
    scores = torch.where((scores - logit_tau).abs() < 1e-3, scores + 0.01, scores)  # away from the edge
    idx, mask = Pruner(PrunerConfig(mode="threshold", threshold=tau), (5, 8))(scores)
    assert idx is None
    expected = 1.0 / (1.0 + np.exp(-scores.double().numpy())) >= tau
    assert np.array_equal(mask.numpy(), expected)
    assert 0 < int(mask.sum()) < mask.numel()


def test_none_mode_keeps_everything():
    p = Pruner(PrunerConfig(mode="none"), (3, 5))
    idx, mask = p(torch.randn(2, 15))
    assert p.k == 15
    assert torch.equal(idx, torch.arange(15).expand(2, 15))
    assert bool(mask.all())


def test_mask_from_indices_and_shape_check():
    mask = mask_from_indices(torch.tensor([[0, 3], [1, 2]]), 4)
    assert mask.tolist() == [[True, False, False, True], [False, True, True, False]]
    with pytest.raises(InputError):
        Pruner(PrunerConfig(), (3, 5))(torch.randn(2, 16))
