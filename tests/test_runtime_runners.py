"""Runner contract, ONNX Runtime runner, backend probes, torch-free imports, TensorRT runner."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cass_deploy.backends import probe as backends
from cass_deploy.errors import BackendUnavailable, ConfigError, InputError
from cass_deploy.export.tensorrt_build import BuildOptions, build_engine
from cass_deploy.runtime import ort_runner
from cass_deploy.runtime.base import InferenceError, Runner, TensorSpec, validate_feed
from cass_deploy.runtime.ort_runner import OrtRunner
from cass_deploy.runtime.trt_runner import TrtRunner, device_name

from runner_fixtures import K, P, distinct_scores, expected_topk, topk_model, write_engine_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return topk_model(tmp_path / "tiny.onnx")


def _feed(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    scores = distinct_scores(batch, seed=seed)
    feats = np.arange(batch * P, dtype=np.float32).reshape(batch, P) * 0.5 - 3.0
    return {"scores": scores, "feats": feats}


# -- backends ---------------------------------------------------------------------------------
def test_is_available_uses_find_spec_and_rejects_unknown_names(monkeypatch):
    assert backends.is_available("onnxruntime") is True
    assert backends.is_available("onnx") is True
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'"):
        backends.is_available("tensorflow")
    monkeypatch.setattr(backends, "_has_module", lambda module: module != "tensorrt")
    assert backends.is_available("tensorrt") is False
    assert backends.available_backends()["tensorrt"] is False


def test_require_missing_tensorrt_gives_actionable_message(monkeypatch):
    monkeypatch.setattr(backends, "_has_module", lambda module: False)
    with pytest.raises(BackendUnavailable) as err:
        backends.require("tensorrt")
    assert "cass-deploy[trt]" in str(err.value) and "docker/" in str(err.value)
    with pytest.raises(BackendUnavailable, match="the TensorRT runner needs pycuda"):
        backends.import_backend("pycuda", "the TensorRT runner")
    assert backends.trt_major_version() is None


def test_trt_major_version_parses_metadata(monkeypatch):
    monkeypatch.setattr(backends, "_has_module", lambda module: True)
    monkeypatch.setattr(backends, "package_version", lambda *dists: "10.3.0.30")
    assert backends.trt_major_version() == 10
    monkeypatch.setattr(backends, "package_version", lambda *dists: "11.1.0")
    assert backends.trt_major_version() == 11


# -- runner contract --------------------------------------------------------------------------
class _EchoRunner(Runner):
    name = "echo"

    def __init__(self):
        super().__init__()
        self.activations = 0
        self.deactivations = 0

    def _activate(self):
        self.activations += 1

    def _deactivate(self):
        self.deactivations += 1

    def _input_specs(self):
        return [TensorSpec("x", ("batch", 3), np.float32), TensorSpec("m", ("batch", None), bool)]

    def _output_specs(self):
        return [TensorSpec("y", ("batch", 3), np.float32)]

    def _infer(self, feed):
        return {"y": feed["x"] * 2}


def test_tensorspec_normalises_and_round_trips():
    spec = TensorSpec("x", (np.int64(2), "batch", None), "float16")
    assert spec.shape == (2, "batch", None) and type(spec.shape[0]) is int
    assert spec.dtype == np.float16 and spec.is_dynamic
    assert TensorSpec.from_dict(spec.to_dict()) == spec
    assert not TensorSpec("y", (1, 4), np.float32).is_dynamic


def test_runner_context_manager_and_lazy_activation():
    runner = _EchoRunner()
    with runner as r:
        assert r.is_active and runner.activations == 1
        out = r.infer({"x": np.ones((2, 3), np.float32), "m": np.ones((2, 5), bool)})
        np.testing.assert_array_equal(out["y"], np.full((2, 3), 2, np.float32))
    assert not runner.is_active and runner.deactivations == 1
    runner.infer({"x": np.ones((1, 3), np.float32), "m": np.ones((1, 1), bool)})
    assert runner.activations == 2
    runner.close()
    assert runner.deactivations == 2


@pytest.mark.parametrize(
    "feed, pattern",
    [
        ({"x": np.ones((2, 3), np.float32)}, r"missing input\(s\) 'm'"),
        ({"x": np.ones((2, 3), np.float32), "m": np.ones((2, 2), bool), "z": np.ones(1)}, r"unexpected input\(s\) 'z'"),
        ({"x": np.ones((2, 3), np.float64), "m": np.ones((2, 2), bool)}, r"dtype float64, expected float32"),
        ({"x": np.ones((2, 3, 1), np.float32), "m": np.ones((2, 2), bool)}, r"expected rank 2"),
        ({"x": np.ones((2, 4), np.float32), "m": np.ones((2, 2), bool)}, r"expected size 3 on axis 1"),
        ({"x": np.ones((0, 3), np.float32), "m": np.ones((0, 2), bool)}, r"must be >= 1"),
        ({"x": [[1.0, 2.0, 3.0]], "m": np.ones((1, 2), bool)}, r"must be a numpy array"),
        ({"x": np.ones((2, 3), np.float32), "m": np.ones((3, 2), bool)}, r"dimension 'batch' is 2 in 'x' but 3 in 'm'"),
    ],
)
def test_validate_feed_rejects_bad_feeds(feed, pattern):
    with pytest.raises(InputError, match=pattern):
        _EchoRunner().infer(feed)


def test_validate_feed_accepts_any_dynamic_size():
    specs = _EchoRunner()._input_specs()
    for b, n in ((1, 1), (7, 40)):
        validate_feed(specs, {"x": np.zeros((b, 3), np.float32), "m": np.zeros((b, n), bool)})
    with pytest.raises(InputError, match="must be a dict"):
        validate_feed(specs, [np.zeros((1, 3), np.float32)])


# -- ONNX Runtime runner ----------------------------------------------------------------------
def test_ort_runner_specs_and_outputs_match_numpy(tiny_onnx):
    with OrtRunner(tiny_onnx, providers=("cpu",), intra_op_threads=1) as runner:
        ins = {s.name: s for s in runner.input_specs()}
        outs = {s.name: s for s in runner.output_specs()}
        assert ins["scores"].shape == ("batch", P) and ins["scores"].dtype == np.float32
        assert outs["indices"].dtype == np.int64 and outs["keep_mask"].dtype == np.bool_
        assert runner.providers_in_use() == ["CPUExecutionProvider"]
        for batch in (1, 3):  # dynamic batch
            feed = _feed(batch, seed=batch)
            got = runner.infer(feed)
            want = expected_topk(feed["scores"], feed["feats"])
            assert set(got) == set(want)
            for name, value in want.items():
                assert got[name].dtype == value.dtype, name
                np.testing.assert_array_equal(got[name], value, err_msg=name)
            assert got["keep_mask"].sum(axis=1).tolist() == [K] * batch


def test_timing_sessions_spin_only_while_their_run_lasts(tmp_path):
    """Timed sessions: a fixed pool, no inter-op pool, in-order nodes, spin-waiting within a run
    and none after it (interleaved sessions would otherwise steal each other's cores); without
    threads, ONNX Runtime's defaults are left alone."""
    import onnxruntime as ort

    from cass_deploy.runtime.ort_runner import session_options

    so = session_options(2, optimised_to=str(tmp_path / "opt.onnx"), profile_to=str(tmp_path / "p"))
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (2, 1)
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"
    assert so.optimized_model_filepath == str(tmp_path / "opt.onnx") and so.enable_profiling
    default = session_options(None)
    assert default.intra_op_num_threads == ort.SessionOptions().intra_op_num_threads
    assert not default.enable_profiling
    with pytest.raises(RuntimeError, match="does not have configuration"):
        default.get_session_config_entry("session.force_spinning_stop")


def test_ort_runner_validation_errors(tiny_onnx):
    runner = OrtRunner(tiny_onnx)
    good = _feed(2)
    with pytest.raises(InputError, match="missing input.*'feats'.*unexpected input.*'feat'"):
        runner.infer({"scores": good["scores"], "feat": good["feats"]})
    with pytest.raises(InputError, match=f"expected size {P} on axis 1"):
        runner.infer({"scores": good["scores"][:, :8], "feats": good["feats"]})
    with pytest.raises(InputError, match="dtype float64, expected float32"):
        runner.infer({"scores": good["scores"].astype(np.float64), "feats": good["feats"]})
    runner.close()


def test_ort_runner_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="nothing.onnx does not exist"):
        OrtRunner(tmp_path / "nothing.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf model\xff\xfe")
    with pytest.raises(InputError, match="could not load .*corrupt.onnx"):
        OrtRunner(bad).activate()


def test_ort_runner_provider_selection(tiny_onnx, monkeypatch):

    with pytest.raises(InputError, match="unknown ONNX Runtime provider.*'gpu'"):
        OrtRunner(tiny_onnx, providers=("gpu",)).activate()
    monkeypatch.setattr(ort_runner, "available_providers", lambda: ["cpu"])
    with pytest.raises(BackendUnavailable, match=r"cuda not available.*available: cpu"):
        OrtRunner(tiny_onnx, providers=("cuda", "cpu")).activate()
    assert ort_runner.resolve_providers("cpu") == ["CPUExecutionProvider"]


def test_ort_and_trt_runners_import_no_torch(tiny_onnx):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import cass_deploy.runtime.ort_runner as o, cass_deploy.runtime.trt_runner as t
        import cass_deploy.runtime.artefacts, cass_deploy.runtime.manifest, cass_deploy.runtime.trt_engine
        import cass_deploy.export.tensorrt_build, cass_deploy.backends.limits, cass_deploy.backends.probe
        r = o.OrtRunner({str(tiny_onnx)!r})
        out = r.infer({{"scores": np.ones((1, {P}), np.float32),
                       "feats": np.ones((1, {P}), np.float32)}})
        assert out["keep_mask"].sum() == {K}
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_trt_runner_import_is_safe_and_missing_engine_is_clear(tmp_path):

    with pytest.raises(InputError, match="engine .*none.engine does not exist"):
        TrtRunner(tmp_path / "none.engine")


def test_trt_runner_without_tensorrt_is_backend_unavailable(tmp_path, monkeypatch):

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    monkeypatch.setattr(backends, "_has_module", lambda module: module not in ("tensorrt",))
    with pytest.raises(BackendUnavailable, match="cass-deploy\\[trt\\]"):
        TrtRunner(engine).activate()


# -- TensorRT (skipped without TensorRT + pycuda + GPU) ---------------------------------------
@pytest.fixture
def tiny_engine(tmp_path, tiny_onnx):

    engine = tmp_path / "tiny.engine"
    options = BuildOptions(
        precision="fp32",
        workspace_mib=256,
        profiles={"scores": ((1, P), (2, P), (4, P)), "feats": ((1, P), (2, P), (4, P))},
    )
    build_engine(tiny_onnx, engine, options)
    return engine


@pytest.mark.trt
def test_trt_runner_matches_onnxruntime(tiny_onnx, tiny_engine):

    with TrtRunner(tiny_engine) as trt_runner, OrtRunner(tiny_onnx) as ort_runner:
        specs = {s.name: s for s in trt_runner.output_specs()}
        assert specs["keep_mask"].dtype == np.bool_
        assert np.issubdtype(specs["indices"].dtype, np.integer)
        assert trt_runner.profile_ranges()["scores"] == ((1, P), (4, P))
        for batch in (1, 3):
            feed = _feed(batch, seed=10 + batch)
            got, want = trt_runner.infer(feed), ort_runner.infer(feed)
            np.testing.assert_array_equal(got["indices"], want["indices"])
            np.testing.assert_array_equal(got["keep_mask"], want["keep_mask"])
            np.testing.assert_allclose(got["values"], want["values"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(got["kept"], want["kept"], rtol=0, atol=1e-6)
        with pytest.raises(InputError, match="outside the engine's optimisation profile"):
            trt_runner.infer(_feed(5))


@pytest.mark.trt
def test_trt_runner_split_timing(tiny_engine):

    feed = _feed(2)
    with TrtRunner(tiny_engine) as runner:
        outputs, timings = runner.timed_infer(feed)
        assert timings.compute_ms > 0 and timings.total_ms >= timings.compute_ms
        runner.upload(feed)
        assert runner.infer_device_only() > 0
        again = runner.download()
        np.testing.assert_array_equal(again["indices"], outputs["indices"])
        np.testing.assert_array_equal(outputs["indices"], expected_topk(feed["scores"], feed["feats"])["indices"])


@pytest.mark.trt
def test_trt_runner_mismatched_engine_is_a_clear_error(tmp_path):

    engine = tmp_path / "foreign.engine"
    engine.write_bytes(b"ftrt" + bytes(range(256)) * 8)  # not a plan for this TensorRT
    write_engine_manifest(engine, "9.9.9", "Orin (nvgpu)")
    import tensorrt

    with pytest.raises(InputError) as err:
        TrtRunner(engine).activate()
    message = str(err.value)
    assert f"TensorRT {tensorrt.__version__} could not deserialize" in message
    assert "built with TensorRT 9.9.9 on Orin (nvgpu)" in message and "rebuild" in message


# -- the runner against numpy stand-ins for tensorrt + pycuda (runs everywhere) ---------------
def test_trt_runner_flow_with_fake_tensorrt(tmp_path, tiny_onnx, monkeypatch):
    import fake_tensorrt

    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    driver = sys.modules["pycuda.driver"]
    engine = tmp_path / "tiny.engine"
    build_engine(tiny_onnx, engine, BuildOptions(profiles={n: ((1, P), (2, P), (4, P)) for n in ("scores", "feats")}))
    assert device_name() == "Fake GPU"
    with TrtRunner(engine) as runner:
        assert driver.context_stack, "the primary context is pushed while active"
        specs = {s.name: s for s in runner.output_specs()}
        assert specs["keep_mask"].dtype == np.bool_ and specs["indices"].dtype == np.int64
        assert {s.name: s.shape for s in runner.input_specs()} == {"scores": (None, P), "feats": (None, P)}
        for batch in (3, 1, 4):  # grow, shrink, grow: buffers are reused or reallocated
            feed = _feed(batch, seed=batch)
            got, want = runner.infer(feed), expected_topk(feed["scores"], feed["feats"])
            for name in want:
                assert got[name].dtype == want[name].dtype, name
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        with pytest.raises(InputError, match="outside the engine's optimisation profile"):
            runner.infer(_feed(5))
        with pytest.raises(InputError, match="dtype float64"):
            runner.infer({k: v.astype(np.float64) for k, v in _feed(2).items()})
        outputs, timings = runner.timed_infer(_feed(2))
        assert timings.h2d_ms > 0 and timings.compute_ms > 0 and timings.d2h_ms > 0
        assert timings.to_dict()["total_ms"] == pytest.approx(timings.total_ms)
        runner.upload(_feed(2))
        assert runner.infer_device_only() > 0
        np.testing.assert_array_equal(runner.download()["indices"], outputs["indices"])
    assert not driver.context_stack and driver.freed  # buffers freed, context popped
    assert all(args == (42,) for name, args in trt.calls if name == "execute_async_v3")


def test_trt_runner_device_calls_need_an_upload(tmp_path, tiny_onnx, monkeypatch):
    import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "11.0.0")
    engine = tmp_path / "tiny.engine"
    build_engine(tiny_onnx, engine, BuildOptions(profiles={n: ((1, P), (1, P), (2, P)) for n in ("scores", "feats")}))
    runner = TrtRunner(engine)
    with pytest.raises(InferenceError, match="call upload\\(feed\\)"):
        runner.infer_device_only()
    with pytest.raises(InferenceError, match="nothing to download"):
        runner.download()
    runner.close()
