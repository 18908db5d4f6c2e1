"""The runtime's ceiling control (``profiling.control``): the late blocks alone on all tokens and on k."""

from __future__ import annotations

import math

import pytest
import torch
from fixtures.examples import load_example

from cass_deploy.errors import InputError
from cass_deploy.model.detector import ModelConfig, PrunedDetector
from cass_deploy.model.pruner import PrunerConfig
from cass_deploy.profiling.control import blocks_control, late_blocks


def _late_macs(tokens: int, dim: int, hidden: int, depth: int) -> int:
    """Multiply-accumulates of ``depth`` pre-norm blocks on ``tokens`` tokens, by hand: qkv, the
    output projection and the two MLP layers, plus q @ k^T and attn @ v (LayerNorm and softmax
    are not multiply-accumulates)."""
    linear = tokens * dim * (3 * dim + dim + 2 * hidden)
    attention = 2 * tokens * tokens * dim
    return depth * (linear + attention)


def test_the_blocks_alone_carry_their_own_mac_bound_and_a_speed_up():
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=(64, 128),
        embed_dim=32,
        num_heads=2,
        early_depth=1,
        late_depth=2,
        head_channels=8,
        pruner=PrunerConfig(mode="global", keep_ratio=0.5),
    )
    model = PrunedDetector(cfg).eval()
    comp = blocks_control(model, 0.25, threads=1, warmup=1, rounds=6)
    p, k = model.num_patches, model.with_pruner(mode="global", keep_ratio=0.25).k
    assert (p, k) == (32, 8)
    assert comp.baseline == "32 tokens" and comp.paired
    (r,) = comp.speedups
    assert r.b == "8 tokens"
    hidden = round(32 * cfg.mlp_ratio)
    expected = _late_macs(32, 32, hidden, 2) / _late_macs(8, 32, hidden, 2)
    assert comp.mac_bounds["8 tokens"] == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(r.ratio) and r.ratio > 0 and r.lo <= r.ratio <= r.hi
    assert comp.share_of_bound("8 tokens") == pytest.approx(r.ratio / expected)


def test_a_model_without_late_blocks_is_named():
    class Other:
        pass

    with pytest.raises(InputError, match="Other has no late blocks to time alone"):
        late_blocks(Other())


def test_the_control_runs_on_the_transformers_vit_example():
    """A model this project did not write: the example's late stack is transformers' ViTLayer
    (query / key / value / output Linear, an MLP of 2 D), width read from its first linear layer."""
    torch.manual_seed(0)
    model = load_example("vit_detector").build(image_size=(64, 128), hidden_size=32, late_layers=2)
    comp = blocks_control(model, 0.5, threads=1, warmup=1, rounds=6)
    (r,) = comp.speedups
    assert (comp.baseline, r.b) == ("32 tokens", "16 tokens")
    expected = _late_macs(32, 32, 64, 2) / _late_macs(16, 32, 64, 2)
    assert comp.mac_bounds["16 tokens"] == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(r.ratio) and r.ratio > 0
