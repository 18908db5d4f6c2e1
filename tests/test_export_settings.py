"""The export settings table (cass_deploy.export.settings): CLI flags, requests and profiles from one source."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml

import cass_deploy.export.dispatch as export_dispatch
from cass_deploy.backends.limits import PRECISIONS, PRUNER_MODES, TARGETS
from cass_deploy.cli import main
from cass_deploy.errors import InputError
from cass_deploy.export.graph_facts import BUILD_SETTINGS
from cass_deploy.export.profiles import PROFILE_DIR, ExportProfile, list_profiles, load_profile
from cass_deploy.export.settings import (
    CALIB_METHODS,
    REQUIRED,
    SETTING,
    SETTINGS,
    ExportRequest,
    ProfileSettings,
    apply_profile,
    request_from,
    settings_from_args,
)
from cass_deploy.export.tensorrt_build import BuildOptions
from cass_deploy.model.interface import PARTS

# `cass-deploy export --help` at 200 columns: the hand-written parser's, plus issue 10's --model, --weights,
# --model-args, --max-dets, --raw-head and --det-score-thresh (and an optional checkpoint).
OLD_HELP = """\
usage: cass-deploy export [-h] [--model SPEC] [--weights FILE] [--model-args FILE|JSON] --out OUT [--profile \
PROFILE] [--parts {predictor,full}] [--precision {fp32,fp16,int8}] [--batch BATCH]
                          [--dynamic-batch MIN OPT MAX] [--opset OPSET] [--no-simplify] [--image-size H W] \
[--pruner {global,band,threshold}] [--keep-ratio KEEP_RATIO] [--max-dets MAX_DETS]
                          [--raw-head] [--det-score-thresh DET_SCORE_THRESH] [--no-keep-predictor-fp32] \
[--calib-data CALIB_DATA] [--calib-images CALIB_IMAGES]
                          [--calib-method {minmax,entropy,percentile}] [--target TARGET] [--engine] [--workspace \
WORKSPACE_MIB] [--timing-cache TIMING_CACHE] [--dla-core DLA_CORE]
                          [--no-gpu-fallback] [--strongly-typed] [--force]
                          [checkpoint]

export a checkpoint to ONNX (fp32/fp16/int8) and optionally a TensorRT engine, with a manifest

positional arguments:
  checkpoint            trained checkpoint (.pt), or an export directory to build its engine on this device (with \
--engine; no torch or checkpoint needed); omit it with --model

options:
  -h, --help            show this help message and exit
  --model SPEC          your own model instead of a checkpoint: package.module:factory or path/to/file.py:factory \
returning a PrunableModel (SPEC 6a); needs --weights
  --weights FILE        --model's state dict (.pt or .safetensors)
  --model-args FILE|JSON
                        keyword arguments of the --model factory: a JSON object or a JSON / YAML file
  --out OUT             output directory (model.onnx, model.engine, manifest.json)
  --profile PROFILE     deployment profile name or YAML (jetson-orin-nano, jetson-orin-nx, jetson-agx-orin, \
x86-gpu, cpu); explicit flags override it
  --parts {predictor,full}
                        predictor: importance predictor + pruner only; full: the whole pruned detector (default)
  --precision {fp32,fp16,int8}
  --batch BATCH         fixed batch size (default 1)
  --dynamic-batch MIN OPT MAX
                        symbolic batch dimension with a TensorRT optimisation profile
  --opset OPSET         ONNX opset (default 17)
  --no-simplify         skip onnxslim simplification
  --image-size H W      export at another input size (position embedding resampled)
  --pruner {global,band,threshold}
  --keep-ratio KEEP_RATIO
  --max-dets MAX_DETS   rows N of the deployed outputs num_dets / det_boxes / det_scores / det_classes (default 100)
  --raw-head            end the full export in the raw heatmap / box maps instead of the decoded detections
  --det-score-thresh DET_SCORE_THRESH
                        detections scoring below this are padding rows (zero) in the deployed outputs (default 0.01)
  --no-keep-predictor-fp32
                        also convert the predictor and pruner to fp16/int8 (default: they stay fp32)
  --calib-data CALIB_DATA
                        int8 calibration images: 'synthetic' or a dataset dir
  --calib-images CALIB_IMAGES
  --calib-method {minmax,entropy,percentile}
  --target TARGET       limits to check: onnxruntime-cpu, onnxruntime-cuda, tensorrt10.3, tensorrt10, tensorrt11,
                        tensorrt10-dla
  --engine              also build a TensorRT engine (needs TensorRT)
  --workspace WORKSPACE_MIB
                        TensorRT workspace in MiB
  --timing-cache TIMING_CACHE
                        TensorRT timing cache file (read and updated)
  --dla-core DLA_CORE   build for this DLA core (Jetson, TensorRT 10)
  --no-gpu-fallback     forbid DLA layers falling back to the GPU
  --strongly-typed      TensorRT 10: strongly typed network (TensorRT 11 always is)
  --force               overwrite an existing output directory
"""

# The request the old parser built with no flags (the old ExportRequest defaults), recorded before the
# settings table existed.
OLD_DEFAULTS = json.loads((Path(__file__).parent / "fixtures" / "export_cli" / "old_defaults.json").read_text())
# the settings issue 10 added (bring your own model, SPEC 6b outputs), with their defaults
OLD_DEFAULTS.update(model=None, weights=None, model_args=None, max_dets=100, raw_head=False, det_score_thresh=0.01)
# The fields the old ExportProfile shared with the request: (type, default); image_size had none.
OLD_PROFILE_FIELDS = dict(
    image_size=(tuple[int, int], dataclasses.MISSING),
    batch=(int, 1),
    dynamic_batch=(tuple[int, int, int] | None, None),
    precision=(str, "fp16"),
    workspace_mib=(int | None, None),
    dla_core=(int | None, None),
    gpu_fallback=(bool, True),
    keep_ratio=(float, 0.5),
    pruner_mode=(str, "global"),
    opset=(int, 18),
    simplify=(bool, True),
)
PROFILE_ONLY = {"name", "description", "target", "device", "timing_cache", "memory_bandwidth_gbs", "patch_size"}


def _words(text: str) -> list[str]:
    return text.split()  # modulo argparse's line wrapping


@pytest.fixture
def exported(monkeypatch):
    """Run ``cass-deploy export ckpt.pt --out o ARGS``; return the ExportRequest it built (no export runs)."""
    seen = []
    monkeypatch.setattr(export_dispatch, "pipeline", types.SimpleNamespace(run_export=seen.append))

    def run(*argv: str) -> ExportRequest:
        seen.clear()
        assert main(["export", "ckpt.pt", "--out", "o", *argv]) == 0
        (req,) = seen
        return req

    return run


def _fields(req) -> dict:
    return {f.name: getattr(req, f.name) for f in dataclasses.fields(req)}


# --------------------------------------------------------------------------- the CLI


#: the flag the CLI added after the settings table (issue 13; not an export setting): its usage and help words
HASH_FLAG = "[--no-verify-hash]"
HASH_HELP = (
    "--no-verify-hash use an artefact even when its SHA-256 differs from its manifest's (edited on purpose); warns"
)


def test_help_is_the_hand_written_parsers(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    words = _words(capsys.readouterr().out)
    usage_at = words.index(HASH_FLAG)
    assert words[-len(_words(HASH_HELP)) :] == _words(HASH_HELP)
    words = words[:usage_at] + words[usage_at + 1 : -len(_words(HASH_HELP))]
    assert words == _words(OLD_HELP)


def test_no_flags_give_the_old_defaults(exported):
    req = exported()
    assert _fields(req) == {"checkpoint": Path("ckpt.pt"), "out": Path("o"), **OLD_DEFAULTS}


@pytest.mark.parametrize(
    "argv, changed",
    [
        (["--parts", "predictor"], dict(parts="predictor")),
        (
            ["--precision", "int8", "--calib-images", "3", "--calib-method", "percentile", "--calib-data", "d"],
            dict(precision="int8", calib_images=3, calib_method="percentile", calib_data="d"),
        ),
        (["--batch", "4", "--opset", "19"], dict(batch=4, opset=19)),
        (["--dynamic-batch", "1", "4", "8"], dict(dynamic_batch=(1, 4, 8))),
        (
            ["--max-dets", "300", "--raw-head", "--det-score-thresh", "0.2"],
            dict(max_dets=300, raw_head=True, det_score_thresh=0.2),
        ),
        (["--image-size", "320", "640"], dict(image_size=(320, 640))),
        (["--pruner", "band", "--keep-ratio", "0.3"], dict(pruner_mode="band", keep_ratio=0.3)),
        (
            ["--no-simplify", "--no-keep-predictor-fp32", "--no-gpu-fallback"],
            dict(simplify=False, keep_predictor_fp32=False, gpu_fallback=False),
        ),
        (
            [
                "--target",
                "tensorrt10",
                "--engine",
                "--workspace",
                "512",
                "--timing-cache",
                "tc.bin",
                "--dla-core",
                "0",
                "--strongly-typed",
                "--force",
            ],
            dict(
                target="tensorrt10",
                engine=True,
                workspace_mib=512,
                timing_cache=Path("tc.bin"),
                dla_core=0,
                strongly_typed=True,
                force=True,
            ),
        ),
    ],
)
def test_each_flag_sets_its_field(exported, argv, changed):
    assert _fields(exported(*argv)) == {"checkpoint": Path("ckpt.pt"), "out": Path("o"), **OLD_DEFAULTS, **changed}


@pytest.mark.parametrize(
    "argv",
    [
        ["--precision", "fp8"],
        ["--parts", "x"],
        ["--pruner", "random"],
        ["--calib-method", "foo"],
        ["--batch", "x"],
        ["--keep-ratio", "x"],
        ["--workspace", "1.5"],
        ["--dynamic-batch", "1", "2"],
        ["--image-size", "64"],
        ["--simplify"],
        ["--gpu-fallback"],
    ],
)
def test_the_parser_rejects_what_it_did(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "ckpt.pt", "--out", "o", *argv])
    assert exc.value.code == 2 and "usage:" in capsys.readouterr().err


def test_checkpoint_and_out_are_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "ckpt.pt"])
    assert exc.value.code == 2
    assert "the following arguments are required" in capsys.readouterr().err
    # the checkpoint may be replaced by --model SPEC --weights FILE, but one of them is needed
    assert main(["export", "--out", "o"]) == 2
    assert "export needs a checkpoint or --model SPEC --weights FILE" in capsys.readouterr().err
    assert main(["export", "c.pt", "--model", "m.py:build", "--weights", "w.pt", "--out", "o"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["export", "--model", "m.py:build", "--out", "o"]) == 2
    assert "--model m.py:build needs --weights FILE" in capsys.readouterr().err
    assert main(["export", "c.pt", "--weights", "w.pt", "--out", "o"]) == 2
    assert "--weights and --model-args go with --model SPEC" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "0"], "--batch must be an integer >= 1, got 0"),
        (["--dynamic-batch", "4", "2", "8"], "--dynamic-batch needs 1 <= min <= opt <= max, got [4, 2, 8]"),
        (["--dynamic-batch", "1", "1", "1"], "--dynamic-batch [1, 1, 1] allows only batch 1; use --batch 1"),
        (["--precision", "int8", "--calib-images", "0"], "--calib-images must be >= 1 for int8, got 0"),
        (["--image-size", "0", "640"], "--image-size must be two positive integers H W, got (0, 640)"),
        (["--max-dets", "0"], "--max-dets must be an integer in 1..3840 (TensorRT's TopK limit), got 0"),
        (["--max-dets", "4000"], "--max-dets must be an integer in 1..3840 (TensorRT's TopK limit), got 4000"),
        (["--det-score-thresh", "1.5"], "--det-score-thresh must be in [0, 1), got 1.5"),
    ],
)
def test_request_checks_name_the_flag(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(export_dispatch, "pipeline", types.SimpleNamespace(run_export=lambda req: None))
    assert main(["export", "ckpt.pt", "--out", "o", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"cass-deploy export: error: {message}"


def test_library_requests_are_checked_the_same_way():
    with pytest.raises(InputError, match=r"--parts must be 'predictor' or 'full', got 'x'"):
        request_from(checkpoint=Path("c"), out=Path("o"), parts="x")
    with pytest.raises(InputError, match=r"--precision must be one of \['fp32', 'fp16', 'int8'\]"):
        ExportRequest(checkpoint=Path("c"), out=Path("o"), precision="fp8")
    assert request_from(checkpoint=Path("c"), out=Path("o"), batch=None, unknown=1).batch == 1


def test_export_directory_builds_its_engine_with_the_engine_flags(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(export_dispatch, "engine_from_export", lambda src, out, **kw: calls.append((src, out, kw)))
    assert main(["export", str(tmp_path), "--out", "o"]) == 2
    assert f"{tmp_path} is an export directory: add --engine" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", "o", "--engine"]) == 0
    assert (
        main(
            [
                "export",
                str(tmp_path),
                "--out",
                "o",
                "--engine",
                "--workspace",
                "8",
                "--timing-cache",
                "t",
                "--dla-core",
                "1",
                "--no-gpu-fallback",
                "--strongly-typed",
                "--force",
                "--batch",
                "0",
            ]
        )
        == 0
    )
    assert calls == [
        (
            tmp_path,
            Path("o"),
            {
                k: OLD_DEFAULTS[k]
                for k in ("workspace_mib", "timing_cache", "dla_core", "gpu_fallback", "strongly_typed", "force")
            },
        ),
        (
            tmp_path,
            Path("o"),
            dict(
                workspace_mib=8, timing_cache=Path("t"), dla_core=1, gpu_fallback=False, strongly_typed=True, force=True
            ),
        ),
    ]


def test_the_command_module_imports_no_torch():
    code = (
        "import sys, cass_deploy.commands.export; bad = [m for m in ('torch', 'onnxruntime', 'tensorrt') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- profiles


def test_flags_win_over_the_profile_and_the_profile_fills_the_rest(exported):
    nano = load_profile("jetson-orin-nano")
    req = exported(
        "--profile",
        "jetson-orin-nano",
        "--precision",
        "fp32",
        "--batch",
        "2",
        "--no-simplify",
        "--opset",
        "19",
        "--keep-ratio",
        "0.25",
    )
    assert (req.precision, req.batch, req.simplify, req.opset, req.keep_ratio) == ("fp32", 2, False, 19, 0.25)
    assert (req.image_size, req.workspace_mib, req.pruner_mode, req.gpu_fallback, req.dla_core) == (
        nano.image_size,
        nano.workspace_mib,
        nano.pruner_mode,
        nano.gpu_fallback,
        nano.dla_core,
    )
    assert req.profile == "jetson-orin-nano"
    x86 = exported("--profile", "x86-gpu")
    assert (x86.dynamic_batch, x86.batch, x86.precision, x86.opset) == ((1, 4, 8), 4, "fp16", 18)
    assert exported("--profile", "x86-gpu", "--dynamic-batch", "2", "2", "4").dynamic_batch == (2, 2, 4)


def test_tensorrt_profile_builds_an_engine_onnxruntime_profile_checks_the_cpu(exported):
    trt = exported("--profile", "jetson-orin-nx")
    assert (trt.engine, trt.target) == (True, None)
    assert exported("--profile", "jetson-orin-nx", "--target", "tensorrt11").target == "tensorrt11"
    cpu = exported("--profile", "cpu")
    assert (cpu.engine, cpu.target, cpu.precision, cpu.image_size) == (False, "onnxruntime-cpu", "fp32", (256, 448))
    assert exported("--profile", "cpu", "--engine").engine is True


def test_profile_from_a_yaml_path_records_its_name(exported, tmp_path):
    data = yaml.safe_load((PROFILE_DIR / "jetson-agx-orin.yaml").read_text())
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**data, "name": "lab-agx", "workspace_mib": 64}))
    req = exported("--profile", str(path))
    assert (req.profile, req.workspace_mib, req.engine) == ("lab-agx", 64, True)


def test_apply_profile_fills_only_unset_values():
    prof = load_profile("jetson-agx-orin")
    values = {
        "checkpoint": Path("c"),
        "out": Path("o"),
        "precision": "int8",
        "gpu_fallback": False,
        "engine": False,
        "batch": None,
        "profile": "path/to/agx.yaml",
    }
    merged = apply_profile(values, prof)
    assert (merged["precision"], merged["gpu_fallback"], merged["engine"]) == ("int8", False, False)
    assert (merged["batch"], merged["image_size"], merged["profile"]) == (prof.batch, prof.image_size, prof.name)
    assert values["batch"] is None  # not mutated
    assert apply_profile({"batch": 3}, None) == {"batch": 3, "profile": None}


@pytest.mark.parametrize("name", list_profiles())
def test_every_shipped_profile_makes_a_valid_request(name):
    prof = load_profile(name)
    req = request_from(**apply_profile({"checkpoint": Path("c"), "out": Path("o")}, prof))
    assert all(getattr(req, k) == getattr(prof, k) for k in OLD_PROFILE_FIELDS)
    assert req.engine is (prof.target == "tensorrt") and req.profile == name


# --------------------------------------------------------------------------- one table


def test_request_fields_are_the_table():
    fields = dataclasses.fields(ExportRequest)
    assert [f.name for f in fields] == [s.name for s in SETTINGS]
    hints = typing.get_type_hints(ExportRequest)
    for f in fields:
        assert hints[f.name] == SETTING[f.name].type
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        expected = {**OLD_DEFAULTS, "checkpoint": None}  # the checkpoint may be replaced by --model
        assert default == expected.get(f.name, dataclasses.MISSING), f.name  # out: required


def test_profile_shares_exactly_the_table_settings_with_their_types():
    assert {s.name for s in SETTINGS if s.in_profiles} == set(OLD_PROFILE_FIELDS)
    assert {f.name for f in dataclasses.fields(ProfileSettings)} == set(OLD_PROFILE_FIELDS)
    assert {f.name for f in dataclasses.fields(ExportProfile)} == set(OLD_PROFILE_FIELDS) | PROFILE_ONLY
    assert issubclass(ExportProfile, ProfileSettings)
    hints = typing.get_type_hints(ExportProfile)
    defaults = {f.name: f.default for f in dataclasses.fields(ExportProfile)}
    for name, (tp, default) in OLD_PROFILE_FIELDS.items():
        s = SETTING[name]
        assert (hints[name], defaults[name]) == (tp, default), name
        assert s.profile_type == tp and s.type in (tp, tp | None), name  # the request may leave it unset
        assert s.profile == (REQUIRED if default is dataclasses.MISSING else default), name


def test_shipped_yaml_keys_are_the_profile_fields():
    fields = {f.name for f in dataclasses.fields(ExportProfile)}
    for path in PROFILE_DIR.glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())) == fields, path.name


def test_choices_come_from_the_backend_tables():
    assert SETTING["precision"].choices is PRECISIONS
    assert SETTING["pruner_mode"].choices is PRUNER_MODES
    assert SETTING["parts"].choices is PARTS
    assert all(t in SETTING["target"].help for t in TARGETS)
    assert SETTING["calib_method"].choices == tuple(CALIB_METHODS)


def test_calib_methods_name_onnxruntime_calibrators():
    ort_quant = pytest.importorskip("onnxruntime.quantization")
    for name, member in CALIB_METHODS.items():
        assert isinstance(getattr(ort_quant.CalibrationMethod, member), ort_quant.CalibrationMethod), name


def test_engine_build_settings_are_request_settings_and_build_options():
    options = {f.name for f in dataclasses.fields(BuildOptions)}
    for name in BUILD_SETTINGS:
        assert name in SETTING and name in options, name


def test_every_flag_is_one_setting():
    flags = [s.flag for s in SETTINGS if s.flag]
    assert len(flags) == len(set(flags))
    parser_flags = [w.strip("[]") for w in _words(OLD_HELP.split("\n\n")[0]) if w.strip("[]").startswith("--")]
    assert sorted(parser_flags) == sorted(f for f in flags if f.startswith("--"))
    assert settings_from_args(types.SimpleNamespace(**{s.name: None for s in SETTINGS if s.flag})) == {
        s.name: None for s in SETTINGS if s.flag
    }
