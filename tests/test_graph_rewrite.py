"""export.graph_rewrite.reorder_gelu: torch's exact-GELU spelling becomes the one ONNX Runtime
fuses, and the values do not change by a single bit."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from cass_deploy.export.graph_rewrite import SQRT2, reorder_gelu
from cass_deploy.export.onnx_export import export_module


def _torch_gelu_model() -> onnx.ModelProto:
    """A Linear + exact GELU exported by torch's own exporter as the detector is (the spelling it gets)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    return export_module(net, torch.randn(4, 16), input_name="x", output_names=["y"], opset=17, what="a GELU net")


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime with every graph optimisation off: the graph's own operators, as written."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _optimized_ops(proto: onnx.ModelProto, tmp_path) -> list[str]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


def test_torch_gelu_is_rewritten_bit_exact_and_fused(tmp_path):
    proto = _torch_gelu_model()
    before = onnx.ModelProto()
    before.CopyFrom(proto)
    assert "Erf" in _optimized_ops(before, tmp_path)  # the exporter's spelling: not fused
    assert reorder_gelu(proto) == 1
    onnx.checker.check_model(proto)
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32) * 3
    assert np.array_equal(_run(before, x), _run(proto, x))  # the same float ops up to an exact factor of 2
    ops = _optimized_ops(proto, tmp_path)
    assert "Gelu" in ops and "Erf" not in ops


def _handmade(half: float, div: float = SQRT2) -> onnx.ModelProto:
    """x * (half * (1 + erf(x / div))) written node by node."""
    c = [
        helper.make_tensor("div", TensorProto.FLOAT, [], [div]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [half]),
    ]
    nodes = [
        helper.make_node("Div", ["x", "div"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["half", "a"], ["h"]),
        helper.make_node("Mul", ["x", "h"], ["y"]),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("x", "y")]
    g = helper.make_graph(nodes, "g", [vi[0]], [vi[1]], c)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("half,div", [(0.4, SQRT2), (0.5, 1.5)])
def test_other_constants_are_left_alone(half, div):
    proto = _handmade(half, div)
    before = proto.SerializeToString()
    assert reorder_gelu(proto) == 0
    assert proto.SerializeToString() == before


def test_handmade_gelu_rewritten():
    proto = _handmade(0.5)
    assert reorder_gelu(proto) == 1
    muls = [n for n in proto.graph.node if n.op_type == "Mul"]
    assert list(muls[0].input) == ["x", "a"] and list(muls[1].input) == ["h", "half"]
