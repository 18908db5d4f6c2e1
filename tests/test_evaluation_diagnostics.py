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
