"""``cass-deploy tune`` end to end on the tiny model: table, Pareto plot, recommendation, the
profile YAML read back by ``export --profile``, resuming, and bad input."""

from __future__ import annotations

import json

import pytest
import yaml

from cass_deploy.cli import main
from cass_deploy.evaluation.gates import Gates
from cass_deploy.export.profiles import load_profile
from cass_deploy.runtime.manifest import Manifest
from cass_deploy.tuning.tune import ConfigResult, TuneOptions, pareto_front, recommend

TUNE = ["--keep", "0.5,1.0", "--precision", "fp32", "--images", "6", "--verify-images", "2"]
# in this process (no Ray); test_tune_on_ray runs the same tune on the session's local Ray
FAST = ["--warmup", "1", "--rounds", "4", "--no-progress", "--resamples", "200", "--jobs", "1"]


@pytest.fixture(scope="module")
def tuned(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "t"
    # a drop gate of 1.0 always passes: the test is about the machinery, not the tiny model's recall
    rc = main(["tune", str(tiny_checkpoint), "--out", str(out), "--max-recall-drop", "1.0", *TUNE, *FAST])
    return out, rc


def test_tune_writes_table_plot_and_a_profile_export_accepts(tuned, tiny_checkpoint, tmp_path):
    out, rc = tuned
    assert rc == 0
    data = json.loads((out / "tune.json").read_text())
    rows = {r["config"]: r for r in data["table"]}
    assert set(rows) == {"keep 0.5 fp32", "keep 1 fp32"}
    for r in rows.values():
        assert r["status"] == "pass" and r["verify"]
        lo, hi = r["near_recall_ci"]
        assert lo <= r["near_recall"] <= hi
        assert r["p50_ci"][0] <= r["p50_ms"] <= r["p50_ci"][1]
        assert r["speedup_ci"][0] <= r["speedup"] <= r["speedup_ci"][1] and r["mac_bound"] > 0
    # keep 0.5 runs the late block on half the tokens: its MAC bound is above keep 1.0's
    assert rows["keep 0.5 fp32"]["mac_bound"] > rows["keep 1 fp32"]["mac_bound"]
    # the recommendation is the passing configuration with the lowest median latency
    best = min(rows.values(), key=lambda r: r["p50_ms"])
    assert best["recommended"] and data["recommended"] == (
        "keep0.5-fp32" if best is rows["keep 0.5 fp32"] else "keep1-fp32"
    )
    assert (out / "pareto.png").stat().st_size > 5000
    assert json.loads((out / "profile" / "profile.json").read_text())["comparison"]["paired"] is True
    # the YAML is a deployment profile: load it, then export with it
    prof = load_profile(out / "recommended.yaml")
    assert prof.keep_ratio == best["keep_ratio"] and prof.precision == "fp32" and prof.target == "onnxruntime"
    assert tuple(prof.image_size) == (96, 160)
    assert "near recall" in yaml.safe_load((out / "recommended.yaml").read_text())["description"]
    exp = tmp_path / "exp"
    assert main(["export", str(tiny_checkpoint), "--profile", str(out / "recommended.yaml"), "--out", str(exp)]) == 0
    man = Manifest.read(exp / "manifest.json")
    assert man.keep_ratio == best["keep_ratio"] and man.precision == "fp32"
    tuned_man = Manifest.read(out / "exports" / data["recommended"] / "manifest.json")
    assert man.opset == tuned_man.opset and man.image_size == tuned_man.image_size  # what was validated
    assert man.pruner_mode == json.loads((out / "configs" / f"{data['recommended']}.json").read_text())["pruner_mode"]


def test_tune_resumes_and_refuses_other_settings(tuned, tiny_checkpoint, capsys):
    out, _ = tuned
    before = (out / "configs" / "keep0.5-fp32.json").stat().st_mtime_ns
    onnx_before = (out / "exports" / "keep0.5-fp32" / "model.onnx").stat().st_mtime_ns
    assert main(["tune", str(tiny_checkpoint), "--out", str(out), "--max-recall-drop", "1.0", *TUNE, *FAST]) == 0
    text = capsys.readouterr().out
    assert "resuming" in text and "done earlier" in text
    assert (out / "exports" / "keep0.5-fp32" / "model.onnx").stat().st_mtime_ns == onnx_before  # export reused
    assert (out / "configs" / "keep0.5-fp32.json").stat().st_mtime_ns >= before  # latency refreshed
    rc = main(["tune", str(tiny_checkpoint), "--out", str(out), "--max-recall-drop", "0.5", *TUNE, *FAST])
    assert rc == 2 and "other settings (gates differ)" in capsys.readouterr().err


def test_tune_on_ray_gives_the_in_process_results(ray_session, tuned, tiny_checkpoint, tmp_path, capsys):
    """The two candidates as Ray units (exports and records returned and written in OUT), the
    timing as the exclusive unit: the same verify and validation figures as in this process."""
    out = tmp_path / "t"
    rc = main(
        [
            "tune",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--max-recall-drop",
            "1.0",
            *TUNE,
            *FAST,
            "--jobs",
            "2",
            "--quiet-wait",
            "1",
        ]
    )
    assert rc == 0 and "2 configurations on the Ray of this process" in capsys.readouterr().out
    here = {r["config"]: r for r in json.loads((tuned[0] / "tune.json").read_text())["table"]}
    for row in json.loads((out / "tune.json").read_text())["table"]:
        same = here[row["config"]]
        for k in ("keep_iou", "near_recall", "near_recall_ci", "near_drop", "status"):
            assert row[k] == same[k], k
        assert row["p50_ci"][0] <= row["p50_ms"] <= row["p50_ci"][1]
    for name in ("keep0.5-fp32", "keep1-fp32"):
        rec = json.loads((out / "configs" / f"{name}.json").read_text())
        assert rec["export"] == rec["validation"]["model"] == str(out / "exports" / name)
        assert Manifest.read(out / "exports" / name / "manifest.json").verify(out / "exports" / name).ok
    assert json.loads((out / "profile" / "profile.json").read_text())["comparison"]["paired"] is True


def test_tune_fails_closed_when_nothing_passes(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "t"
    args = ["tune", str(tiny_checkpoint), "--out", str(out), "--keep", "0.5", "--images", "4"]
    rc = main(args + ["--verify-images", "2", "--max-recall-drop", "0.0", "--min-near-recall", "1.0", *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "no configuration passes every gate" in err
    assert (out / "tune.json").is_file() and not (out / "recommended.yaml").exists()


def test_tune_bad_input(tiny_checkpoint, tmp_path, capsys):
    cases = [
        (["--keep", "0.5,abc"], "--keep"),
        (["--keep", "1.5"], "keep ratio"),
        (["--precision", "fp8"], "precision"),
        (["--max-recall-drop", "2"], "--max-recall-drop"),
        (["--rounds", "1"], "--rounds"),
        (["--images", "0"], "--images"),
        (["--threads", "0"], "--threads"),
        (["--warmup", "-1"], "--warmup"),
        (["--profile", "jetson-orin-nx"], "--backend tensorrt"),
    ]
    for extra, needle in cases:
        try:
            rc = main(["tune", str(tiny_checkpoint), "--out", str(tmp_path / "x"), *extra, "--no-progress"])
        except SystemExit as exc:  # argparse's usage error for a value its type refuses
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, (extra, err)
    assert main(["tune", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "y")]) == 2
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "other.txt").write_text("x")
    assert main(["tune", str(tiny_checkpoint), "--out", str(tmp_path / "z"), "--no-progress"]) == 2
    assert "not a tune directory" in capsys.readouterr().err


def _cfg(name, status, p50, lo, hi):
    return ConfigResult(name, 0.5, "fp32", "", "global", {}, {}, status, [], {"p50": p50, "p50_ci": [lo, hi]})


def test_recommend_fastest_passing_and_says_when_the_ranking_is_unsupported():
    rs = [_cfg("a", "pass", 10, 9, 11), _cfg("b", "fail", 5, 4, 6), _cfg("c", "pass", 8, 7.5, 8.5)]
    best, notes = recommend(rs)
    assert best.name == "c" and notes == []
    rs.append(_cfg("d", "pass", 8.2, 8.0, 8.4))
    best, notes = recommend(rs)
    assert best.name == "c" and "do not rank them" in notes[0] and "keep 0.5 fp32" in notes[0]
    assert recommend([_cfg("b", "fail", 5, 4, 6)])[0] is None
    assert recommend([_cfg("b", "inconclusive", 5, 4, 6)])[0] is None


def test_pareto_front():
    pts = [(1.0, 0.2), (2.0, 0.5), (1.5, 0.1), (3.0, 0.5), (4.0, 0.9)]
    assert pareto_front(pts) == [0, 1, 4]


def test_tune_options_need_a_gate():
    with pytest.raises(Exception, match="at least one gate"):
        TuneOptions(gates=Gates())


def test_report_shows_the_tune_with_intervals(tuned, tmp_path):
    out, _ = tuned
    html_out = tmp_path / "r.html"
    assert main(["report", str(out), "--out", str(html_out)]) == 0
    text = html_out.read_text()
    assert "Operating point (tune)" in text and "near recall [95% CI]" in text and "recommended" in text
    assert "p50 speed-up [95% CI]" in text and "interleaved in rounds, paired" in text  # the latency section
    assert text.count("data:image/png;base64") >= 1  # the Pareto plot is embedded
