"""Shared fixtures; markers gpu / trt / jetson skip with a printed reason when absent."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.tiny import TINY_OVERRIDES  # one definition for the tests and tools/failure_sweep.py

from cass_deploy.model.detector import ModelConfig
from cass_deploy.model.pruner import PrunerConfig
from cass_deploy.training.train import load_train_config, train

os.environ.setdefault("MPLBACKEND", "Agg")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _has_trt() -> bool:
    return (
        importlib.util.find_spec("tensorrt") is not None
        and importlib.util.find_spec("pycuda") is not None
        and _has_cuda()
    )


def _is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release")


def pytest_collection_modifyitems(config, items):
    reasons = {
        "gpu": (_has_cuda, "no CUDA GPU visible to torch on this machine"),
        "trt": (
            _has_trt,
            "TensorRT + pycuda + a CUDA GPU are not available here (install cass-deploy[trt] on a GPU or Jetson)",
        ),
        "jetson": (_is_jetson, "not an NVIDIA Jetson (no /etc/nv_tegra_release)"),
    }
    cache = {}
    for item in items:
        for marker, (probe, reason) in reasons.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = probe()
                if not cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    try:
        import torch
    except ImportError:  # the torch-free runtime tests run without it
        yield
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


def write_tool(directory: Path, name: str, body: str) -> Path:
    """An executable POSIX shell script ``directory/name`` running ``body``: a stand-in for a board tool."""
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


needs_sh = pytest.mark.skipif(sys.platform == "win32", reason="fake tools are POSIX shell scripts")


def random_boxes(g: torch.Generator, counts, corner_max, max_wh: float, image_wh) -> list[torch.Tensor]:
    """One float32 [n, 4] xyxy tensor per count: top-left corner uniform in [0, corner_max), width and
    height in [1, 1 + max_wh), bottom-right clipped to the image ``image_wh = (W, H)``."""
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * torch.tensor(corner_max)
        wh = 1 + torch.rand(n, 2, generator=g) * max_wh
        out.append(torch.cat([xy, torch.minimum(xy + wh, torch.tensor(image_wh))], dim=1))
    return out


def tiny_model_config(image_size=(64, 96), late_depth: int = 1, **pruner) -> ModelConfig:
    """A small, fast configuration of the reference architecture (embed 32, 2 heads, 1 early block,
    ``late_depth`` late blocks, 16-channel head and predictor); ``pruner`` are PrunerConfig fields."""
    return ModelConfig(
        image_size=image_size,
        embed_dim=32,
        num_heads=2,
        early_depth=1,
        late_depth=late_depth,
        head_channels=16,
        predictor_hidden=16,
        pruner=PrunerConfig(**pruner),
    )


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (nothing imported yet); fail the test with its stderr if it fails."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A briefly trained tiny detector (96x160 input, 6x10 grid, keep 0.5) -> best.pt path."""

    out = tmp_path_factory.mktemp("tiny") / "train"
    res = train(load_train_config(None, TINY_OVERRIDES), out, progress=False, log=lambda s: None)
    return res.best_path


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray of 2 CPUs with the profile slot, started once for the session (the sweeps'
    executor reuses a Ray already initialised in its process); skips without Ray installed."""
    import logging

    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'cass-deploy[distributed]')")
    from cass_deploy.sweeps.executor import PROFILE_SLOT

    ray.init(
        address="local",  # a Ray of its own, even when a cluster runs on this machine
        num_cpus=2,
        resources={PROFILE_SLOT: 1},
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        object_store_memory=256 << 20,
        _system_config={"worker_niceness": 0},  # as the executor starts its own local Ray
    )
    yield ray
    ray.shutdown()
