"""The benchmark scripts that take model overrides refuse a bad one with one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("bench_runtime.py", ["--set", "nope=1"], "unknown config key(s) model.nope"),
        ("bench_runtime.py", ["--set", "head_stride=x"], "model.head_stride must be a number, got 'x'"),
        ("detector_recall.py", ["--checkpoint", "x.pt", "--set", "model.nope=1"], "unknown config key(s) model.nope"),
    ],
)
def test_a_bad_model_override_is_one_line_and_exit_2(tmp_path, script, args, message):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r.json").exists()
