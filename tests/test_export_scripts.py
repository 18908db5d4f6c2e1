"""The ready scripts for the target in export/ (lock clocks, build the engine, profile + validate).

They wrap the CLI; here they run on the CPU against an ONNX export, where the Jetson-only parts
(nvpmodel, jetson_clocks, TensorRT) must refuse with a clear message and exit 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cass_deploy.cli import main
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest

SCRIPTS = Path(__file__).resolve().parents[1] / "export"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="the export/ scripts need bash")


def _run(script: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    # cass-deploy from this interpreter's environment, first on PATH, as on a board with it installed
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        capture_output=True, text=True, timeout=300, cwd=cwd, env={**os.environ, "PATH": path, **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def export_dir(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("scripts") / "export"
    run_export(ExportRequest(checkpoint=tiny_checkpoint, out=out), log=lambda s: None)
    return out


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed here")
def test_scripts_pass_shellcheck():
    scripts = sorted(SCRIPTS.glob("*.sh"))
    assert [s.name for s in scripts] == ["build_engine.sh", "common.sh", "lock_clocks.sh", "profile_and_validate.sh"]
    out = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True, cwd=SCRIPTS.parent)
    assert out.returncode == 0, out.stdout


@needs_bash
@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="on a Jetson this would lock the clocks")
def test_lock_clocks_off_a_jetson_refuses(tmp_path):
    out = _run("lock_clocks.sh", cwd=tmp_path)
    assert out.returncode == 2 and "not an NVIDIA Jetson" in out.stderr


@needs_bash
def test_build_engine_checks_its_input(export_dir, tmp_path):
    usage = _run("build_engine.sh", cwd=tmp_path)
    assert usage.returncode == 2 and "usage: export/build_engine.sh" in usage.stderr
    (tmp_path / "plain").mkdir()
    not_export = _run("build_engine.sh", str(tmp_path / "plain"), cwd=tmp_path)
    assert not_export.returncode == 2 and "not an export directory" in not_export.stderr


@needs_bash
@pytest.mark.skipif(shutil.which("trtexec") is not None, reason="TensorRT is installed: the build would run")
def test_build_engine_without_tensorrt_is_a_clear_error(export_dir, tmp_path):
    out = _run("build_engine.sh", str(export_dir), str(tmp_path / "engine"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "TensorRT" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "engine").exists()


@needs_bash
def test_profile_and_validate_exits_with_the_gates_verdict(export_dir, tmp_path):
    reference = tmp_path / "reference.json"
    assert main(["validate", str(export_dir), "--images", "8", "--json", str(reference)]) == 0
    kw = dict(cwd=tmp_path, WARMUP="1", ITERS="3", IMAGES="8")
    passed = _run(
        "profile_and_validate.sh", str(export_dir), str(reference), "synthetic", "ok",
        MIN_NEAR_RECALL="0", MAX_RECALL_DROP="1", **kw,
    )  # fmt: skip
    assert passed.returncode == 0, passed.stderr
    assert json.loads((tmp_path / "ok" / "validate.json").read_text())["gates"]
    assert (tmp_path / "ok" / "profile" / "profile.json").is_file()

    failed = _run("profile_and_validate.sh", str(export_dir), str(reference), "synthetic", "strict",
                  MIN_NEAR_RECALL="1.0", **kw)  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert re.search(
        r"near-field recall [0-9.]+ \(\d+/\d+ found\) \[95 % [0-9.]+, [0-9.]+\] "
        r"upper bound is below the minimum 1.0000",
        failed.stderr,
    )

    again = _run("profile_and_validate.sh", str(export_dir), str(reference), "synthetic", "ok", **kw)
    assert again.returncode == 2 and "already exists" in again.stderr
