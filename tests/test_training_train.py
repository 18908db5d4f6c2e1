"""Training loop, checkpoints (weights_only round trip, corruption), resume, DDP smoke test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cass_deploy.cass.losses import CassLoss, total_loss
from cass_deploy.cli import main
from cass_deploy.data.collate import collate
from cass_deploy.data.factory import load_dataset
from cass_deploy.errors import CheckpointError, ConfigError, InputError
from cass_deploy.model.checkpoint import load_checkpoint, read_checkpoint
from cass_deploy.model.detector import PrunedDetector
from cass_deploy.training.train import load_train_config, train

from conftest import TINY_OVERRIDES


def test_two_steps_lower_the_loss():
    """Two optimiser steps on one fixed batch lower detection + CASS loss."""

    cfg = load_train_config(None, TINY_OVERRIDES)
    model = PrunedDetector(cfg.model)
    ds = load_dataset("synthetic", split="train", num_images=4, image_size=tuple(cfg.model.image_size))
    batch = collate([ds[i] for i in range(4)])
    cass = CassLoss(cfg.cass)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss():
        out = model(batch["images"])
        det = model.loss(out, batch["boxes"], batch["labels"])["total"]
        return total_loss(det, cass(out["scores"], batch["boxes"], model.grid, model.image_size), cfg.cass, epoch=1)

    first = loss()
    for _ in range(2):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < first.item()


def test_checkpoint_round_trip_and_metadata(tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)
    raw = read_checkpoint(tiny_checkpoint)
    assert raw["format"] == "cass-deploy-checkpoint" and raw["versions"]["torch"]
    assert ck.model.image_size == (96, 160) and ck.model.k == 30
    assert ck.cass_config.normalization == "object"
    assert "map50" in ck.metrics and ck.train_config["history"]
    # the loaded model computes exactly what the saved weights compute
    state = raw["state_dict"]
    for k, v in ck.model.state_dict().items():
        assert torch.equal(v, state[k])


def test_checkpoint_at_another_input_size(tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint, image_size=(128, 224), keep_ratio=0.25)
    out = ck.model(torch.rand(1, 3, 128, 224))
    assert out["scores"].shape == (1, 8 * 14) and out["keep_idx"].shape == (1, 28)


def test_checkpoint_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(trunc)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a cass-deploy checkpoint"):
        load_checkpoint(other)
    raw = read_checkpoint(tiny_checkpoint)
    future = tmp_path / "future.pt"
    torch.save({**raw, "format_version": 99}, future)
    with pytest.raises(CheckpointError, match="upgrade"):
        load_checkpoint(future)
    mismatch = tmp_path / "mismatch.pt"
    torch.save({**raw, "model_config": {**raw["model_config"], "embed_dim": 48}}, mismatch)
    with pytest.raises(CheckpointError, match="do not"):
        load_checkpoint(mismatch)


def test_train_resume_and_refusal(tmp_path):
    out = tmp_path / "run"
    cfg = load_train_config(None, TINY_OVERRIDES)
    train(cfg, out, progress=False, log=lambda s: None)
    with pytest.raises(InputError, match="--force"):
        train(cfg, out, progress=False, log=lambda s: None)
    cfg2 = load_train_config(None, TINY_OVERRIDES + ["epochs=2"])
    res = train(cfg2, out, resume=out / "last.pt", progress=False, log=lambda s: None)
    assert [h["epoch"] for h in res.history] == [0, 1]
    assert read_checkpoint(out / "last.pt")["epoch"] == 1


def test_training_is_deterministic(tmp_path):
    cfg = load_train_config(None, TINY_OVERRIDES)
    a = train(cfg, tmp_path / "a", progress=False, log=lambda s: None)
    b = train(cfg, tmp_path / "b", progress=False, log=lambda s: None)
    sa, sb = read_checkpoint(a.last_path)["state_dict"], read_checkpoint(b.last_path)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_dense_every_runs_the_late_blocks_on_every_token_at_that_step():
    """dense_every=2: steps 1, 3, ... of an epoch run the same weights with the pruner off; the
    others the pruned model. Measured by what each step's module returns (a dense model keeps
    every patch)."""
    from cass_deploy.training.train import _step_models

    model = PrunedDetector(load_train_config(None, TINY_OVERRIDES).model).eval()
    pick = _step_models(model, model, 2, world=1)
    x = torch.rand(1, 3, *model.image_size)
    kept = [bool(pick(step)(x)["keep_mask"].all()) for step in range(4)]
    assert kept == [False, True, False, True]
    assert pick(1).late is model.late  # the same weights, not a copy
    assert _step_models(model, model, 0, world=1)(1) is model
    with pytest.raises(ConfigError, match="dense_every"):
        _step_models(model, model, 2, world=2)
    with pytest.raises(ConfigError, match="dense_every"):
        load_train_config(None, ["dense_every=-1"])


def test_config_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="bogus"):
        load_train_config(None, ["bogus=1"])
    with pytest.raises(ConfigError, match="cass.normalization"):
        load_train_config(None, ["cass.normalization=mean"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "cannot parse" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert main(["train", "--set", "epochs=0", "--out", str(tmp_path / "o")]) == 2
    assert "epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    """torchrun with 2 CPU processes (gloo) trains and writes one checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29531",
        "-m",
        "cass_deploy",
        "train",
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
    ]
    for o in TINY_OVERRIDES:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ck.epoch == 0 and ck.model.k == 30


def test_train_out_is_a_file_and_resume_mismatch(tiny_checkpoint, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    args = ["train", "--out", str(f)]
    for o in TINY_OVERRIDES:
        args += ["--set", o]
    assert main(args) == 2
    assert "is a file" in capsys.readouterr().err
    args = ["train", "--out", str(tmp_path / "r"), "--resume", str(tiny_checkpoint)]
    for o in TINY_OVERRIDES + ["model.embed_dim=48"]:
        args += ["--set", o]
    assert main(args) == 2
    assert "another model config" in capsys.readouterr().err
    assert main(["train", "--set", "threads=0", "--out", str(tmp_path / "t")]) == 2


def test_lr_schedules_cosine_and_wsd():
    from cass_deploy.training.train import _lr_lambda

    cos = _lr_lambda(100, 10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    wsd = _lr_lambda(100, 10, "wsd", 0.3)  # peak lr until step 70, then a cosine to 0 at step 100
    assert wsd(0) == pytest.approx(0.1) and wsd(10) == wsd(69) == 1.0
    assert wsd(85) == pytest.approx(0.5) and wsd(100) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_train_config(None, ["lr_schedule=step"])
    with pytest.raises(ConfigError, match="lr_decay_fraction"):
        load_train_config(None, ["lr_decay_fraction=0"])
