"""profiling.parts: the parts of a pruned graph (before the pruner, gather / scatter, pruned
blocks, after scatter-back), their MACs and their ONNX Runtime time, on the reference detector and
on a model this project did not write (the transformers ViT example)."""

import collections

import onnx
import pytest
import torch
from fixtures.examples import load_example

from cass_deploy.export.onnx_export import export_part
from cass_deploy.model.detector import PrunedDetector
from cass_deploy.profiling.latency import Measurement, part_notes
from cass_deploy.profiling.macs import count_macs
from cass_deploy.profiling.parts import PARTS, node_key, node_parts, share_lines, time_by_part
from cass_deploy.profiling.timing import LatencyStats

from conftest import tiny_model_config


def _export(tmp_path, late_depth: int = 2, **pruner) -> tuple[onnx.ModelProto, str]:
    torch.manual_seed(0)
    model = PrunedDetector(tiny_model_config(late_depth=late_depth, **pruner)).eval()
    proto = export_part(model, "full", batch=1, simplify=True)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    return proto, str(path)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("parts"), mode="band", keep_ratio=0.5)


def test_parts_of_the_reference_graph(pruned):
    proto, _ = pruned
    parts = node_parts(proto.graph)
    ops = collections.defaultdict(set)
    for node in proto.graph.node:
        ops[parts[node_key(node)]].add(node.op_type)
    assert set(parts.values()) == set(PARTS)
    assert {"GatherElements", "ScatterElements"} <= ops["gather / scatter"]
    assert "MatMul" not in ops["gather / scatter"] and "Conv" not in ops["gather / scatter"]
    assert "Softmax" in ops["pruned blocks"]  # attention on the kept tokens
    assert "TopK" in ops["after scatter-back"]  # the in-graph decode
    assert "ConvTranspose" in ops["after scatter-back"]  # the head's stride-4 up-sampling


def test_macs_by_part_add_up_and_follow_the_kept_tokens(tmp_path, pruned):
    one = count_macs(pruned[0])
    assert sum(one.by_part.values()) == one.total and one.by_part["gather / scatter"] == 0
    deeper = count_macs(_export(tmp_path, late_depth=3, mode="band", keep_ratio=0.5)[0])
    # one more late block adds MACs to the pruned blocks only
    assert deeper.by_part["pruned blocks"] > one.by_part["pruned blocks"]
    for p in ("before the pruner", "after scatter-back"):
        assert deeper.by_part[p] == one.by_part[p]


def test_a_dense_graph_has_no_parts(tmp_path):
    proto, path = _export(tmp_path, mode="none")
    assert node_parts(proto.graph) == {} and count_macs(proto).by_part == {}
    assert time_by_part(path, image_size=(64, 96)) is None


def test_time_by_part_covers_every_kernel(pruned):
    _, path = pruned
    t = time_by_part(path, image_size=(64, 96), threads=1, runs=3, warmup=1)
    assert list(t)[:4] == list(PARTS) and t.get("not attributed", 0.0) == 0.0
    assert all(t[p] > 0 for p in PARTS)


def test_part_notes_print_the_gather_scatter_line(pruned):
    m = Measurement("band keep 0.5", "onnxruntime", "cpu", "band", 0.5, 1, LatencyStats.from_samples([1.0, 2.0]))
    m.macs = count_macs(pruned[0])
    m.parts_ms = {"before the pruner": 1.0, "gather / scatter": 0.5, "pruned blocks": 2.0, "after scatter-back": 1.5}
    lines = part_notes([m])
    assert lines[0].startswith("MMACs by part, band keep 0.5: before the pruner")
    assert lines[2] == "gather / scatter overhead, band keep 0.5: 0.500 ms per run (10.0% of its time)"
    assert share_lines({"pruned blocks": 3.0, "before the pruner": 1.0}, " ms") == (
        "before the pruner 1.00 ms (25%), pruned blocks 3.00 ms (75%)"
    )


def test_parts_of_a_model_we_did_not_write():
    """The transformers ViT adapter (examples/vit_detector.py): its gather and scatter are found
    from its graph alone."""
    pytest.importorskip("transformers", reason="examples/vit_detector.py needs transformers")
    proto = export_part(load_example("vit_detector").build().eval(), "full", batch=1, simplify=True)
    parts = collections.Counter(node_parts(proto.graph).values())
    assert set(parts) == set(PARTS)
    macs = count_macs(proto)
    assert sum(macs.by_part.values()) == macs.total and macs.by_part["pruned blocks"] > 0
