"""Shared fixtures; markers gpu / trt / jetson skip with a printed reason when absent."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _has_trt() -> bool:
    return (importlib.util.find_spec("tensorrt") is not None
            and importlib.util.find_spec("pycuda") is not None and _has_cuda())


def _is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release")


def pytest_collection_modifyitems(config, items):
    reasons = {
        "gpu": (_has_cuda, "no CUDA GPU visible to torch on this machine"),
        "trt": (_has_trt, "TensorRT + pycuda + a CUDA GPU are not available here "
                          "(install cass-deploy[trt] on a GPU or Jetson)"),
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
