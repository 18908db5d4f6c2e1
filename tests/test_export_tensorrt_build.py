"""TensorRT build rules (pure plan_build), ONNX inspection, and real builds where TensorRT runs."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from cass_deploy.backends import probe as backends
from cass_deploy.errors import BackendUnavailable, ExportError, InputError, LimitError
from cass_deploy.export.tensorrt_build import (
    TRTEXEC_ARGS,
    TRTEXEC_SECTIONS,
    BuildOptions,
    BuildPlan,
    build_engine,
    enumerate_plans,
    inspect_onnx,
    plan_build,
    plan_settings,
    trtexec_for,
)
from cass_deploy.runtime.trt_engine import engine_mismatch_message, load_engine

from runner_fixtures import P, fp16_model, qdq_model, topk_model, write_engine_manifest

DYN = {"scores": ((1, P), (2, P), (4, P)), "feats": ((1, P), (2, P), (4, P))}
FIXED = {"scores": ((2, P), (2, P), (2, P))}


def _plan(major, has_qdq=False, onnx_fp16=False, **kw):
    return plan_build(major, BuildOptions(**kw), has_qdq, onnx_fp16)


# -- BuildOptions -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"precision": "bf16"}, "precision must be one of"),
        ({"workspace_mib": 0}, "workspace_mib must be a positive integer"),
        ({"dla_core": -1}, "dla_core must be a non-negative integer"),
        ({"builder_optimization_level": 6}, "builder_optimization_level must be 0..5"),
        ({"profiles": {"x": ((1, 4), (2, 4))}}, "must be \\(min, opt, max\\)"),
        ({"profiles": {"x": ((1, 4), (2, 4), (1, 4))}}, "1 <= min <= opt <= max"),
        ({"profiles": {"x": ((1, 4), (2, 4, 1), (4, 4))}}, "ranks differ"),
    ],
)
def test_build_options_validation(kw, pattern):
    with pytest.raises(InputError, match=pattern):
        BuildOptions(**kw)


def test_build_options_normalise():
    opts = BuildOptions(timing_cache="t.cache", profiles={"x": ([1, 4], [2, 4], [4, 4])})
    assert opts.timing_cache == Path("t.cache")
    assert opts.profiles == {"x": ((1, 4), (2, 4), (4, 4))} and opts.has_dynamic_profile
    assert not BuildOptions(profiles=FIXED).has_dynamic_profile


# -- TensorRT 10 ------------------------------------------------------------------------------
def test_trt10_weakly_typed_precision_flags():
    p = _plan(10)
    assert (p.strongly_typed, p.network_flags, p.builder_flags, p.default_device_type) == (False, (), (), "GPU")
    assert _plan(10, precision="fp16").builder_flags == ("FP16",)
    assert _plan(10, precision="fp16", onnx_fp16=True).builder_flags == ("FP16",)
    assert _plan(10, has_qdq=True, precision="int8").builder_flags == ("INT8",)
    assert _plan(10, has_qdq=True, onnx_fp16=True, precision="int8").builder_flags == ("INT8", "FP16")


def test_trt10_strongly_typed_uses_network_flag_only():
    p = _plan(10, onnx_fp16=True, precision="fp16", strongly_typed=True)
    assert (p.strongly_typed, p.network_flags, p.builder_flags) == (True, ("STRONGLY_TYPED",), ())
    p = _plan(10, has_qdq=True, precision="int8", strongly_typed=True)
    assert (p.network_flags, p.builder_flags) == (("STRONGLY_TYPED",), ())
    with pytest.raises(LimitError, match="Export with --precision fp16.*without --strongly-typed"):
        _plan(10, precision="fp16", strongly_typed=True)


def test_int8_requires_qdq_and_precisions_are_never_changed():
    for major in (10, 11):
        with pytest.raises(LimitError, match="explicit Q/DQ"):
            _plan(major, precision="int8")
        with pytest.raises(LimitError, match="Q/DQ \\(int8\\) nodes but fp16 was requested"):
            _plan(major, has_qdq=True, onnx_fp16=True, precision="fp16")
        with pytest.raises(LimitError, match="carries fp16 tensors but fp32 was requested"):
            _plan(major, onnx_fp16=True, precision="fp32")


# -- TensorRT 11 ------------------------------------------------------------------------------
def test_trt11_is_always_strongly_typed_without_flags():
    for kw in ({}, {"strongly_typed": True}):
        p = _plan(11, **kw)
        assert (p.strongly_typed, p.network_flags, p.builder_flags) == (True, (), ())
    assert _plan(11, onnx_fp16=True, precision="fp16").builder_flags == ()
    assert _plan(11, has_qdq=True, precision="int8").builder_flags == ()
    assert _plan(12, onnx_fp16=True, precision="fp16").strongly_typed  # later majors: same rules
    with pytest.raises(LimitError, match="always strongly typed"):
        _plan(11, strongly_typed=False)


def test_trt11_fp16_needs_an_fp16_onnx():
    with pytest.raises(LimitError) as err:
        _plan(11, precision="fp16")
    assert "ONNX is fp32" in str(err.value) and "--precision fp16" in str(err.value)


def test_old_tensorrt_is_refused():
    with pytest.raises(LimitError, match="TensorRT 8.x is not supported"):
        _plan(8)


# -- DLA --------------------------------------------------------------------------------------
def test_dla_plan_on_trt10():
    p = _plan(10, precision="fp16", dla_core=0, profiles=FIXED)
    assert (p.builder_flags, p.default_device_type, p.dla_core) == (("FP16", "GPU_FALLBACK"), "DLA", 0)
    p = _plan(10, has_qdq=True, precision="int8", dla_core=1)
    assert (p.builder_flags, p.default_device_type, p.dla_core) == (("INT8", "GPU_FALLBACK"), "DLA", 1)


@pytest.mark.parametrize(
    "major, kw, pattern",
    [
        (11, {"precision": "fp16"}, "DLA is not available with TensorRT 11"),
        (10, {"precision": "fp32"}, "DLA computes in fp16 or int8 only"),
        (10, {"precision": "fp16", "gpu_fallback": False}, "TopK and Gather/Scatter are not DLA"),
        (10, {"precision": "fp16", "profiles": DYN}, "DLA has no dynamic dimensions"),
        (10, {"precision": "fp16", "strongly_typed": True}, "drop --strongly-typed"),
        (10, {"precision": "fp16", "hardware_compatible": True}, "GPU-only"),
    ],
)
def test_dla_refusals(major, kw, pattern):
    with pytest.raises(LimitError, match=pattern):
        _plan(major, onnx_fp16=True, dla_core=0, **kw)


def test_compatibility_flags():
    p = _plan(10, version_compatible=True, hardware_compatible=True)
    assert p.builder_flags == ("VERSION_COMPATIBLE",)
    assert p.hardware_compatibility_level == "AMPERE_PLUS"
    assert p.to_dict()["builder_flags"] == ["VERSION_COMPATIBLE"]


# -- ONNX inspection and trtexec --------------------------------------------------------------
def test_inspect_onnx(tmp_path):
    facts = inspect_onnx(topk_model(tmp_path / "t.onnx"))
    assert not facts.has_qdq and not facts.is_fp16
    assert {"TopK", "GatherElements", "ScatterElements"} <= facts.op_types
    assert facts.inputs == (("scores", ("batch", P)), ("feats", ("batch", P)))
    assert inspect_onnx(fp16_model(tmp_path / "h.onnx")).is_fp16
    q = inspect_onnx(qdq_model(tmp_path / "q.onnx"))
    assert q.has_qdq and not q.is_fp16
    with pytest.raises(InputError, match="does not exist"):
        inspect_onnx(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00junk")
    with pytest.raises(InputError, match="cannot read ONNX model"):
        inspect_onnx(tmp_path / "junk.onnx")


def test_trtexec_for_matches_the_plan():
    opts = BuildOptions(precision="fp16", workspace_mib=1024, profiles=DYN)
    cmd = trtexec_for("m.onnx", "m.engine", opts, plan_build(10, opts, False, False))
    assert cmd == (
        "trtexec --onnx=m.onnx --saveEngine=m.engine --fp16 "
        "--memPoolSize=workspace:1024M --minShapes=scores:1x16,feats:1x16 "
        "--optShapes=scores:2x16,feats:2x16 --maxShapes=scores:4x16,feats:4x16"
    )
    opts = BuildOptions(precision="int8", dla_core=0, profiles=FIXED)
    cmd = trtexec_for("m.onnx", "m.engine", opts, plan_build(10, opts, True, True))
    assert " --int8 --fp16 " in cmd and cmd.endswith("--useDLACore=0 --allowGPUFallback")
    opts = BuildOptions(precision="fp16")
    assert "--fp16" not in trtexec_for("m.onnx", "m.engine", opts, plan_build(11, opts, False, True))


def test_engine_mismatch_message_names_both_versions(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    plain = engine_mismatch_message(engine, "10.3.0")
    assert "TensorRT 10.3.0 could not deserialize" in plain and "rebuild" in plain
    write_engine_manifest(engine, "10.7.0", "NVIDIA H100")
    msg = engine_mismatch_message(engine, "10.3.0", ["[error] magic tag does not match"])
    assert "built with TensorRT 10.7.0 on NVIDIA H100" in msg
    assert "magic tag does not match" in msg


def test_build_engine_refuses_before_touching_tensorrt(tmp_path, monkeypatch):

    onnx_path = topk_model(tmp_path / "t.onnx")
    existing = tmp_path / "old.engine"
    existing.write_bytes(b"old")
    with pytest.raises(InputError, match="already exists; pass --force"):
        build_engine(onnx_path, existing, BuildOptions())
    assert existing.read_bytes() == b"old"
    monkeypatch.setattr(backends, "_has_module", lambda module: module != "tensorrt")
    with pytest.raises(BackendUnavailable, match="cass-deploy\\[trt\\]"):
        build_engine(onnx_path, tmp_path / "new.engine", BuildOptions())
    assert not (tmp_path / "new.engine").exists()
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        load_engine(existing)


# -- real builds (skipped without TensorRT + pycuda + GPU) -------------------------------------
@pytest.mark.trt
def test_build_engine_writes_plain_engine_and_timing_cache(tmp_path):
    import tensorrt as trt

    onnx_path = topk_model(tmp_path / "t.onnx")
    engine_path, cache = tmp_path / "t.engine", tmp_path / "timing.cache"
    opts = BuildOptions(precision="fp32", workspace_mib=256, timing_cache=cache, profiles=DYN)
    result = build_engine(onnx_path, engine_path, opts)
    assert engine_path.stat().st_size > 0 and cache.stat().st_size > 0
    assert result.trt_version == trt.__version__
    assert result.plan.strongly_typed == (int(trt.__version__.split(".")[0]) >= 11)
    loaded = load_engine(engine_path)
    names = {loaded.engine.get_tensor_name(i) for i in range(loaded.engine.num_io_tensors)}
    assert names == {"scores", "feats", "values", "indices", "kept", "keep_mask"}
    with pytest.raises(InputError, match="already exists"):
        build_engine(onnx_path, engine_path, opts)
    build_engine(onnx_path, engine_path, opts, force=True)  # reuses the timing cache
    assert not list(tmp_path.glob(".t.engine.*"))


@pytest.mark.trt
def test_build_engine_requires_profiles_for_dynamic_inputs(tmp_path):

    onnx_path = topk_model(tmp_path / "t.onnx")
    with pytest.raises(InputError, match="dynamic input\\(s\\) need min/opt/max shapes"):
        build_engine(onnx_path, tmp_path / "t.engine", BuildOptions())
    with pytest.raises(InputError, match="does not have as input"):
        build_engine(
            onnx_path, tmp_path / "t.engine", BuildOptions(profiles={**DYN, "images": ((1, 3), (1, 3), (1, 3))})
        )
    assert not (tmp_path / "t.engine").exists()


@pytest.mark.trt
def test_load_engine_rejects_foreign_bytes(tmp_path):

    bad = tmp_path / "foreign.engine"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match="could not deserialize the engine"):
        load_engine(bad)


# -- the build path against a recording stand-in for tensorrt (runs everywhere) ---------------
def _calls(trt, what):
    return [args for name, args in trt.calls if name == what]


def test_build_engine_trt10_fp16_calls_the_api_as_planned(tmp_path, monkeypatch):
    import fake_tensorrt

    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    onnx_path = topk_model(tmp_path / "t.onnx")
    engine, cache = tmp_path / "t.engine", tmp_path / "timing.cache"
    opts = BuildOptions(precision="fp16", workspace_mib=256, timing_cache=cache, profiles=DYN)
    logged = []
    result = build_engine(onnx_path, engine, opts, log=logged.append)
    assert _calls(trt, "create_network") == [(0,)]
    assert _calls(trt, "set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 256 << 20)]
    assert _calls(trt, "set_flag") == [(trt.BuilderFlag.FP16,)]
    assert _calls(trt, "set_shape") == [("scores", (1, P), (2, P), (4, P)), ("feats", (1, P), (2, P), (4, P))]
    assert _calls(trt, "create_timing_cache") == [(b"",)]
    assert engine.read_bytes().startswith(fake_tensorrt.PLAN_MAGIC)  # plain plan bytes
    assert cache.read_bytes() == b"CACHE+"
    assert result.trt_version == "10.3.0" and result.plan.builder_flags == ("FP16",)
    assert "--fp16" in result.trtexec and "--timingCacheFile=" in result.trtexec
    assert load_engine(engine).engine.num_io_tensors == 6
    trt.calls.clear()
    build_engine(onnx_path, engine, opts, force=True)  # reuses the saved timing cache
    assert _calls(trt, "create_timing_cache") == [(b"CACHE+",)]
    assert cache.read_bytes() == b"CACHE++"


def test_build_engine_network_flags_by_version(tmp_path, monkeypatch):
    import fake_tensorrt

    onnx_path = topk_model(tmp_path / "t.onnx")
    trt = fake_tensorrt.install(monkeypatch, "10.8.0")
    build_engine(onnx_path, tmp_path / "a.engine", BuildOptions(strongly_typed=True, profiles=DYN))
    assert _calls(trt, "create_network") == [(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED),)]
    assert _calls(trt, "set_flag") == []
    trt = fake_tensorrt.install(monkeypatch, "11.1.0")  # no FP16/INT8 flags exist here
    result = build_engine(onnx_path, tmp_path / "b.engine", BuildOptions(profiles=DYN))
    assert _calls(trt, "create_network") == [(0,)] and result.plan.strongly_typed
    with pytest.raises(LimitError, match="ONNX is fp32"):
        build_engine(onnx_path, tmp_path / "c.engine", BuildOptions(precision="fp16"))
    assert len(_calls(trt, "create_network")) == 1  # refused before any TensorRT call
    assert not (tmp_path / "c.engine").exists()


def test_build_engine_reports_parser_and_builder_errors(tmp_path, monkeypatch):
    import onnx
    from onnx import helper

    import fake_tensorrt
    from runner_fixtures import topk_graph_model

    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    model = topk_graph_model()
    model.graph.node.append(helper.make_node("NonZero", ["scores"], ["nz"]))
    onnx.save(model, str(tmp_path / "nz.onnx"))
    with pytest.raises(ExportError, match="could not parse .*nz.onnx:\n  In node 3 \\(NonZero\\)"):
        build_engine(tmp_path / "nz.onnx", tmp_path / "nz.engine", BuildOptions(profiles=DYN))
    trt.fail_build = True
    with pytest.raises(ExportError, match="(?s)failed to build an engine .*Error Code 4"):
        build_engine(topk_model(tmp_path / "t.onnx"), tmp_path / "t.engine", BuildOptions(profiles=DYN))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nz.onnx", "t.onnx"]  # nothing left


def test_build_engine_checks_dla_cores_and_profiles(tmp_path, monkeypatch):
    import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "10.3.0")
    onnx_path = topk_model(tmp_path / "t.onnx")
    fixed = {n: ((2, P), (2, P), (2, P)) for n in ("scores", "feats")}
    with pytest.raises(LimitError, match="DLA core 0 requested but this device has 0"):
        build_engine(onnx_path, tmp_path / "d.engine", BuildOptions(precision="fp16", dla_core=0, profiles=fixed))
    with pytest.raises(InputError, match="need min/opt/max shapes: feats"):
        build_engine(onnx_path, tmp_path / "e.engine", BuildOptions(profiles={"scores": DYN["scores"]}))
    with pytest.raises(InputError, match="does not fit its declared shape"):
        build_engine(
            onnx_path, tmp_path / "e.engine", BuildOptions(profiles={n: ((1, 8), (1, 8), (1, 8)) for n in DYN})
        )


def test_load_engine_mismatch_with_fake_runtime(tmp_path, monkeypatch):
    import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "10.3.0")
    bad = tmp_path / "old.engine"
    bad.write_bytes(b"ptrt-8.6-plan")
    with pytest.raises(InputError) as err:
        load_engine(bad)
    assert "TensorRT 10.3.0 could not deserialize" in str(err.value)
    assert "magic tag does not match" in str(err.value)


# -- trtexec --------------------------------------------------------------------------------
def _trtexec(major=10, has_qdq=False, onnx_fp16=False, onnx="m.onnx", engine="m.engine", **kw):
    opts = BuildOptions(**kw)
    return trtexec_for(onnx, engine, opts, plan_build(major, opts, has_qdq, onnx_fp16))


def test_trtexec_tensorrt10_fp16_dynamic():
    cmd = _trtexec(
        onnx="out/model.onnx",
        engine="out/model.engine",
        precision="fp16",
        workspace_mib=2048,
        timing_cache="cache/timing.cache",
        profiles={"images": ((1, 3, 720, 1280), (2, 3, 720, 1280), (4, 3, 720, 1280))},
    )
    assert cmd == (
        "trtexec --onnx=out/model.onnx --saveEngine=out/model.engine --fp16 "
        "--memPoolSize=workspace:2048M --timingCacheFile=cache/timing.cache "
        "--minShapes=images:1x3x720x1280 --optShapes=images:2x3x720x1280 "
        "--maxShapes=images:4x3x720x1280"
    )


def test_trtexec_precision_flags_by_version():
    assert _trtexec() == "trtexec --onnx=m.onnx --saveEngine=m.engine"
    assert _trtexec(has_qdq=True, precision="int8").endswith(" --int8")
    assert _trtexec(has_qdq=True, onnx_fp16=True, precision="int8").endswith(" --int8 --fp16")
    strong = _trtexec(onnx_fp16=True, precision="fp16", strongly_typed=True)
    assert strong.endswith(" --stronglyTyped") and "--fp16" not in strong
    for precision in ("fp16", "int8"):  # TensorRT 11: no precision flags, always strongly typed
        assert (
            _trtexec(11, has_qdq=precision == "int8", onnx_fp16=True, precision=precision)
            == "trtexec --onnx=m.onnx --saveEngine=m.engine"
        )


def test_trtexec_dla_quoting_and_extras():
    # plan_build refuses DLA + hardware compatibility, so this plan is written out by hand to put
    # every device and compatibility argument on one line
    opts = BuildOptions(
        precision="fp16",
        dla_core=0,
        profiles={"input:0": ((1, 4), (1, 4), (1, 4)), "mask": ((1, 2), (1, 2), (1, 2))},
        builder_optimization_level=5,
        version_compatible=True,
    )
    plan = BuildPlan(
        trt_major=10,
        strongly_typed=False,
        network_flags=(),
        builder_flags=("FP16", "GPU_FALLBACK", "VERSION_COMPATIBLE"),
        default_device_type="DLA",
        dla_core=0,
        hardware_compatibility_level="AMPERE_PLUS",
    )
    args = shlex.split(trtexec_for("my models/m.onnx", "m.engine", opts, plan))
    assert args[1] == "--onnx=my models/m.onnx"
    assert "--minShapes='input:0':1x4,mask:1x2" in args
    assert args[-5:] == [
        "--useDLACore=0",
        "--allowGPUFallback",
        "--builderOptimizationLevel=5",
        "--versionCompatible",
        "--hardwareCompatibilityLevel=ampere+",
    ]
    with pytest.raises(InputError, match="must be \\(min, opt, max\\) shapes"):
        BuildOptions(profiles={"x": ((1, 4),)})  # shapes are validated with the options


def _all_plans():
    """Every plan plan_build makes: precision x ONNX x strongly typed x DLA x TRT 10/11 x compat."""
    return [(opts, plan) for major in (10, 11) for opts, plan in enumerate_plans(major)]


def test_every_plan_setting_has_its_trtexec_argument():
    import fake_tensorrt

    plans = _all_plans()
    seen = set()
    for opts, plan in plans:
        args = shlex.split(trtexec_for("m.onnx", "m.engine", opts, plan))
        expected = []
        for key in plan_settings(plan):
            assert key in TRTEXEC_ARGS, f"{key} of {plan} has no trtexec argument"
            expected.append(TRTEXEC_ARGS[key][1].format(dla_core=plan.dla_core))
            seen.add(key)
        # the plan's settings are on the line, and nothing else beyond what the options give
        assert sorted(a for a in args[3:] if not a.startswith(("--minShapes", "--optShapes", "--maxShapes"))) == sorted(
            expected
        )
        trt = fake_tensorrt.make_fake_tensorrt(f"{plan.trt_major}.3.0")  # the names exist there
        for field_name, enum in (
            ("network_flags", trt.NetworkDefinitionCreationFlag),
            ("builder_flags", trt.BuilderFlag),
        ):
            for name in getattr(plan, field_name):
                assert hasattr(enum, name), (plan.trt_major, name)
    # the grid reaches every row of the table (no dead entries) and both versions
    assert seen == set(TRTEXEC_ARGS)
    assert {plan.trt_major for _, plan in plans} == {10, 11}
    assert any(plan.dla_core == 1 for _, plan in plans)
    assert {section for section, _ in TRTEXEC_ARGS.values()} == set(TRTEXEC_SECTIONS)


def test_trtexec_refuses_a_plan_setting_it_cannot_spell():
    plan = BuildPlan(trt_major=10, strongly_typed=False, network_flags=(), builder_flags=("TF32",))
    with pytest.raises(ExportError, match="no trtexec argument for builder_flags TF32"):
        trtexec_for("m.onnx", "m.engine", BuildOptions(), plan)
