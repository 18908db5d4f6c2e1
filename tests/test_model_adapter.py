"""--model SPEC --weights FILE [--model-args]: any PrunableModel through one loader (SPEC 6a), and the
errors a user meets on the way (exit 2, the cause named)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cass_deploy.cli import main
from cass_deploy.errors import InputError
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.settings import request_from
from cass_deploy.model.adapter import ModelSource, load_model, parse_model_args, source_from
from cass_deploy.model.checkpoint import load_checkpoint
from cass_deploy.runtime.manifest import Manifest
from cass_deploy.runtime.ort_runner import OrtRunner

ADAPTERS = Path(__file__).parent / "fixtures" / "adapters"
REF = f"{ADAPTERS / 'ref_adapter.py'}:build"


@pytest.fixture(scope="module")
def weights(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint's state dict as .safetensors and as a plain torch.save file."""
    d = tmp_path_factory.mktemp("weights")
    state = {k: v.contiguous() for k, v in load_checkpoint(tiny_checkpoint).model.state_dict().items()}
    save_file(state, str(d / "w.safetensors"))
    torch.save(state, d / "w.pt")
    return d


def test_checkpoint_and_adapter_are_the_same_model(tiny_checkpoint, weights, tmp_path):
    """Our checkpoint is one such model: through --model with its weights (safetensors, a torch
    state dict, or the checkpoint file itself) every output is identical, and the export of the
    adapter runs in ONNX Runtime to the checkpoint's torch outputs."""
    ref = load_checkpoint(tiny_checkpoint).model.eval()
    x = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = [t.numpy() for t in ref.full_module()(x)]
    for w in (weights / "w.safetensors", weights / "w.pt", tiny_checkpoint):
        loaded = load_model(ModelSource(spec=REF, weights=w))
        assert loaded.sha256 and loaded.path == w and loaded.trained_image_size == (96, 160)
        with torch.no_grad():
            got = [t.numpy() for t in loaded.model.full_module()(x)]
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
    res = run_export(request_from(model=REF, weights=weights / "w.safetensors", out=tmp_path / "e"), log=lambda s: None)
    man = Manifest.read(tmp_path / "e")
    assert man.extra["model_source"]["kind"] == "adapter" and man.extra["model_source"]["spec"].endswith(":build")
    assert man.source_checkpoint_sha256 == load_model(ModelSource(spec=REF, weights=weights / "w.safetensors")).sha256
    assert res.manifest.k == ref.k and man.grid == (6, 10)
    with OrtRunner(tmp_path / "e" / "model.onnx") as ort:
        out = ort.infer({"images": x[:1].numpy()})
    names = ref.output_names("full")
    np.testing.assert_array_equal(out["keep_idx"], expected[names.index("keep_idx")][:1])
    np.testing.assert_array_equal(out["num_dets"], expected[names.index("num_dets")][:1])
    np.testing.assert_allclose(out["det_scores"], expected[names.index("det_scores")][:1], atol=1e-5)


def test_model_args_inline_file_and_errors(tmp_path):
    assert parse_model_args('{"keep_ratio": 0.25}') == {"keep_ratio": 0.25}
    (tmp_path / "a.yaml").write_text("keep_ratio: 0.25\nimage_size: [64, 96]\n")
    assert parse_model_args(str(tmp_path / "a.yaml")) == {"keep_ratio": 0.25, "image_size": [64, 96]}
    with pytest.raises(InputError, match="is not valid JSON"):
        parse_model_args('{"keep_ratio": }')
    with pytest.raises(InputError, match="neither a JSON object nor an existing JSON / YAML file"):
        parse_model_args("nope.yaml")
    (tmp_path / "b.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="must be a mapping"):
        parse_model_args(str(tmp_path / "b.yaml"))
    assert source_from(None, REF, "w.pt", '{"keep_ratio": 0.25}').args == {"keep_ratio": 0.25}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon_here", "must be 'package.module:factory' or 'path/to/file.py:factory'"),
        ("missing_file.py:build", "file missing_file.py not found"),
        (
            f"{ADAPTERS / 'broken_import.py'}:build",
            "ModuleNotFoundError: No module named 'a_module_that_is_not_installed'",
        ),
        ("cass_deploy.no_such_module:build", "cannot import module 'cass_deploy.no_such_module'"),
        (f"{ADAPTERS / 'ref_adapter.py'}:nothing", "has no attribute 'nothing'"),
        (f"{ADAPTERS / 'ref_adapter.py'}:NOT_CALLABLE", "is a int, not a callable factory"),
        (f"{ADAPTERS / 'ref_adapter.py'}:raises", "the factory raised RuntimeError: cannot build on a Tuesday"),
        (
            f"{ADAPTERS / 'ref_adapter.py'}:not_a_model",
            "lacks image_size, patch_size, grid, k, pruner_mode, class_names, predictor_module, full_module, "
            "output_names, state_dict, load_state_dict",
        ),
        (
            f"{ADAPTERS / 'ref_adapter.py'}:half_a_model",
            "lacks k, pruner_mode, class_names, predictor_module, full_module, output_names, load_state_dict",
        ),
        (f"{ADAPTERS / 'ref_adapter.py'}:bad_geometry", "grid must be (Hp, Wp) positive ints, got (0, 6)"),
    ],
)
def test_factory_errors_exit_2_naming_the_cause(spec, message, weights, tmp_path, capsys):
    rc = main(["export", "--model", spec, "--weights", str(weights / "w.pt"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_weights_that_do_not_fit_are_listed(weights, tmp_path, capsys):
    state = torch.load(weights / "w.pt", weights_only=True)
    del state["head.cls.bias"], state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(InputError) as exc:
        load_model(ModelSource(spec=REF, weights=tmp_path / "bad.pt"))
    msg = str(exc.value)
    assert "2 missing keys: head.cls.bias, norm.weight" in msg and "1 unexpected keys: extra.weight" in msg
    # another input size: the position embedding does not fit (a shape mismatch, listed)
    with pytest.raises(InputError, match=r"shape mismatches: pos_embed: weights \[1, 60, 32\] vs model \[1, 24, 32\]"):
        load_model(ModelSource(spec=REF, weights=weights / "w.safetensors", args={"image_size": [64, 96]}))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    for junk, what in (("junk.safetensors", "not a readable .safetensors file"), ("junk.pt", "weights_only=True")):
        assert main(["validate", "--model", REF, "--weights", str(tmp_path / junk), "--images", "1"]) == 2
        assert what in capsys.readouterr().err
    assert main(["profile", "--model", REF, "--weights", str(tmp_path / "none.pt"), "--iters", "1"]) == 2
    assert f"--weights {tmp_path / 'none.pt'} not found" in capsys.readouterr().err
    with pytest.raises(InputError, match="unexpected keyword argument 'depth'"):
        load_model(ModelSource(spec=REF, weights=weights / "w.pt", args={"depth": 3}))


def test_usage_errors_of_the_model_flags(tiny_checkpoint, weights, capsys):
    w = str(weights / "w.pt")
    cases = [
        (["validate", str(tiny_checkpoint), "--model", REF, "--weights", w], "not both"),
        (["validate", "--weights", w], "--weights and --model-args go with --model SPEC"),
        (["verify", "--candidate", "x.onnx"], "verify needs --reference CHECKPOINT or --model SPEC --weights FILE"),
        (["profile"], "profile needs a model path or --model SPEC --weights FILE"),
        (["validate", "--model", REF], "needs --weights FILE"),
        (["diagnose", "--checkpoint", str(tiny_checkpoint), "--model", REF, "--weights", w], "not both"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_adapter_through_validate_profile_and_diagnose(weights, tmp_path, capsys):
    w = str(weights / "w.safetensors")
    out = tmp_path / "v.json"
    assert main(["validate", "--model", REF, "--weights", w, "--images", "4", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["result"]["pruned"] is True and data["result"]["by_field"]["all"]["n_gt"] > 0
    assert main(["profile", "--model", REF, "--weights", w, "--warmup", "0", "--iters", "2", "--no-dense"]) == 0
    assert "global keep 0.5" in capsys.readouterr().out
    d = tmp_path / "diag"
    argv = ["diagnose", "--model", REF, "--weights", w, "--data", "synthetic", "--out", str(d), "--json"]
    assert main(argv) == 0
    assert json.loads((d / "diagnostics.json").read_text())["logits"] == "checkpoint"
