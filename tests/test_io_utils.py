"""io_utils.Output: the one output writer (checks up front, temp sibling + rename, cleanup, stale temps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cass_deploy import io_utils
from cass_deploy.errors import InputError
from cass_deploy.io_utils import Output, hash_checks, hash_checks_enabled, write_json


def _siblings(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_file_is_written_whole_with_the_umask_mode(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    out = Output(target, flag="--json").check()
    assert not (tmp_path / "a").exists()  # the check creates nothing
    with out.writing() as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(f".out.json.{os.getpid()}-")
        tmp.write_text("{}")
        assert not target.exists()  # nothing at the target until the body is done
    assert target.read_text() == "{}"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert _siblings(target.parent) == ["out.json"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_body_leaves_nothing(tmp_path, exc):
    target = tmp_path / "new" / "deeper" / "exp"
    with pytest.raises(type(exc)):
        with Output(target, kind="dir").writing() as tmp:
            (tmp / "model.onnx").write_bytes(b"half")
            raise exc
    assert _siblings(tmp_path) == []  # the temp dir and the parents it made are gone


def test_an_os_error_while_writing_is_an_input_error_and_the_old_output_stays(tmp_path):
    target = tmp_path / "exp"
    target.mkdir()
    (target / "model.onnx").write_bytes(b"old")
    with pytest.raises(InputError, match=r"cannot write --out .*exp: No space left on device"):
        with Output(target, force=True, kind="dir", flag="--out").writing() as tmp:
            raise OSError(28, "No space left on device", str(tmp / "model.onnx"))
    assert (target / "model.onnx").read_bytes() == b"old" and _siblings(tmp_path) == ["exp"]


def test_up_front_refusals(tmp_path, monkeypatch):
    (tmp_path / "plain").write_text("x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match=r"plain is a file, not a directory"):
        Output(tmp_path / "plain" / "sub", kind="dir", flag="--out").check()
    with pytest.raises(InputError, match=r"already exists; pass --force"):
        Output(tmp_path / "plain").check()
    with pytest.raises(InputError, match=r"is a directory"):
        Output(tmp_path / "dir", force=True, kind="file", flag="--json").check()
    with pytest.raises(InputError, match=r"would replace the input"):
        Output(tmp_path, force=True, kind="dir", inputs=[tmp_path / "dir" / "best.pt"]).check()
    monkeypatch.chdir(tmp_path / "dir")
    with pytest.raises(InputError, match=r"current directory"):
        Output(tmp_path, force=True, kind="dir").check()
    with pytest.raises(InputError, match=r"not the current or root directory"):
        Output(".", force=True, kind="dir").check()
    assert _siblings(tmp_path) == ["dir", "plain"]


def test_a_plain_file_is_replaced_by_a_directory_without_an_old_copy(tmp_path):
    (tmp_path / "exp").write_text("a plain file")
    with Output(tmp_path / "exp", force=True, kind="dir").check().writing() as tmp:
        (tmp / "m").write_text("new")
    assert (tmp_path / "exp" / "m").read_text() == "new" and _siblings(tmp_path) == ["exp"]


def test_an_interrupt_between_the_two_renames_puts_the_old_directory_back(tmp_path, monkeypatch):
    target = tmp_path / "exp"
    target.mkdir()
    (target / "m").write_text("old")
    real = os.replace
    calls = []

    def replace(a, b):
        calls.append(1)
        if len(calls) == 2:  # the new one into place
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(io_utils.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with Output(target, force=True, kind="dir").writing() as tmp:
            (tmp / "m").write_text("new")
    assert (target / "m").read_text() == "old" and _siblings(tmp_path) == ["exp"]


def test_stale_siblings_of_dead_processes_are_cleaned_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    (tmp_path / "exp").mkdir()
    stale = [f".exp.{dead}-abcd1234.tmp", f".exp.{dead}-old.tmp", ".exp.zz9xk2ab.tmp", ".exp.old"]
    kept = [".exp.1-abcd1234.tmp", ".other.abc.tmp", "exp.tmp", ".exp.notes"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    removed = Output(tmp_path / "exp", force=True, kind="dir").clean_stale()
    assert sorted(p.name for p in removed) == sorted(stale)
    assert _siblings(tmp_path) == sorted(["exp", *kept])


def test_a_dead_runs_old_copy_is_restored_when_its_target_is_missing(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".exp.{dead}-old.tmp").mkdir()
    (tmp_path / f".exp.{dead}-old.tmp" / "m").write_text("old")
    with pytest.raises(InputError, match="already exists"):
        Output(tmp_path / "exp", kind="dir").check()
    assert (tmp_path / "exp" / "m").read_text() == "old" and _siblings(tmp_path) == ["exp"]


def test_in_place_keeps_the_old_run_until_the_new_one_finished(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.html").write_text("old")
    with pytest.raises(RuntimeError):
        with Output(run, force=True, kind="dir").in_place() as path:
            assert path == run and not (run / "report.html").exists()
            path.mkdir()
            (path / "half").write_text("x")
            raise RuntimeError("step 3 failed")
    assert _siblings(run) == ["report.html"] and _siblings(tmp_path) == ["run"]
    with Output(run, force=True, kind="dir").in_place() as path:
        path.mkdir()
        (path / "report.html").write_text("new")
    assert (run / "report.html").read_text() == "new" and _siblings(tmp_path) == ["run"]


def test_a_killed_in_place_run_is_rolled_back_by_the_next_one(tmp_path):
    dead = _dead_pid()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "half").write_text("x")  # what the killed run had written
    prev = tmp_path / f".run.{dead}-prev.tmp"
    prev.mkdir()
    (prev / "report.html").write_text("old")
    Output(tmp_path / "run", force=True, kind="dir").clean_stale()
    assert _siblings(tmp_path / "run") == ["report.html"] and _siblings(tmp_path) == ["run"]


def test_write_json_fails_before_writing_on_an_unserialisable_value(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "x.json", {"a": object()})
    assert _siblings(tmp_path) == []


def test_hash_checks_switch_is_scoped():
    assert hash_checks_enabled()
    with hash_checks(False):
        assert not hash_checks_enabled()
    assert hash_checks_enabled()
