"""The ablation's aggregation and the selection rule that sets the corrected preset."""

from __future__ import annotations

import pytest

from cass_deploy.training.ablation import RunResult, aggregate, markdown_table, preset_candidate, run_ablation, select


def run(variant, seed, keep, near, far, mid=0.5, map50=0.5, ret=(0.5, 0.5, 0.5)):
    return RunResult(
        variant=variant,
        seed=seed,
        keep_ratio=keep,
        train_seconds=10.0,
        map50=map50,
        recall={"far": far, "mid": mid, "near": near, "all": (far + mid + near) / 3},
        retention={"far": ret[0], "mid": ret[1], "near": ret[2]},
        retention_ge_50={"far": 0.5, "mid": 0.5, "near": 0.5},
    )


def test_aggregate_mean_and_spread():
    agg = aggregate([run("a", 0, 0.5, 0.60, 0.30), run("a", 1, 0.5, 0.70, 0.30)])
    e = agg[("a", 0.5)]
    assert e["recall_near"]["mean"] == pytest.approx(0.65)
    assert e["recall_near"]["std"] == pytest.approx(0.0707107, rel=1e-5)  # sample std of 0.6, 0.7
    assert e["recall_near"]["n"] == 2


def test_select_applies_every_condition():
    rows = [
        run("dense", 0, None, near=0.80, far=0.40, map50=0.50),
        # near recall 1.5 points below dense: fails rule 1
        run("low_near", 0, 0.5, near=0.785, far=0.40, map50=0.50, ret=(0.9, 0.9, 0.9)),
        # far recall 3 points below dense: fails rule 2
        run("low_far", 0, 0.5, near=0.80, far=0.37, map50=0.50, ret=(0.9, 0.9, 0.9)),
        # mAP 2 points below: fails rule 3
        run("low_map", 0, 0.5, near=0.80, far=0.40, map50=0.48, ret=(0.9, 0.9, 0.9)),
        # both pass; the higher minimum retention over fields wins
        run("ok_a", 0, 0.5, near=0.795, far=0.385, map50=0.495, ret=(0.30, 0.9, 0.9)),
        run("ok_b", 0, 0.5, near=0.80, far=0.39, map50=0.50, ret=(0.45, 0.6, 0.5)),
        # evaluated at 0.25 only: not considered at keep 0.5
        run("other_keep", 0, 0.25, near=0.9, far=0.9, map50=0.9, ret=(1, 1, 1)),
    ]
    winner, verdicts = select(aggregate(rows))
    assert winner == "ok_b"
    by = {v["variant"]: v for v in verdicts}
    assert not by["low_near"]["checks"]["near recall within tol"]
    assert not by["low_far"]["checks"]["far recall within tol"]
    assert not by["low_map"]["checks"]["mAP within tol"]
    assert "other_keep" not in by


def test_select_none_and_table():
    rows = [run("dense", 0, None, near=0.8, far=0.4), run("bad", 0, 0.5, near=0.5, far=0.1)]
    winner, _ = select(aggregate(rows))
    assert winner is None
    table = markdown_table(aggregate(rows), [0.5])
    assert "| dense | dense |" in table and "| bad | 0.5 | 10.0 |" in table


def test_preset_is_chosen_among_object_variants_only():

    rows = [
        run("dense", 0, None, near=0.8, far=0.4),
        run("area", 0, 0.5, near=0.8, far=0.4, ret=(0.99, 0.99, 0.99)),
        run("object g=1", 0, 0.5, near=0.8, far=0.4, ret=(0.9, 0.9, 0.9)),
        run("band + object g=1", 0, 0.5, near=0.8, far=0.4, ret=(0.95, 0.93, 0.92)),
    ]
    assert select(aggregate(rows))[0] == "area"
    assert select(aggregate(rows), eligible=preset_candidate)[0] == "band + object g=1"


def test_tiny_ablation_end_to_end_and_resume(tmp_path):
    """Dense + one variant + its band run on the tiny config; a resumed run trains nothing again."""
    from conftest import TINY_OVERRIDES

    logs = []
    settings = dict(
        config=None,
        base=TINY_OVERRIDES,
        seeds=[0],
        out=tmp_path,
        variants=["object g=0"],
        val_images=4,
        log=logs.append,
    )
    first = run_ablation(**settings)
    assert {(r["variant"], r["keep_ratio"]) for r in first["runs"]} == {
        ("dense", None),
        ("object g=0", 0.5),
        ("object g=0", 0.25),
        ("band + object g=0", 0.5),
        ("band + object g=0", 0.25),
    }
    assert (tmp_path / "ablation.md").read_text().startswith("| variant | keep |")
    logs.clear()
    again = run_ablation(**settings, resume=True)
    assert logs == ["resuming: 3 runs already in " + str(tmp_path / "runs.json")]
    assert again["runs"] == first["runs"]
