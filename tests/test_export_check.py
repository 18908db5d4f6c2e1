"""``cass-deploy check`` (SPEC §7c): hand-made ONNX graphs with ops TensorRT's operator matrix marks
unsupported or restricts, per matrix version; the data's provenance; the command on a tiny export and on
a user's adapter; ``export --target tensorrt*`` refusing by node; the Polygraphy comparison."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cass_deploy.backends import trt_ops
from cass_deploy.cli import main
from cass_deploy.errors import InputError, LimitError
from cass_deploy.export import graph_check as gc
from cass_deploy.export.graph_check import ERROR, FALLBACK, RESTRICTED, check_graph, check_targets

ROOT = Path(__file__).resolve().parents[1]
DET_ADAPTER = f"{ROOT / 'tests' / 'fixtures' / 'adapters' / 'trt_unfriendly.py'}:build"
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _vi(name, dtype=F, shape=(1, 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _det_model() -> onnx.ModelProto:
    """One Det node (``my_det``): unsupported in every TensorRT matrix, fine for ONNX Runtime."""
    return _model(
        [helper.make_node("Det", ["m"], ["d"], name="my_det")], [_vi("m", shape=(2, 3, 3))], [_vi("d", shape=(2,))]
    )


def _by(verdict, level=None, what=None):
    return [f for f in verdict.findings if (level is None or f.level == level) and (what is None or f.what == what)]


# --------------------------------------------------------------------------- the data


def test_stored_matrices_carry_their_source_and_differ_where_nvidia_says():
    m101, m1015 = trt_ops.load_matrix("trt_10_1"), trt_ops.load_matrix("trt_10_15")
    assert m101.source["branch"] == "10.1-GA" and m101.source["commit"].startswith("96e781103cfc")
    assert m101.source["url"].startswith("https://github.com/onnx/onnx-tensorrt/blob/")
    assert m1015.tensorrt == "10.15" and "4266455660" in m1015.source["retrieved_via"]
    for m in (m101, m1015):  # the examples: Det / Unique / BitShift N, NonZero Y in 10.x
        assert {"Det", "Unique", "BitShift", "Compress"} <= m.unsupported and m.row("NonZero")["supported"]
        assert m.row("TopK")["rules"] == {"attribute_equals": {"sorted": 1}, "input_less_than": {"K": 3840}}
    # Slice's axes must be an initializer in 10.1, no restriction in 10.15; 10.15 adds ops 10.1 lacks
    assert m101.row("Slice")["rules"] == {"constant_inputs": {"axes": "initializer"}}
    assert "rules" not in m1015.row("Slice")
    assert m1015.row("Attention")["supported"] and m101.row("Attention") is None
    assert m101.row("ConstantOfShape")["types"][-2] == "INT64"  # the published 'INF64' typo, normalised
    assert (
        "ConstantOfShape: type 'INF64' read as INT64"
        in json.loads((trt_ops.DATA_DIR / "trt_10_1.json").read_text())["normalised"]
    )
    dla = trt_ops.dla_layers()
    assert dla["source"]["url"].startswith("https://docs.nvidia.com/")
    assert "Conv" in dla["ops"] and "TopK" not in dla["ops"]


def test_parser_and_rules_on_a_hand_written_table(tmp_path):
    md = (
        "TensorRT 10.99 supports operators in the inclusive range of opset 9 to opset 23.\n\n"
        "TensorRT supports the following ONNX data types: FLOAT32, INT64, and BOOL\n\n"
        "| Operator | Supported | Supported Types | Restrictions |\n|---|---|---|---|\n"
        "| Foo | Y | FP32, INF64 | `axes` must be an initializer. `mode` must be 2. Something odd happens\n"
        "| Bar | N |\n"
        "| Baz | Y [EXPERIMENTAL] | FP32 | `Indices` output tensor unsupported. 2D or 3D pooling only\n"
    )
    data = trt_ops.parse_operators_md(md)
    assert data["tensorrt"] == "10.99" and data["opset_range"] == [9, 23]
    assert data["data_types"] == ["FP32", "INT64", "BOOL"]
    foo = data["operators"]["Foo"]
    assert foo["types"] == ["FP32", "INT64"] and data["normalised"] == ["Foo: type 'INF64' read as INT64"]
    assert foo["rules"] == {
        "constant_inputs": {"axes": "initializer"},
        "attribute_equals": {"mode": 2},
        "unchecked": ["Something odd happens"],
    }
    assert data["operators"]["Bar"] == {"supported": False, "types": [], "restrictions": ""}
    assert data["operators"]["Baz"]["experimental"] and data["operators"]["Baz"]["rules"] == {
        "unsupported_outputs": ["Indices"],
        "input_ranks": [4, 5],
    }
    with pytest.raises(InputError, match="no operator support matrix"):
        trt_ops.parse_operators_md("# nothing here\n")
    # the regeneration script writes the same, with the source beside it, and --check compares
    (tmp_path / "ops.md").write_text(md)
    script = [sys.executable, str(ROOT / "tools" / "regen_trt_ops.py"), "--md", str(tmp_path / "ops.md")]
    args = [*script, "--name", "trt_x", "--out-dir", str(tmp_path), "--branch", "release/10.99", "--commit", "abc"]
    env = {"PYTHONPATH": str(ROOT)}
    assert subprocess.run(args, capture_output=True, text=True, env=env).returncode == 0
    stored = json.loads((tmp_path / "trt_x.json").read_text())
    assert stored["source"]["branch"] == "release/10.99" and stored["operators"]["Foo"] == foo
    assert subprocess.run([*args, "--check"], capture_output=True, env=env).returncode == 0
    (tmp_path / "ops.md").write_text(md.replace("| Bar | N |", "| Bar | Y | FP32 |"))
    assert subprocess.run([*args, "--check"], capture_output=True, env=env).returncode == 1


# --------------------------------------------------------------------------- hand-made graphs


def test_unsupported_ops_are_errors_naming_the_node_on_every_tensorrt_version_only():
    nodes = [
        helper.make_node("Det", ["m"], ["d"], name="my_det"),
        helper.make_node("Cast", ["x"], ["xi"], to=I64, name="cast"),
        helper.make_node("BitShift", ["xi", "xi"], ["s"], direction="LEFT", name="my_shift"),
        helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
    ]
    outs = [_vi("d", shape=(2,)), _vi("s", I64), _vi("nz", I64, (2, None))]
    m = _model(nodes, [_vi("m", shape=(2, 3, 3)), _vi("x")], outs)
    for v in check_targets(m, ["tensorrt10.3", "tensorrt10", "tensorrt11", "onnxruntime-cpu"]):
        errors = {(f.node, f.op) for f in v.errors()}
        if v.target == "onnxruntime-cpu":
            assert v.can_build and not v.findings
            continue
        assert errors == {("my_det", "Det"), ("my_shift", "BitShift")}, v.target
        assert not v.can_build and "marked N" in v.errors()[0].detail
        # NonZero is Y in 10.x: restricted (data-dependent shape), not refused
        assert [f.what for f in v.findings if f.op == "NonZero"] == ["data-dependent shape"]


def test_unique_is_refused_and_custom_domain_ops_need_a_plugin():
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="uniq"),
        helper.make_node("MyPlugin", ["x"], ["p"], domain="com.example", name="plug"),
    ]
    m = _model(nodes, [_vi("x")], [_vi("u", shape=(None,)), _vi("p")])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    v = check_graph(m, "tensorrt10")
    assert {(f.node, f.what) for f in v.errors()} == {("uniq", "unsupported op"), ("plug", "custom op")}
    assert check_graph(m, "onnxruntime-cpu").errors()[0].node == "plug"


def _topk(k: int, sorted_: int = 1, k_input: bool = False):
    inits = [] if k_input else [numpy_helper.from_array(np.array([k], np.int64), "k")]
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, sorted=sorted_, name="topk")]
    ins = [_vi("x", shape=(1, 5000))] + ([_vi("k", I64, (1,))] if k_input else [])  # K given at run time
    return _model(nodes, ins, [_vi("v", shape=(1, k)), _vi("i", I64, (1, k))], inits)


def test_topk_k_and_sorted_per_the_matrix():
    assert check_graph(_topk(3000), "tensorrt10").can_build
    over = check_graph(_topk(3840), "tensorrt10.3")  # the matrix says K < 3840
    assert [(f.node, f.what) for f in over.errors()] == [("topk", "K")] and "K < 3840" in over.errors()[0].detail
    unsorted = check_graph(_topk(100, sorted_=0), "tensorrt11")
    assert [(f.what, f.detail) for f in unsorted.errors()] == [("sorted", "`sorted` is 0; TopK needs 1")]
    dynamic = check_graph(_topk(100, k_input=True), "tensorrt10")
    assert dynamic.can_build and [f.what for f in _by(dynamic, RESTRICTED)] == ["K"]


def _slice_and_unsqueeze(runtime_axes: bool):
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("st", [0]), ("en", [2]))]
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax"], ["s"], name="slice")]
    if runtime_axes:  # axes = ArgMax(...) of an input: computed at run time
        nodes[:0] = [helper.make_node("ArgMax", ["a"], ["ax"], keepdims=0, name="argmax")]
    else:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax"))
    ins = [_vi("x")] + ([_vi("a", F, (1, 2))] if runtime_axes else [])
    return _model(nodes, ins, [_vi("s", shape=(1, 2))], inits)


def test_initializer_only_inputs_follow_the_version():
    ok = check_targets(_slice_and_unsqueeze(runtime_axes=False), ["tensorrt10.3", "tensorrt10"])
    assert all(v.can_build for v in ok) and ok[0].checked >= 1
    old, new = check_targets(_slice_and_unsqueeze(runtime_axes=True), ["tensorrt10.3", "tensorrt10"])
    # 10.1's matrix: Slice `axes` must be an initializer; 10.15's states no such restriction
    assert [(f.node, f.what) for f in old.errors()] == [("slice", "initializer")]
    assert "input `axes` (ax) must be an initializer" in old.errors()[0].detail
    assert new.can_build


def test_build_time_constants_may_come_from_static_shapes():
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "zero"], ["ax"], name="pick"),
        helper.make_node("Unsqueeze", ["x", "ax"], ["u"], name="unsq"),
    ]
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    static = _model(nodes, [_vi("x", shape=(0, 4))], [_vi("u", shape=(1, 0, 4))], [zero])
    dyn = _model(nodes, [_vi("x", shape=(None, 4))], [_vi("u", shape=(1, None, 4))], [zero])
    assert not _by(check_graph(static, "tensorrt10"), ERROR, "initializer")
    errs = _by(check_graph(dyn, "tensorrt10", dynamic_batch=(1, 2, 4)), ERROR, "initializer")
    assert [(f.node, f.op) for f in errs] == [("unsq", "Unsqueeze")] and "build-time constant" in errs[0].detail


def test_reduce_axes_and_types():
    nodes = [
        helper.make_node("ArgMax", ["x"], ["ax"], keepdims=0, name="argmax"),
        helper.make_node("ReduceSum", ["x", "ax"], ["r"], name="reduce"),
        helper.make_node("Add", ["d", "d"], ["dd"], name="add_double"),
        helper.make_node("Relu", ["u8"], ["ru"], name="relu_u8"),
    ]
    ins = [_vi("x"), _vi("d", TensorProto.DOUBLE), _vi("u8", TensorProto.UINT8)]
    outs = [_vi("r", shape=(1,)), _vi("dd", TensorProto.DOUBLE), _vi("ru", TensorProto.UINT8)]
    v = check_graph(_model(nodes, ins, outs), "tensorrt10")
    got = {(f.node, f.level, f.what) for f in v.findings}
    assert ("reduce", ERROR, "initializer") in got  # `axes` must be an initializer (10.15)
    assert ("add_double", RESTRICTED, "type") in got  # DOUBLE is cast down, a restriction
    assert ("relu_u8", ERROR, "type") in got  # UINT8 is not among Relu's types
    assert "UINT8 is not among Relu's supported types" in next(f.detail for f in v.findings if f.node == "relu_u8")


def test_dynamic_shapes_against_profiles_and_dla():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    batch = _model(nodes, [_vi("x", shape=("B", 3, 8, 8))], [_vi("y", shape=("B", 3, 8, 8))])
    hw = _model(nodes, [_vi("x", shape=(1, 3, "H", "W"))], [_vi("y", shape=(1, 3, "H", "W"))])
    assert [f.node for f in check_graph(batch, "tensorrt10").errors()] == ["x"]  # no profile
    assert check_graph(batch, "tensorrt10", dynamic_batch=(1, 2, 4)).can_build
    dla = check_graph(batch, "tensorrt10-dla", dynamic_batch=(1, 2, 4))
    assert "DLA has no dynamic dimensions" in dla.errors()[0].detail
    assert check_graph(batch, "tensorrt10-dla", dynamic_batch=(2, 2, 2)).can_build
    err = check_graph(hw, "tensorrt10", dynamic_batch=(1, 1, 1)).errors()
    assert [f.what for f in err] == ["dynamic shape"] and "dimensions [2, 3]" in err[0].detail


def test_dla_layers_and_gpu_fallback():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("TopK", ["f", "k"], ["v", "i"], name="topk"),
    ]
    inits = [
        numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.array([4], np.int64), "k"),
    ]
    outs = [_vi("v", shape=(1, 4)), _vi("i", I64, (1, 4))]
    m = _model(nodes, [_vi("x", shape=(1, 3, 4, 4))], outs, inits)
    v = check_graph(m, "tensorrt10-dla")
    assert v.can_build and [(f.node, f.level) for f in v.findings] == [("flat", FALLBACK), ("topk", FALLBACK)]
    off = check_graph(m, "tensorrt10-dla", gpu_fallback=False)
    assert [f.node for f in off.errors()] == ["flat", "topk"] and "GPU fallback is off" in off.errors()[0].detail
    assert not _by(check_graph(m, "tensorrt10"), FALLBACK)  # a GPU target has no fallback rows


def test_refusal_names_nodes_and_polygraphy_disagreements_are_listed(tmp_path, monkeypatch):
    m = _det_model()
    with pytest.raises(LimitError, match=r"target tensorrt10 cannot build .*my_det \(Det\): marked N"):
        gc.refuse_unbuildable(m, "tensorrt10", log=lambda s: None)

    # polygraphy inspect capability's results.txt (no-partitioning layout), from a stand-in runner
    def fake_run(cmd, **kw):
        out = Path(cmd[cmd.index("-o") + 1])
        out.mkdir(parents=True)
        (out / "results.txt").write_text(
            "===== Summary =====\nStack trace | Operator | Node   | Reason\n"
            "-------------------------------------\n"
            " | Det      | other  | In node 0 (parseGraph): UNSUPPORTED_NODE: No importer registered for op: Det\n"
        )
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(gc.shutil, "which", lambda name: "/usr/bin/polygraphy")
    rejects = gc.polygraphy_unsupported(tmp_path / "m.onnx", run=fake_run)
    assert rejects == {"other": "Det: In node 0 (parseGraph): UNSUPPORTED_NODE: No importer registered for op: Det"}
    lines = gc.disagreements(check_graph(m, "tensorrt10"), rejects)
    assert len(lines) == 2 and "parser rejects other" in lines[0] and "refuses my_det (Det" in lines[1]
    assert gc.disagreements(check_graph(m, "tensorrt10"), {"my_det": "Det: no importer"}) == []
    monkeypatch.setattr(gc.shutil, "which", lambda name: None)
    assert gc.polygraphy_unsupported(tmp_path / "m.onnx") is None


@pytest.mark.trt
def test_polygraphy_capability_agrees_on_det(tmp_path):
    """On a machine with TensorRT: TensorRT's own parser rejects the Det node the matrix refuses."""
    m = _det_model()
    onnx.save(m, tmp_path / "m.onnx")
    rejects = gc.polygraphy_unsupported(tmp_path / "m.onnx")
    assert rejects is not None and "my_det" in rejects
    assert gc.disagreements(check_graph(m, "tensorrt10"), rejects) == []


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny_export(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "export"
    assert main(["export", str(tiny_checkpoint), "--out", str(out)]) == 0
    return out


def test_check_on_the_tiny_export_passes_every_default_target(tiny_export, capsys):
    assert main(["check", str(tiny_export)]) == 0
    out = capsys.readouterr().out
    for target in ("onnxruntime-cpu", "tensorrt10.3", "tensorrt10", "tensorrt11"):
        assert f"{target}: can build" in out
    assert "10.1-GA docs/operators.md (96e781103cfc, 2024-06-17)" in out and "tensorrt10-dla" not in out
    # DLA needs fp16/int8: an fp32 export is refused for it, with the GPU-fallback nodes listed
    assert main(["check", str(tiny_export), "--target", "tensorrt10-dla", "--json", "-"]) == 1
    report = json.loads(capsys.readouterr().out)
    (dla,) = report["targets"]
    assert report["kind"] == "export" and report["facts"]["k"] == 30 and not dla["can_build"]
    assert dla["findings"][0]["what"] == "limit" and "does not run fp32" in dla["findings"][0]["detail"]
    assert {f["op"] for f in dla["findings"] if f["level"] == "gpu-fallback"} >= {"TopK", "Gather"}


def test_check_and_export_refuse_a_user_model_with_det(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    spec = importlib_build(DET_ADAPTER)
    torch.save(spec().state_dict(), weights)
    argv = ["check", "--model", DET_ADAPTER, "--weights", str(weights), "--target", "tensorrt10.3"]
    assert main([*argv, "--target", "onnxruntime-cpu"]) == 1
    out = capsys.readouterr().out
    assert "protocol: DetDetector: protocol ok" in out and "tensorrt10.3: CANNOT build (1 error(s))" in out
    assert "│ Det " in out and "onnxruntime-cpu: can build" in out
    out_dir = tmp_path / "o"
    export = ["export", "--model", DET_ADAPTER, "--weights", str(weights), "--out", str(out_dir)]
    assert main([*export, "--target", "tensorrt10"]) == 2
    err = capsys.readouterr().err
    assert "target tensorrt10 cannot build this graph" in err and "(Det): marked N" in err and not out_dir.exists()


def importlib_build(spec: str):
    file, _, name = spec.rpartition(":")
    s = importlib.util.spec_from_file_location("trt_unfriendly_for_test", file)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return getattr(mod, name)


def test_check_on_a_plain_onnx_and_bad_inputs(tmp_path, capsys):
    m = _det_model()
    onnx.save(m, tmp_path / "det.onnx")
    assert main(["check", str(tmp_path / "det.onnx"), "--target", "onnxruntime-cpu"]) == 0
    r_json = tmp_path / "r.json"
    assert main(["check", str(tmp_path / "det.onnx"), "--target", "tensorrt11", "--json", str(r_json)]) == 1
    report = json.loads(r_json.read_text())
    assert report["kind"] == "onnx" and report["targets"][0]["findings"][0]["node"] == "my_det"
    assert "no 11.x operator matrix" in report["notes"][0]
    capsys.readouterr()
    (tmp_path / "junk.onnx").write_text("not a model")
    for argv, needle in (
        (["check", str(tmp_path / "nope.onnx")], "nope.onnx does not exist"),
        (["check", str(tmp_path / "junk.onnx")], "junk.onnx"),
        (["check"], "check needs one of"),
        (["check", str(tmp_path / "det.onnx"), "--model", "x.py:build", "--weights", "w.pt"], "check needs one of"),
        (["check", str(tmp_path / "det.onnx"), "--target", "tensorrt9"], "tensorrt9"),
    ):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        assert code == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (argv, err)


def test_int32_bias_dequantize_is_refused_as_in_onnxruntime_int8_exports():
    """ORT's quantize_static stores biases as INT32 behind a DequantizeLinear; the 10.x matrices list
    INT8 / FP8 / FP4 / INT4 only for it (TensorRT's parser rejects it: onnx-tensorrt#850)."""
    bias = numpy_helper.from_array(np.array([7, -3], np.int32), "b_q")
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "b_s")
    node = helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="bias_dq")
    m = _model(
        [node, helper.make_node("Add", ["x", "b"], ["y"], name="add")],
        [_vi("x", shape=(1, 2))],
        [_vi("y", shape=(1, 2))],
        [bias, scale],
    )
    for v in check_targets(m, ["tensorrt10.3", "tensorrt10"]):
        assert [(f.node, f.what) for f in v.errors()] == [("bias_dq", "type")]
        assert "INT32 is not among DequantizeLinear's supported types" in v.errors()[0].detail
