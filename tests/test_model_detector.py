"""PrunedDetector: shapes per pruner mode, keep-set contract, dense equivalence, untouched
non-kept tokens, predictor gradient isolation, shared-weight pruner swaps, the interface."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cass_deploy.config import from_dict, to_dict
from cass_deploy.errors import ConfigError, InputError
from cass_deploy.model.detector import ModelConfig, PrunedDetector
from cass_deploy.model.interface import PrunableModel
from cass_deploy.model.pruner import PrunerConfig

from conftest import tiny_model_config

MODES = ("global", "band", "threshold", "none")


def tiny(image_size=(64, 96), **pruner) -> ModelConfig:
    """A small, fast configuration of the reference architecture."""
    pruner.setdefault("keep_ratio", 0.4)
    return tiny_model_config(image_size, late_depth=2, **pruner)


def images(b: int, size=(64, 96), seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(64, 96), (96, 48)])
@pytest.mark.parametrize("mode", MODES)
def test_output_shapes_and_keep_set(mode, size, batch):
    model = PrunedDetector(tiny(size, mode=mode, bands=2)).eval()
    hp, wp = size[0] // 16, size[1] // 16
    p = hp * wp
    with torch.no_grad():
        out = model(images(batch, size))
    expected_keys = ["scores", "keep_mask", "heatmap", "box"] + ([] if mode == "threshold" else ["keep_idx"])
    assert sorted(out) == sorted(expected_keys)
    assert out["scores"].shape == (batch, p) and out["scores"].dtype == torch.float32
    assert out["keep_mask"].shape == (batch, p) and out["keep_mask"].dtype == torch.bool
    hh, wh = size[0] // model.cfg.head_stride, size[1] // model.cfg.head_stride
    assert out["heatmap"].shape == (batch, 3, hh, wh)
    assert out["box"].shape == (batch, 4, hh, wh)
    assert bool((out["box"] > 0).all())
    assert model.grid == (hp, wp)
    if mode == "threshold":
        assert model.k is None
        return
    k = {"none": p}.get(mode, math.ceil(0.4 * p))
    assert model.k == k and isinstance(model.k, int)
    idx = out["keep_idx"]
    assert idx.shape == (batch, k) and idx.dtype == torch.int64
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # sorted and unique
    for b in range(batch):
        assert idx[b].tolist() == torch.nonzero(out["keep_mask"][b]).flatten().tolist()


class _FixedScores(torch.nn.Module):
    """Stands in for the predictor: returns hand-made scores whatever the tokens."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(tokens.shape[0], -1)


def test_band_model_keeps_near_rows_when_the_horizon_scores_highest():
    # grid 6 x 6 (96 x 96 input), 3 bands of 2 rows; every high score in the top band
    model = PrunedDetector(tiny((96, 96), mode="band", keep_ratio=0.5, bands=3)).eval()
    scores = torch.cat([torch.linspace(10, 20, 12), torch.linspace(-1, -2, 24)])[None]
    model.predictor = _FixedScores(scores)
    with torch.no_grad():
        out = model(images(2, (96, 96)))
        glob = model.with_pruner("global")(images(2, (96, 96)))
    assert model.pruner.quotas == (6, 6, 6)
    assert out["keep_mask"].view(2, 3, 12).sum(-1).tolist() == [[6, 6, 6]] * 2
    assert glob["keep_mask"].view(2, 3, 12).sum(-1).tolist() == [[12, 6, 0]] * 2
    ref = torch.topk(scores[0], 18).indices  # global = torch.topk set
    assert set(glob["keep_idx"][0].tolist()) == set(ref.tolist())


@pytest.mark.parametrize("mode", ["global", "band"])
def test_keep_ratio_one_equals_dense(mode):
    model = PrunedDetector(tiny(mode=mode, keep_ratio=1.0, bands=2)).eval()
    dense = model.with_pruner("none")
    x = images(2)
    with torch.no_grad():
        a, b = model(x), dense(x)
    assert torch.equal(a["keep_idx"], b["keep_idx"])
    for name in ("scores", "heatmap", "box"):
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["global", "band", "threshold"])
def test_late_blocks_do_not_change_non_kept_tokens(mode):
    model = PrunedDetector(tiny(mode=mode, bands=2, threshold=0.5)).eval()
    with torch.no_grad():  # centre the scores so the threshold keeps about half the patches
        model.predictor.fc2.bias.sub_(model.forward_features(images(2))["scores"].median())
        f = model.forward_features(images(2))
    mask = f["keep_mask"]
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(f["tokens"][~mask], f["early"][~mask])
    changed = (f["tokens"] - f["early"]).abs().amax(-1)
    assert bool((changed[mask] > 1e-4).all())


def test_threshold_mode_matches_global_on_the_same_kept_set():
    """Mask-based late blocks (threshold) compute exactly what gather → blocks → scatter does."""
    model = PrunedDetector(tiny(mode="global", keep_ratio=0.4)).eval()
    x = images(1)
    with torch.no_grad():
        ref = model(x)
        s = ref["scores"][0].sort(descending=True).values
        k = model.k
        tau = float(torch.sigmoid((s[k - 1] + s[k]) / 2))  # splits the top-k from the rest
        out = model.with_pruner("threshold", threshold=tau)(x)
    assert torch.equal(out["keep_mask"], ref["keep_mask"])
    torch.testing.assert_close(out["heatmap"], ref["heatmap"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["box"], ref["box"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_detection_loss_never_reaches_the_predictor(mode):
    model = PrunedDetector(tiny(mode=mode, bands=2))
    out = model(images(2))
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.tensor([[50.0, 20.0, 90.0, 60.0]])]
    labels = [torch.tensor([0]), torch.tensor([2])]
    model.loss(out, boxes, labels)["total"].backward()
    for name, p in model.predictor.named_parameters():
        assert p.grad is None or float(p.grad.abs().max()) == 0.0, name
    assert model.patch_embed.proj.weight.grad is not None
    assert float(model.patch_embed.proj.weight.grad.abs().max()) > 0
    # a loss on the scores (what CASS does) does train the predictor
    model.zero_grad(set_to_none=True)
    out = model(images(2))
    torch.nn.functional.binary_cross_entropy_with_logits(out["scores"], torch.ones_like(out["scores"])).backward()
    assert all(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.predictor.parameters())
    assert model.head.cls.weight.grad is None


@pytest.mark.parametrize("detach", [False, True])
def test_detach_predictor_input(detach):
    cfg = dataclasses.replace(tiny(), detach_predictor_input=detach)
    model = PrunedDetector(cfg)
    model(images(1))["scores"].sum().backward()
    reached = model.patch_embed.proj.weight.grad is not None
    assert reached is (not detach)


def test_with_pruner_shares_weights():
    model = PrunedDetector(tiny(mode="global", keep_ratio=0.5))
    other = model.with_pruner("band", keep_ratio=0.25)
    assert other.k == math.ceil(0.25 * 24) and model.k == 12 and other.pruner_mode == "band"
    assert model.pruner_mode == "global"
    assert set(model.state_dict()) == set(other.state_dict())
    for (n1, p1), (n2, p2) in zip(sorted(model.named_parameters()), sorted(other.named_parameters())):
        assert n1 == n2 and p1 is p2
    with torch.no_grad():
        model.head.cls.bias.add_(1.0)
    assert torch.equal(other.head.cls.bias, model.head.cls.bias)
    with pytest.raises(ConfigError):
        model.with_pruner("sparse")


def test_interface_contract():
    for mode in MODES:
        model = PrunedDetector(tiny(mode=mode, bands=2)).eval()
        assert isinstance(model, PrunableModel)
        assert model.image_size == (64, 96) and model.patch_size == 16 and model.pruner_mode == mode
        assert model.class_names == ("car", "truck", "bus")
        x = images(2)
        for raw_head in (True, False):
            model.set_outputs(raw_head=raw_head)
            with torch.no_grad():
                ref = model(x)
                full = model.full_module()(x)
                pred = model.predictor_module()(x)
            names = model.output_names("full")
            pred_names = model.output_names("predictor")
            assert ("keep_idx" in names) is (mode != "threshold")
            if raw_head:  # the old maps after the pruner outputs
                assert names[-2:] == ["heatmap", "box"] and pred_names == names[:-2]
            else:  # SPEC 6b: the deployed detections first, then the pruner outputs
                assert names[:4] == ["num_dets", "det_boxes", "det_scores", "det_classes"]
                assert pred_names == names[4:]
            assert len(full) == len(names) and len(pred) == len(pred_names)
            for name, value in zip(names, full):
                if name in ref:
                    assert torch.equal(value, ref[name]), name
            for name, value in zip(pred_names, pred):
                assert torch.equal(value, ref[name]), name
    with pytest.raises(ConfigError):
        model.output_names("head")
    assert not isinstance(object(), PrunableModel)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(image_size=(100, 96)),
        dict(embed_dim=30, num_heads=4),
        dict(head_stride=6),
        dict(head_stride=8, head_skip=True),  # the stem skip arrives at stride patch / 4 = 4
        dict(head_skip=True, stem="patch"),
        dict(decode="maxpool"),
        dict(nms_iou=0.0),
        dict(nms_candidates=0),
        dict(head_separable="yes"),
        dict(early_depth=-1),
        dict(mlp_ratio=0.0),
        dict(num_classes=0),
        dict(head_context=-1),
        dict(image_size=(64,)),
        dict(pruner=PrunerConfig(mode="band", bands=5)),  # 4 grid rows < 5 bands
        dict(pruner=PrunerConfig(mode="band", bands=2, band_rows=(6,))),  # row 6 outside a 4-row grid
    ],
)
def test_model_config_rejects_bad_values(kwargs):
    base = dict(image_size=(64, 96), embed_dim=32, num_heads=2)
    with pytest.raises(ConfigError):
        ModelConfig(**{**base, **kwargs})


def test_model_config_round_trips_through_dicts():
    cfg = ModelConfig(
        image_size=(128, 224), pruner=PrunerConfig(mode="band", bands=2, band_rows=(3,), band_quotas=(0.4, 0.6))
    )
    data = to_dict(cfg)
    back = from_dict(ModelConfig, data)
    assert back == cfg
    assert back.pruner.band_quotas == (0.4, 0.6) and back.image_size == (128, 224)
    nested = ModelConfig(pruner={"mode": "threshold", "threshold": 0.3})
    assert nested.pruner.mode == "threshold" and nested.pruner.threshold == 0.3


def test_wrong_image_shape_is_an_input_error():
    model = PrunedDetector(tiny())
    with pytest.raises(InputError, match="64, 96"):
        model(torch.rand(1, 3, 64, 80))


@pytest.mark.parametrize("stem", ["conv", "patch"])
def test_each_token_sees_only_its_own_patch(stem):
    skip = stem == "conv"  # the stem's stride-4 features feed a stride-4 head
    cfg = dataclasses.replace(tiny(), stem=stem, head_skip=skip, head_stride=4 if skip else tiny().head_stride)
    model = PrunedDetector(cfg).eval()
    x = images(1)
    y = x.clone()
    y[:, :, 16:32, 32:48] = 1.0 - y[:, :, 16:32, 32:48]  # patch (row 1, column 2) of a 4 x 6 grid
    with torch.no_grad():
        diff = (model.patch_embed(y) - model.patch_embed(x)).abs().amax(-1)[0]
    assert torch.nonzero(diff > 0).flatten().tolist() == [1 * 6 + 2]


def test_unknown_stem_is_a_config_error():
    with pytest.raises(ConfigError, match="stem"):
        ModelConfig(stem="vit")
    with pytest.raises(ConfigError, match="stem"):
        ModelConfig(image_size=(60, 90), patch_size=6, head_stride=6, stem="conv")


def test_head_context_widens_what_the_heat_map_sees(tmp_path):
    """Context blocks start as the identity (zero-initialised last conv), so a fresh model's
    outputs do not depend on them; once trained they let a cell read +-7 patches: the heat logit
    at one cell then changes when a patch 3 patches away changes, which it cannot without them.
    A checkpoint written before the blocks existed (no ``head_context`` key) loads as 0."""
    from cass_deploy.config import CassConfig
    from cass_deploy.model.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    base = dataclasses.replace(tiny(), early_depth=0, late_depth=0)  # no attention: only convs mix tokens
    plain = PrunedDetector(dataclasses.replace(base, head_context=0, pruner=PrunerConfig(mode="none"))).eval()
    ctx = PrunedDetector(dataclasses.replace(base, head_context=2, pruner=PrunerConfig(mode="none"))).eval()
    x = images(1)
    with torch.no_grad():
        assert len(ctx.head.context) == 2 and ctx.head.context[1].conv1.dilation == (2, 2)  # separable: dw first
        for blk in ctx.head.context:
            torch.nn.init.normal_(blk.conv2.weight, std=0.05)
        y = x.clone()
        y[:, :, 0:16, 0:16] = 1.0 - y[:, :, 0:16, 0:16]  # patch (0, 0); probe the head cell of patch (0, 3)
        probe = (slice(None), slice(None), 0, 3 * (16 // base.head_stride))
        assert float((plain(y)["heatmap"] - plain(x)["heatmap"])[probe].abs().max()) == 0.0
        assert float((ctx(y)["heatmap"] - ctx(x)["heatmap"])[probe].abs().max()) > 0.0
    old = PrunedDetector(dataclasses.replace(base, head_context=0))
    path = save_checkpoint(tmp_path / "old.pt", old, CassConfig())
    raw = torch.load(path, weights_only=True)
    del raw["model_config"]["head_context"]
    torch.save(raw, path)
    assert load_checkpoint(path).model.cfg.head_context == 0


def test_v1_checkpoint_loads_as_the_v1_model(tmp_path):
    """A checkpoint written before the v2 head (no head_separable / head_skip / decode keys) loads
    as what it was trained as: dense context convs, no stem skip, the 3×3 peak decode."""
    from cass_deploy.config import CassConfig
    from cass_deploy.model.checkpoint import load_checkpoint, save_checkpoint

    v1 = dataclasses.replace(
        tiny(), head_stride=8, head_context=2, head_separable=False, head_skip=False, decode="peak"
    )
    path = save_checkpoint(tmp_path / "v1.pt", PrunedDetector(v1), CassConfig())
    raw = torch.load(path, weights_only=True)
    for key in ("head_separable", "head_skip", "decode", "nms_candidates", "nms_iou"):
        del raw["model_config"][key]
    torch.save(raw, path)
    cfg = load_checkpoint(path).model.cfg
    assert (cfg.head_separable, cfg.head_skip, cfg.decode, cfg.head_stride) == (False, False, "peak", 8)
