"""Tiny hand-built ONNX graphs for the runner / export tests (onnx.helper only, no torch).

``topk_model``: a pruner in miniature -- TopK over scores, GatherElements of features at the
kept indices, and a boolean keep mask built by ScatterElements + Greater. Dynamic batch.
``write_engine_manifest``: the manifest beside an engine that names the TensorRT and device it was
built with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cass_deploy.runtime.manifest import build_manifest

P = 16
K = 4


def topk_graph_model(p: int = P, k: int = K, batch: str | int = "batch", opset: int = 17) -> onnx.ModelProto:
    """scores, feats: float32 [B, P] -> values [B,k], indices int64 [B,k], kept [B,k],
    keep_mask bool [B,P]."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inits = [
        numpy_helper.from_array(np.array([k], dtype=np.int64), "k"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
    ]
    nodes = [
        helper.make_node("TopK", ["scores", "k"], ["values", "indices"], axis=1),
        helper.make_node("GatherElements", ["feats", "indices"], ["kept"], axis=1),
        helper.make_node("Mul", ["scores", "zero"], ["zeros"]),
        helper.make_node("Mul", ["values", "zero"], ["vzeros"]),
        helper.make_node("Add", ["vzeros", "one"], ["ones"]),
        helper.make_node("ScatterElements", ["zeros", "indices", "ones"], ["mask_f"], axis=1),
        helper.make_node("Greater", ["mask_f", "half"], ["keep_mask"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_pruner",
        [
            helper.make_tensor_value_info("scores", f32, [batch, p]),
            helper.make_tensor_value_info("feats", f32, [batch, p]),
        ],
        [
            helper.make_tensor_value_info("values", f32, [batch, k]),
            helper.make_tensor_value_info("indices", i64, [batch, k]),
            helper.make_tensor_value_info("kept", f32, [batch, k]),
            helper.make_tensor_value_info("keep_mask", TensorProto.BOOL, [batch, p]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def topk_model(path: Path, **kwargs) -> Path:
    onnx.save(topk_graph_model(**kwargs), str(path))
    return path


def expected_topk(scores: np.ndarray, feats: np.ndarray, k: int = K) -> dict[str, np.ndarray]:
    """Reference outputs computed with numpy (scores must have no ties)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return {
        "values": np.take_along_axis(scores, order, axis=1),
        "indices": order.astype(np.int64),
        "kept": np.take_along_axis(feats, order, axis=1),
        "keep_mask": mask,
    }


def distinct_scores(batch: int, p: int = P, seed: int = 0) -> np.ndarray:
    """float32 [batch, p] with no ties inside a row."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(p) for _ in range(batch)]).astype(np.float32) / p


def fp16_model(path: Path) -> Path:
    """x float32 [1, 4] -> Cast(fp16) -> Relu -> Cast(fp32)."""
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def qdq_model(path: Path) -> Path:
    """x float32 [1, 4] -> QuantizeLinear -> DequantizeLinear -> y (explicit int8)."""
    inits = [
        numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_engine_manifest(engine: Path, tensorrt: str, device: str) -> None:
    """A manifest in ``engine``'s folder: only the engine, built with TensorRT ``tensorrt`` on ``device``."""
    manifest = build_manifest(
        artefacts={"engine": engine},
        inputs=[],
        outputs=[],
        precision="fp16",
        versions={"tensorrt": tensorrt},
        extra={"tensorrt": {"device": device}},
    )
    manifest.write(engine.parent)
