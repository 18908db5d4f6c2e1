"""benchmarks/gpu_check.sh: shellcheck-clean, refuses cleanly without CUDA, and its plumbing with a stand-in Python."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import needs_sh, write_tool

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed here")
def test_gpu_check_passes_shellcheck():
    out = subprocess.run(["shellcheck", "-x", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@needs_sh
def test_gpu_check_refuses_without_cuda_or_arguments(tmp_path):
    usage = _run()
    assert usage.returncode == 2 and "usage: benchmarks/gpu_check.sh OUT_DIR" in usage.stderr
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is visible here: the refusal cannot be shown")
    except ImportError:
        pass
    no_gpu = _run(tmp_path / "figures", env={**os.environ, "PYTHON": str(Path(os.sys.executable))})
    assert no_gpu.returncode == 2 and "needs a CUDA GPU visible to torch" in no_gpu.stderr
    assert not (tmp_path / "figures").exists()  # nothing written
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert _run(tmp_path / "full").returncode == 2


@needs_sh
def test_gpu_check_runs_every_step_and_writes_the_summary(tmp_path):
    """With a stand-in Python that reports a GPU and succeeds, every step runs and is summarised."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = write_tool(
        bin_dir, "python", 'case "$*" in *get_device_name*) echo "Fake GPU"; exit 0;; esac\necho "ran $*"\n'
    )
    out = tmp_path / "figures"
    res = _run(out, env={**os.environ, "PYTHON": str(fake)})
    assert res.returncode == 0, res.stderr
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("gpu_check on Fake GPU")
    assert [line.split()[0] for line in summary[1:]] == ["env", "gpu-tests", "loss-cuda", "runtime-cuda"]
    assert all(" exit 0 " in line for line in summary[1:])
    assert "-m gpu" in (out / "gpu-tests.txt").read_text()
    assert "bench_runtime.py --device cuda --json" in (out / "runtime-cuda.txt").read_text()
    assert "GPU (torch): Fake GPU" in (out / "gpu.txt").read_text()
