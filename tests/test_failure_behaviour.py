"""Failure behaviour through the CLI (issue 13), one block per failure class.

Every test drives ``cass_deploy.cli.main`` (the ``cass-deploy`` entry point) and checks what a user
sees and what is left on disk: the exit code, one ``error:`` line naming the bad value, no
traceback (an exception escaping ``main`` fails the test; an "internal error" line too), the
output absent or byte-identical afterwards and no temp (``.NAME.*.tmp``) or ``.old`` sibling.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from cass_deploy.cli import main
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import ExportRequest
from cass_deploy.model.checkpoint import save_checkpoint
from cass_deploy.model.detector import PrunedDetector
from cass_deploy.training import train as train_mod
from cass_deploy.training.train import INCOMPLETE_MARKER

from conftest import TINY_OVERRIDES, tiny_model_config

STRAY = re.compile(r"(^\..*\.tmp$)|(\.old$)")


# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (``dir`` for directories) under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def strays(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if STRAY.search(p.name)]


def cli(argv, capsys) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr). No traceback, no internal error."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return rc, out, err


def error_line(err: str, *needles: str) -> str:
    """The one ``cass-deploy CMD: error:`` line (or argparse's ``error:``), containing every needle."""
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def refused(argv, capsys, *needles: str, code: int = 2, root: Path | None = None) -> str:
    """``argv`` exits ``code`` with one error line naming ``needles``; ``root`` (if given) is unchanged."""
    before = snapshot(root) if root is not None else None
    rc, _, err = cli(argv, capsys)
    assert rc == code, err
    line = error_line(err, *needles)
    if root is not None:
        assert snapshot(root) == before
        assert strays(root) == []
    return line


@pytest.fixture(scope="module")
def export_dir(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fb") / "export"
    run_export(ExportRequest(checkpoint=tiny_checkpoint, out=out), log=lambda s: None)
    return out


@pytest.fixture
def work(tmp_path, export_dir, tiny_checkpoint):
    """A scratch directory with a copy of the export and the checkpoint."""
    shutil.copytree(export_dir, tmp_path / "exp")
    shutil.copy(tiny_checkpoint, tmp_path / "best.pt")
    return tmp_path


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory where files cannot be created (a 0555 directory; /sys for root, who ignores modes)."""
    if os.geteuid() == 0:
        probe = Path("/sys/cass-deploy-probe")
        try:
            probe.touch()
        except OSError:
            yield Path("/sys")
            return
        probe.unlink()
        pytest.skip("running as root and /sys is writable: no read-only directory to test with")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    yield d
    d.chmod(0o755)


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _tamper_weight(path: Path) -> None:
    """Change one weight of a valid ONNX file (it stays loadable, its graph and file hashes change)."""
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data) or 0)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))


# --------------------------------------------------------------------------- 1. hashes on every read


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "--reference", "{ckpt}", "--candidate", "{exp}", "--images", "2", "--json", "{root}/v.json"],
        ["validate", "{exp}", "--images", "2", "--json", "{root}/val.json"],
        ["profile", "{exp}", "--iters", "1", "--warmup", "0", "--out", "{root}/prof"],
        ["profile", "{exp}/model.onnx", "--iters", "1", "--warmup", "0"],
        ["export", "{exp}", "--engine", "--out", "{root}/eng"],
    ],
    ids=["verify", "validate", "profile-dir", "profile-onnx", "export-engine"],
)
def test_a_changed_byte_is_refused_by_every_reader(work, capsys, argv):
    onnx_path = work / "exp" / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    onnx_path.write_bytes(bytes(data))
    expected = _manifest(work / "exp")["artefacts"]["onnx"]["sha256"]
    actual = hashlib.sha256(bytes(data)).hexdigest()
    args = [a.format(ckpt=work / "best.pt", exp=work / "exp", root=work) for a in argv]
    refused(args, capsys, str(onnx_path), expected, actual, "--no-verify-hash", root=work)


def test_an_unrelated_onnx_in_an_export_directory_is_refused(work, capsys):
    shutil.copy(work / "exp" / "model.onnx", work / "exp" / "other.onnx")
    refused(["profile", work / "exp" / "other.onnx", "--iters", "1"], capsys, "other.onnx", "model.onnx", root=work)


def test_a_bare_onnx_is_checked_against_its_graph_hash(work, capsys):
    lone = work / "lone.onnx"
    shutil.copy(work / "exp" / "model.onnx", lone)
    rc, _, err = cli(["profile", lone, "--iters", "1", "--warmup", "0"], capsys)
    assert rc == 0 and "not checked" not in err
    _tamper_weight(lone)
    refused(["profile", lone, "--iters", "1"], capsys, str(lone), "graph", "SHA-256", root=work)


def test_no_verify_hash_runs_with_a_warning(work, capsys):
    _tamper_weight(work / "exp" / "model.onnx")
    rc, _, err = cli(["profile", work / "exp", "--iters", "1", "--warmup", "0", "--no-verify-hash"], capsys)
    assert rc == 0
    assert "warning" in err and "model.onnx" in err and "--no-verify-hash" in err


def test_an_engine_needs_its_manifest_whatever_the_command(work, capsys):
    engine = work / "lone.engine"
    engine.write_bytes(b"not really an engine")
    for argv in (
        ["profile", engine],
        ["validate", engine],
        ["verify", "--reference", work / "best.pt", "--candidate", engine],
    ):
        line = refused(argv, capsys, str(engine), "manifest.json", root=work)
        assert "verify needs" not in line


def test_validate_refuses_a_changed_source_checkpoint(tiny_checkpoint, tmp_path, capsys):
    """The dense reference is the export's source checkpoint: retrained since, it is another model."""
    ckpt = tmp_path / "ckpt.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    run_export(ExportRequest(checkpoint=ckpt, out=tmp_path / "exp"), log=lambda s: None)
    save_checkpoint(ckpt, PrunedDetector(tiny_model_config((96, 160))), train_mod.CassConfig())
    refused(["validate", tmp_path / "exp", "--images", "2"], capsys, str(ckpt.resolve()), "SHA-256", root=tmp_path)


# --------------------------------------------------------------------------- 2. unwritable outputs


def _writers(work: Path, target: Path) -> list[list]:
    """Every writing command with its output at ``target`` (cheap inputs: each is refused up front)."""
    return [
        ["train", "--out", target, *sum((["--set", o] for o in TINY_OVERRIDES), [])],
        ["diagnose", "--out", target],
        ["export", work / "best.pt", "--out", target],
        ["verify", "--reference", work / "best.pt", "--candidate", work / "exp", "--json", target / "v.json"],
        ["validate", work / "exp", "--images", "2", "--json", target / "v.json"],
        ["profile", work / "exp", "--iters", "1", "--out", target],
        ["report", work / "exp", "--out", target / "r.html"],
        ["demo", "--out", target, "--config", "configs/demo.yaml"],
        ["ablate", "--out", target, "--config", "configs/demo.yaml"],
    ]


def test_an_output_under_a_plain_file_is_refused_up_front(work, capsys, monkeypatch):
    (work / "plain").write_text("a file\n")
    (work / "exp" / "verify.json").write_text("{}")  # so report finds something to report
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    for argv in _writers(work, work / "plain" / "sub"):
        refused(argv, capsys, str(work / "plain"), "not a directory", root=work)


def test_an_output_in_a_read_only_directory_is_refused_up_front(work, read_only_dir, capsys, monkeypatch):
    (work / "exp" / "verify.json").write_text("{}")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    for argv in _writers(work, read_only_dir / "cass-out"):
        refused(argv, capsys, str(read_only_dir / "cass-out"), root=work)
    assert not (read_only_dir / "cass-out").exists()


def test_an_os_error_while_writing_is_one_line_and_leaves_nothing(work, capsys, monkeypatch):
    import cass_deploy.export.pipeline as pipeline

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pipeline.onnx, "save", full_disk)
    refused(["export", work / "best.pt", "--out", work / "new"], capsys, "--out", "No space left", root=work)
    # over an existing export with --force: the old one stays byte-identical
    refused(["export", work / "best.pt", "--out", work / "exp", "--force"], capsys, "No space left", root=work)


def test_an_output_over_its_own_input_is_refused(work, capsys):
    refused(["export", work / "best.pt", "--out", work, "--force"], capsys, "input", root=work)


# --------------------------------------------------------------------------- 3. limits on what is exported


@pytest.fixture
def band_checkpoint(tmp_path):
    """An untrained tiny detector saved with a trained-looking band pruner (proportional quotas)."""
    cfg = tiny_model_config(
        (96, 160), mode="band", bands=3, band_quotas="proportional", band_positive_share=(0.1, 0.2, 0.7)
    )
    path = tmp_path / "band.pt"
    save_checkpoint(path, PrunedDetector(cfg), train_mod.CassConfig())
    return path


class _Reached(Exception):
    pass


@pytest.fixture
def stop_at_trace(monkeypatch):
    """Stop an export where the ONNX trace would start (the limits were passed): exit 2, 'reached'."""
    import cass_deploy.export.pipeline as pipeline
    from cass_deploy.errors import InputError

    seen = {}

    def reached(model, part, **kw):
        seen.update(k=model.k, mode=model.pruner_mode, topk=tuple(model.topk_sizes), size=model.image_size)
        raise InputError("reached the ONNX trace")

    monkeypatch.setattr(pipeline, "export_part", reached)
    return seen


def test_a_resized_export_is_checked_on_the_pruner_it_exports(band_checkpoint, tmp_path, capsys, stop_at_trace):
    # 2048x2048 = 16384 patches; global keep 0.2 -> k = 3277 <= 3840: legal on TensorRT
    argv = ["export", band_checkpoint, "--out", tmp_path / "o", "--image-size", "2048", "2048"]
    refused([*argv, "--pruner", "global", "--keep-ratio", "0.2", "--target", "tensorrt10"], capsys, "reached")
    assert stop_at_trace == {"k": 3277, "mode": "global", "topk": (3277,), "size": (2048, 2048)}
    # ONNX Runtime has no TopK limit: a band quota over 3840 is not refused there
    refused(["export", band_checkpoint, "--out", tmp_path / "o", "--image-size", "8192", "8192"], capsys, "reached")
    assert stop_at_trace["mode"] == "band" and max(stop_at_trace["topk"]) > 3840
    # a global pruner at 8192x8192 on TensorRT is told about its own TopK, not about bands
    line = refused([*argv[:5], "8192", "8192", "--pruner", "global", "--target", "tensorrt10"], capsys, "k <= 3840")
    assert "per band" not in line and "k=131072" in line
    assert not (tmp_path / "o").exists()


def test_band_keep_ratio_one_exports_the_requested_quota(band_checkpoint, tmp_path, capsys):
    rc, _, err = cli(["export", band_checkpoint, "--out", tmp_path / "o", "--keep-ratio", "1.0"], capsys)
    assert rc == 0, err
    m = _manifest(tmp_path / "o")
    assert m["keep_ratio"] == 1.0 and m["k"] == 60 and sum(m["topk_sizes"]) == 60


@pytest.mark.parametrize("extra", [["--engine"], ["--profile", "jetson-orin-nx"]], ids=["engine", "tensorrt-profile"])
def test_the_topk_limit_is_named_before_tensorrt_is_missing(band_checkpoint, tmp_path, capsys, extra):
    argv = ["export", band_checkpoint, "--out", tmp_path / "o", "--image-size", "4096", "4096", "--pruner", "global"]
    line = refused([*argv, *extra], capsys, "3840", "k=32768", root=tmp_path)
    assert "not installed" not in line


# --------------------------------------------------------------------------- 4. report inputs


@pytest.mark.parametrize(
    "name, data, field",
    [
        ("history.json", {"epoch": 1}, "the top level must be a JSON list"),
        ("history.json", [{"epoch": "one"}], "[0].epoch must be an integer"),
        ("history.json", [1, 2], "[0] must be a JSON object"),
        ("verify.json", {"candidates": {"a": 1}}, "candidates must be a JSON list"),
        ("verify.json", {"candidates": [{"name": "x", "precision": "fp32"}]}, "candidates[0].score_max_abs is missing"),
        ("profile.json", {"results": [{"label": "a"}]}, "results[0].backend is missing"),
        (
            "profile.json",
            {"results": [{"label": "a", "backend": "b", "device": "c", "batch": 1, "latency_ms": {"mean": "fast"}}]},
            "results[0].latency_ms.mean must be a number",
        ),
        (
            "profile.json",
            {
                "results": [
                    {
                        "label": "a",
                        "backend": "b",
                        "device": "c",
                        "batch": 1,
                        "latency_ms": dict.fromkeys(("mean", "p50", "p90", "p95", "p99", "max", "throughput_fps"), 0),
                    }
                ]
            },
            "results[0].latency_ms.mean must be a number > 0",
        ),
        ("validate-x.json", {"result": [1]}, "result must be a JSON object"),
        ("validate-x.json", {"result": {"by_field": {"near": {"recall": "high"}}}}, "result.by_field.near.recall"),
        ("diagnostics.json", {"breakdowns": [{"normalization": "patch"}]}, "breakdowns[0].by_band is missing"),
        ("history.json", "[1, 2", "not valid JSON (line 1"),
    ],
)
def test_report_names_the_file_and_field_of_a_malformed_input(tmp_path, capsys, name, data, field):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text(data if isinstance(data, str) else json.dumps(data))
    refused(["report", run], capsys, str(run / name), field, root=tmp_path)


# --------------------------------------------------------------------------- 5. train: nothing before validation


def _train_args(out: Path, *more: str) -> list:
    return ["train", "--no-progress", "--out", out, *sum((["--set", o] for o in TINY_OVERRIDES), []), *more]


@pytest.mark.parametrize(
    "more, needle",
    [
        (["--set", "data.source=/nonexistent/data"], "/nonexistent/data"),
        (["--resume", "{root}/garbage.pt"], "garbage.pt"),
        (["--set", "lr=abc"], "lr"),
        (["--set", "epochs=0"], "epochs"),
    ],
)
def test_train_creates_nothing_before_its_inputs_are_valid(tmp_path, capsys, more, needle):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "runs" / "t"
    refused(_train_args(out, *[m.format(root=tmp_path) for m in more]), capsys, needle, root=tmp_path)
    assert not (tmp_path / "runs").exists()


def test_an_interrupted_train_is_marked_and_resumable(tmp_path, capsys, monkeypatch):
    out = tmp_path / "t"
    real = train_mod.evaluate_model
    calls = []

    def evaluate_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's evaluation: epoch 1 was saved
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "evaluate_model", evaluate_then_interrupt)
    rc, _, err = cli(_train_args(out, "--set", "epochs=2"), capsys)
    assert rc == 130 and "interrupted" in err
    marker = json.loads((out / INCOMPLETE_MARKER).read_text())
    assert marker["status"] == "incomplete" and "--resume" in marker["resume"] and (out / "last.pt").is_file()
    assert strays(tmp_path) == []
    # a plain rerun is told about the unfinished run and how to continue it
    refused(_train_args(out, "--set", "epochs=2"), capsys, "unfinished", "--resume", root=tmp_path)
    monkeypatch.setattr(train_mod, "evaluate_model", real)
    rc, out_text, err = cli(_train_args(out, "--set", "epochs=2", "--resume", out / "last.pt"), capsys)
    assert rc == 0, err
    assert not (out / INCOMPLETE_MARKER).exists() and (out / "history.json").is_file()


def test_a_train_interrupted_before_its_first_checkpoint_leaves_nothing(tmp_path, capsys, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "evaluate_model", interrupt)
    rc, _, err = cli(_train_args(tmp_path / "runs" / "t"), capsys)
    assert rc == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_train_says_so(tmp_path, capsys):
    line = refused(_train_args(tmp_path / "t", "--set", "lr=1e30"), capsys, "diverged", "lr", code=1)
    assert "NaN" not in line and "logits" not in line


# --------------------------------------------------------------------------- 6. interrupts and leftovers


def test_ctrl_c_wrapped_by_the_exporter_is_an_interrupt(work, capsys, monkeypatch):
    import torch

    def wrapped_interrupt(*a, **k):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:  # what torch.onnx does with an exception inside the trace
            raise RuntimeError("Failed to export the model with torch.export") from exc

    monkeypatch.setattr(torch.onnx, "export", wrapped_interrupt)
    rc, _, err = cli(["export", work / "best.pt", "--out", work / "new"], capsys)
    assert rc == 130 and "interrupted" in err and "export failed" not in err
    assert not (work / "new").exists() and strays(work) == []


def test_sigint_during_the_onnx_trace_exits_130_and_leaves_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "exp"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cass_deploy", "export", str(tiny_checkpoint), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = proc.stdout.readline()  # "exporting full (...)": the trace starts now
    assert line.startswith("exporting"), line + proc.stderr.read()
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the export finished before the signal arrived (a very fast machine)")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists() and strays(tmp_path) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_siblings_of_killed_runs_are_cleaned_by_the_next_run(work, capsys):
    dead = _dead_pid()
    (work / "new").mkdir()  # an earlier export, replaced below with --force
    stale = [
        work / f".new.{dead}-k1ll3d00.tmp",  # a SIGKILLed export's temp directory
        work / ".new.abc12def.tmp",  # an older cass-deploy's temp file name
        work / ".new.old",  # an older cass-deploy's leftover backup (its target exists)
    ]
    stale[0].mkdir()
    (stale[0] / "model.onnx").write_bytes(b"half")
    stale[1].write_bytes(b"half")
    stale[2].mkdir()
    kept = [work / ".new.1-l1ve0000.tmp", work / ".other.abc12def.tmp"]  # a live process's; another name's
    for k in kept:
        k.write_bytes(b"x")
    rc, _, err = cli(["export", work / "best.pt", "--out", work / "new", "--force"], capsys)
    assert rc == 0, err
    assert not any(s.exists() for s in stale) and all(k.exists() for k in kept)
    assert (work / "new" / "model.onnx").is_file()


def test_a_run_killed_between_its_two_renames_gets_its_old_output_back(work, capsys):
    """The old export was moved aside, the new one not yet in place: the next run restores, then replaces."""
    dead = _dead_pid()
    before = snapshot(work / "exp")
    os.replace(work / "exp", work / f".exp.{dead}-old.tmp")
    refused(["export", work / "best.pt", "--out", work / "exp"], capsys, "already exists", "--force")
    assert snapshot(work / "exp") == before and strays(work) == []


# --------------------------------------------------------------------------- 7. sizes


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["diagnose", "--image-size", "0", "0", "--out", "{root}/d"], "--image-size must be two positive integers"),
        (["diagnose", "--image-size", "-16", "32", "--out", "{root}/d"], "-16 32"),
        (["diagnose", "--image-size", "100", "100", "--out", "{root}/d"], "100 100 is not a multiple of the patch"),
        (["export", "{root}/best.pt", "--image-size", "0", "0", "--out", "{root}/e"], "--image-size"),
        (["export", "{root}/best.pt", "--image-size", "100", "160", "--out", "{root}/e"], "100 160 is not a multiple"),
        (["train", "--set", "model.image_size=[0,0]", "--out", "{root}/t"], "image_size"),
        (["train", "--set", "model.image_size=[100,100]", "--out", "{root}/t"], "model.image_size [100, 100]"),
    ],
)
def test_a_size_that_is_not_a_positive_multiple_of_the_patch_is_refused(work, capsys, argv, needle):
    refused([a.format(root=work) for a in argv], capsys, needle, root=work)


# --------------------------------------------------------------------------- 8. --force over a plain file


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "{root}/best.pt", "--out", "{target}", "--force"],
        ["profile", "{root}/exp", "--iters", "1", "--warmup", "0", "--out", "{target}", "--force"],
        ["diagnose", "--out", "{target}", "--force"],
    ],
    ids=["export", "profile", "diagnose"],
)
def test_force_over_a_plain_file_leaves_no_old_copy(work, capsys, argv):
    target = work / "target"
    target.write_text("a plain file\n")
    rc, _, err = cli([a.format(root=work, target=target) for a in argv], capsys)
    assert rc == 0, err
    assert target.is_dir() and strays(work) == []


def test_a_directory_is_never_replaced_by_a_json_file(work, capsys):
    (work / "j").mkdir()
    argv = ["verify", "--reference", work / "best.pt", "--candidate", work / "exp", "--json", work / "j", "--force"]
    refused(argv, capsys, "is a directory", root=work)


# --------------------------------------------------------------------------- 9. smaller ones


def test_profile_of_an_export_with_an_engine_says_what_it_timed(work, capsys):
    from cass_deploy.backends.probe import is_available

    if is_available("tensorrt") and is_available("pycuda"):
        pytest.skip("TensorRT is installed here: the engine itself is profiled")
    engine = work / "exp" / "model.engine"
    engine.write_bytes(os.urandom(64))
    m = _manifest(work / "exp")
    m["artefacts"]["engine"] = {"file": "model.engine", "sha256": hashlib.sha256(engine.read_bytes()).hexdigest()}
    (work / "exp" / "manifest.json").write_text(json.dumps(m))
    rc, out, err = cli(["profile", work / "exp", "--iters", "1", "--warmup", "0", "--out", work / "p"], capsys)
    assert rc == 0, err
    said = out + err
    assert "model.engine" in said and "TensorRT" in said and "model.onnx instead" in said
    assert any(
        "model.engine" in w for w in json.loads((work / "p" / "profile.json").read_text())["environment"]["warnings"]
    )


@pytest.mark.parametrize(
    "flag, value",
    [("--min-keep-iou", "1.5"), ("--min-keep-iou", "-0.1"), ("--max-score-err", "-1"), ("--images", "0")],
)
def test_verify_out_of_range_thresholds_are_usage_errors(work, capsys, flag, value):
    argv = ["verify", "--reference", work / "best.pt", "--candidate", work / "exp", flag, value]
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and flag in err and value in err and "Traceback" not in err


def test_a_yaml_parse_error_is_one_line_with_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nmodel:\n  image_size: [96, 160\n  embed_dim: 32\n")
    _, _, err = cli(["train", "--config", bad, "--out", tmp_path / "t"], capsys)
    assert len(err.strip().splitlines()) == 1
    assert re.search(rf"{re.escape(str(bad))}:\d+:\d+: cannot parse YAML", err)
    assert not (tmp_path / "t").exists()
