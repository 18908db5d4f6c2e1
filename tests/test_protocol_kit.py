"""The adapter protocol kit (tests/protocol_kit.py) through the real CLI (SPEC §6a): every command
runs a conforming adapter of either kind (an nn.Module and a plain object, on the reference model
and on the transformers ViT example), and every way of breaking the protocol is one exit-2 line
naming the fault, with nothing written."""

from __future__ import annotations

import importlib.util
import json

import protocol_kit as kit
import pytest

from cass_deploy.cli import main
from cass_deploy.model.adapter import ModelSource, load_model
from cass_deploy.model.protocol import check_protocol

pytest.importorskip("transformers", reason="transformers is in the dev extra: pip install -e .[dev]")
FAST_PROFILE = ["--warmup", "0", "--iters", "2"]
TUNE = ["--keep", "0.5", "--precision", "fp32", "--images", "4", "--verify-images", "2", "--warmup", "1"]
TUNE += ["--rounds", "3", "--no-progress", "--resamples", "200", "--max-recall-drop", "1.0"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("kit")
    return {name: kit.save_weights(name, d / f"{name}.pt") for name in kit.CONFORMING}


@pytest.fixture(scope="module")
def candidate(weights, tmp_path_factory):
    """An export of the conforming reference adapter: verify's candidate for the broken ones."""
    out = tmp_path_factory.mktemp("kit-export") / "e"
    assert main(["export", *_model("reference", weights["reference"]), "--out", str(out)]) == 0
    return out


def _model(name, w):
    return ["--model", kit.spec(name), "--weights", str(w)]


def test_the_plain_adapters_really_are_not_modules(weights):
    """The kit's plain adapters have no module method a command could lean on."""
    for name, kind in kit.CONFORMING.items():
        obj = load_model(ModelSource(spec=kit.spec(name), weights=weights[name])).model
        assert check_protocol(obj, name).kind.endswith(f"({kind})")
        if kind == "plain object":
            assert not any(hasattr(obj, m) for m in ("to", "eval", "train", "parameters", "named_modules", "cuda"))


@pytest.mark.parametrize("name", list(kit.CONFORMING))
def test_every_command_runs_a_conforming_adapter(name, weights, tmp_path, capsys):
    """export -> verify (saving the reference outputs) -> validate -> profile -> diagnose -> accept
    (-> tune for the plain kinds, whose with_pruner gives the dense reference)."""
    m, e = _model(name, weights[name]), tmp_path / "export"
    assert main(["export", *m, "--out", str(e)]) == 0
    ref_out = tmp_path / "ws" / "reference-outputs"
    argv = ["verify", *m, "--candidate", str(e), "--images", "2", "--json", str(tmp_path / "verify.json")]
    assert main([*argv, "--save-polygraphy", str(ref_out)]) == 0
    cand = json.loads((tmp_path / "verify.json").read_text())["candidates"][0]
    assert cand["passed"] and cand["keep_iou_mean"] > 0.99
    assert main(["validate", *m, "--images", "2", "--json", str(tmp_path / "v.json")]) == 0
    assert json.loads((tmp_path / "v.json").read_text())["result"]["by_field"]["all"]["n_gt"] > 0
    assert main(["validate", str(e), "--images", "4", "--json", str(tmp_path / "ws" / "reference.json")]) == 0
    assert main(["profile", *m, *FAST_PROFILE, "--no-dense"]) == 0
    assert "global keep 0.5" in capsys.readouterr().out
    assert main(["diagnose", *m, "--data", "synthetic", "--out", str(tmp_path / "diag"), "--json"]) == 0
    assert (tmp_path / "diag" / "diagnostics.json").is_file()
    if importlib.util.find_spec("polygraphy") is not None:  # accept reads the Polygraphy reference outputs
        argv = ["accept", str(e), "--data", "synthetic", "--reference", str(tmp_path / "ws" / "reference.json")]
        assert main([*argv, "--images", "4", "--warmup", "1", "--iters", "2", "--out", str(tmp_path / "acc")]) == 0
    if kit.CONFORMING[name] == "plain object":
        assert main(["tune", *m, "--out", str(tmp_path / "tune"), *TUNE]) == 0
        assert (tmp_path / "tune" / "recommended.yaml").is_file()


COMMANDS = {
    "export": lambda t, c: ["export", "--out", str(t / "out")],
    "verify": lambda t, c: ["verify", "--candidate", str(c), "--images", "1", "--json", str(t / "out.json")],
    "validate": lambda t, c: ["validate", "--images", "1", "--json", str(t / "out.json")],
    "profile": lambda t, c: ["profile", *FAST_PROFILE],
    "tune": lambda t, c: ["tune", "--out", str(t / "out"), *TUNE],
    "diagnose": lambda t, c: ["diagnose", "--data", "synthetic", "--out", str(t / "out")],
}


def _refused(argv, message, tmp_path, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if message in ln]
    assert rc == 2, (argv, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir()), "nothing is written on bad input"


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("broken", list(kit.BROKEN))
def test_a_broken_adapter_is_one_exit_2_line_in_every_command(broken, command, weights, candidate, tmp_path, capsys):
    argv = [
        *COMMANDS[command](tmp_path, candidate),
        "--model",
        kit.spec(broken),
        "--weights",
        str(weights["reference"]),
    ]
    _refused(argv, kit.BROKEN[broken], tmp_path, capsys)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_weights_with_missing_extra_or_misshaped_keys_in_every_command(command, weights, candidate, tmp_path, capsys):
    for path, message in kit.bad_weights(weights["reference"], tmp_path / "w").values():
        argv = [*COMMANDS[command](tmp_path, candidate), "--model", kit.spec("reference_plain"), "--weights", str(path)]
        _refused(argv, message, tmp_path, capsys)


def test_the_report_lists_every_output_the_probe_saw():
    report = check_protocol(kit.vit_plain(), "vit_plain")
    assert report.ok and report.to_dict()["ok"]
    assert report.outputs["full"]["det_boxes"] == ([2, 100, 4], "float32")
    assert report.outputs["predictor"]["keep_idx"] == ([2, 56], "int64")
    several = check_protocol(kit.wrong_k(), "x", probe=False)
    assert several.problems == ["k=25 does not match keep_ratio 0.5 of P=60 patches (ceil(0.5 * 60) = 30)"]


def _validate(tmp_path, name, weights, *extra):
    out = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.json"
    argv = ["validate", "--model", kit.spec(name), "--weights", str(weights), "--images", "4", "--score-thr", "0"]
    assert main([*argv, "--iou", "0.1", "--reference", "none", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_class_names_no_dataset_has_are_noted_and_class_map_maps_them(tiny_checkpoint, tmp_path, capsys):
    """A model whose classes are 'vehicle', 'lorry', 'coach': without a map every detection drops out
    of scoring and a note names the classes; mapped (pairs or a YAML file) it scores exactly as the
    same weights under the names car, truck, bus."""
    same = _validate(tmp_path, "reference_plain", tiny_checkpoint)
    assert same["notes"] == [] and same["result"]["n_detections"] > 0
    unmapped = _validate(tmp_path, "own_class_names", tiny_checkpoint)
    assert unmapped["result"]["n_detections"] == 0 and unmapped["result"]["by_field"]["all"]["n_matched"] == 0
    assert "model classes 'vehicle', 'lorry', 'coach' match no dataset class" in unmapped["notes"][0]
    assert "note: model classes 'vehicle', 'lorry', 'coach'" in capsys.readouterr().out
    (tmp_path / "map.yaml").write_text("vehicle: car\nlorry: truck\ncoach: bus\n")
    for cmap in ("vehicle=car,lorry=truck,coach=bus", str(tmp_path / "map.yaml")):
        mapped = _validate(tmp_path, "own_class_names", tiny_checkpoint, "--class-map", cmap)
        assert mapped["notes"] == [] and mapped["result"]["by_field"] == same["result"]["by_field"]
        assert mapped["result"]["n_detections"] == same["result"]["n_detections"]
    part = _validate(tmp_path, "own_class_names", tiny_checkpoint, "--class-map", "vehicle=car,lorry=none")
    assert "model class 'coach' matches no dataset class" in part["notes"][0]
    assert 0 < part["result"]["n_detections"] < same["result"]["n_detections"]


@pytest.mark.parametrize(
    "cmap, message",
    [
        ("van=car", "--class-map names 'van', not a class of"),
        ("vehicle=tram", "--class-map vehicle=tram: 'tram' is not a class"),
        ("vehicle", "neither NAME=CLASS pairs, a JSON object nor a JSON / YAML file"),
        ("vehicle=car,=bus", "--class-map entry '=bus' is not NAME=CLASS"),
    ],
)
def test_bad_class_maps_exit_2(cmap, message, weights, tmp_path, capsys):
    argv = ["validate", "--model", kit.spec("own_class_names"), "--weights", str(weights["reference"])]
    _refused(
        [*argv, "--images", "1", "--class-map", cmap, "--json", str(tmp_path / "out.json")], message, tmp_path, capsys
    )
