"""Interleaved timing (cass_deploy.profiling.interleave) and MAC counting (profiling.macs):
the order configurations run in, median and ratio intervals against a Python loop over the same
resamples, the overlap warning, and MACs of hand-built ONNX graphs against hand-computed counts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cass_deploy.errors import InputError
from cass_deploy.profiling.interleave import (
    median_intervals,
    ranking_warnings,
    ratio_intervals,
    round_order,
    time_interleaved,
)
from cass_deploy.profiling.macs import count_macs, mac_bound
from cass_deploy.resampling import resample_indices

# --------------------------------------------------------------------------- order


class FakeTimer:
    """Records which function ran; each 'takes' a fixed time plus the call count (a drift)."""

    def __init__(self, cost):
        self.cost, self.calls = cost, 0

    def measure(self, fn, sync):
        self.calls += 1
        return self.cost[fn()] + 0.001 * self.calls


def test_round_order_fixed_and_rotated():
    assert round_order(3, 2).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert round_order(3, 4, "rotate").tolist() == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]
    with pytest.raises(InputError):
        round_order(3, 2, "random")
    with pytest.raises(InputError):
        round_order(0, 2)


@pytest.mark.parametrize("order", ["fixed", "rotate"])
def test_time_interleaved_runs_abcabc_and_fills_columns(order):
    log = []
    fns = [lambda c=c: (log.append(c), c)[1] for c in "ABC"]
    timer = FakeTimer({"A": 1.0, "B": 2.0, "C": 3.0})
    rounds = []
    ms = time_interleaved(fns, rounds=4, warmup=2, order=order, timer=timer, on_round=rounds.append)
    assert log[:6] == list("ABCABC")  # warm-up, interleaved
    expect = "ABCABCABCABC" if order == "fixed" else "ABCBCACABABC"
    assert "".join(log[6:]) == expect
    assert ms.shape == (4, 3) and rounds == [0, 1, 2, 3]
    # column c holds configuration c whatever position it ran at
    assert np.allclose(np.round(ms), [[1, 2, 3]] * 4)
    with pytest.raises(InputError):
        time_interleaved([], rounds=2)
    with pytest.raises(InputError):
        time_interleaved(fns, rounds=0)


def test_interleaving_spreads_a_burst_of_load_over_all_configurations():
    """A burst that slows the machine for a stretch of time: back to back, it lands on one
    configuration; interleaved, every configuration sees it in the same rounds."""
    clock = {"t": 0}

    def make(cost):
        def f():
            clock["t"] += 1
            return cost * (3.0 if 20 <= clock["t"] < 50 else 1.0)

        return f

    class Timer:
        def measure(self, fn, sync):
            return fn()

    fns = [make(1.0), make(1.0)]  # two identical configurations
    inter = time_interleaved(fns, rounds=40, warmup=0, timer=Timer())
    ratio = ratio_intervals(inter, ["a", "b"], [(0, 1)])[0]
    assert ratio.ratio == pytest.approx(1.0) and not ratio.supported
    clock["t"] = 0
    seq = np.stack([[Timer().measure(fns[c], None) for _ in range(40)] for c in (0, 1)], axis=1)
    assert np.median(seq[:, 0]) / np.median(seq[:, 1]) != pytest.approx(1.0)  # back to back: biased


# --------------------------------------------------------------------------- intervals


def test_median_and_ratio_intervals_equal_a_loop_over_the_same_resamples():
    rng = np.random.default_rng(0)
    ms = np.stack([rng.gamma(20, 0.1, 30), rng.gamma(20, 0.05, 30)], axis=1)
    meds = median_intervals(ms, resamples=300, seed=2)
    ratio = ratio_intervals(ms, ["dense", "keep 0.5"], [(0, 1)], resamples=300, seed=2)[0]
    idx = resample_indices(30, 300, seed=2)
    loop_a = [np.median(ms[row, 0]) for row in idx]
    loop_r = [np.median(ms[row, 0]) / np.median(ms[row, 1]) for row in idx]
    assert meds[0].median == pytest.approx(np.median(ms[:, 0]))
    assert (meds[0].lo, meds[0].hi) == tuple(pytest.approx(v) for v in np.quantile(loop_a, [0.025, 0.975]))
    assert (ratio.lo, ratio.hi) == tuple(pytest.approx(v) for v in np.quantile(loop_r, [0.025, 0.975]))
    assert ratio.ratio == pytest.approx(np.median(ms[:, 0]) / np.median(ms[:, 1])) and ratio.supported
    assert meds[0].q25 <= meds[0].median <= meds[0].q75 and meds[0].iqr > 0


def test_ranking_warning_only_for_overlapping_intervals():
    rng = np.random.default_rng(1)
    ms = np.stack([10 + rng.normal(0, 0.1, 40), 10.02 + rng.normal(0, 0.1, 40), 20 + rng.normal(0, 0.1, 40)], 1)
    labels = ["a", "b", "c"]
    warns = ranking_warnings(labels, median_intervals(ms))
    assert len(warns) == 1 and warns[0].startswith(("a (", "b (")) and "do not support" in warns[0]
    assert "c (" not in warns[0]


# --------------------------------------------------------------------------- MACs


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _w(name, shape):
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def _in(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_macs_matmul_gemm_conv_by_hand():
    m = _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["y1"]),  # [2,3,4] @ [4,5]: 2*3*5*4 = 120
            helper.make_node("Gemm", ["a", "w2"], ["y2"], transA=1),  # A^T [3,8] @ [8,5]: 3*5*8 = 120
            helper.make_node("Conv", ["img", "w3"], ["y3"]),  # [1,3,10,10] * [4,3,3,3]: 1*4*8*8 * 27 = 6912
            helper.make_node("Conv", ["y3", "w4"], ["y4"], group=4, pads=[1, 1, 1, 1]),  # depthwise: 256 * 9
            helper.make_node("ConvTranspose", ["t", "w5"], ["y5"], strides=[2, 2]),  # 32 inputs * 3*2*2 = 384
            helper.make_node("Relu", ["y4"], ["y6"]),  # not counted
        ],
        [_in("x", [2, 3, 4]), _in("a", [8, 3]), _in("img", [1, 3, 10, 10]), _in("t", [1, 2, 4, 4])],
        [_in("y1", None), _in("y2", None), _in("y6", None), _in("y5", None)],
        [_w("w1", [4, 5]), _w("w2", [8, 5]), _w("w3", [4, 3, 3, 3]), _w("w4", [4, 1, 3, 3]), _w("w5", [2, 3, 2, 2])],
    )
    c = count_macs(m)
    assert c.by_op == {"MatMul": 120, "Gemm": 120, "Conv": 6912 + 2304, "ConvTranspose": 384}
    assert c.total == 120 + 120 + 6912 + 2304 + 384 and c.complete and c.nodes == 5


def test_macs_follow_inferred_intermediate_shapes_and_attention_matmuls():
    # q @ k^T and attn @ v of one head over N=6 tokens, d=4: 6*6*4 + 6*4*6 = 288
    m = _model(
        [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["q", "kt"], ["s"]),
            helper.make_node("Softmax", ["s"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["o"]),
        ],
        [_in("q", [1, 6, 4]), _in("k", [1, 6, 4]), _in("v", [1, 6, 4])],
        [_in("o", None)],
    )
    assert count_macs(m).total == 288


def test_symbolic_dims_are_unresolved_unless_given(tmp_path):
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_in("x", ["batch", 3, 4])], [_in("y", None)])
    m.graph.initializer.append(_w("w", [4, 5]))
    c = count_macs(m)
    assert c.total == 0 and not c.complete and c.unresolved == ["MatMul y"]
    assert count_macs(m, {"batch": 2}).total == 2 * 3 * 5 * 4
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    assert count_macs(path, {"batch": 1}).total == 60
    with pytest.raises(InputError, match="does not exist"):
        count_macs(tmp_path / "nope.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(InputError):
        count_macs(tmp_path / "bad.onnx")


def test_mac_bound_needs_complete_counts():
    from cass_deploy.profiling.macs import MacCount

    assert mac_bound(MacCount(200), MacCount(100)) == 2.0
    assert mac_bound(MacCount(200), MacCount(100, unresolved=["MatMul x"])) is None
    assert mac_bound(MacCount(200), MacCount(0)) is None


def test_macs_of_the_pruned_detector_fall_with_keep_ratio():
    from cass_deploy.export.onnx_export import export_part
    from cass_deploy.model.detector import PrunedDetector

    from conftest import tiny_model_config

    model = PrunedDetector(tiny_model_config(late_depth=2, mode="global", keep_ratio=0.5)).eval()
    D, P = model.cfg.embed_dim, model.num_patches
    counts = {}
    for r in (0.25, 1.0):
        counts[r] = count_macs(export_part(model.with_pruner(keep_ratio=r), "full", batch=1, simplify=True))
    dense = count_macs(export_part(model.with_pruner(mode="none"), "full", batch=1, simplify=True))
    assert all(c.complete for c in (*counts.values(), dense))
    # keep 1.0 runs every late block on all P tokens, like dense, plus the predictor
    assert counts[1.0].total >= dense.total
    # each late block at N tokens: qkv + proj 4 N D^2, MLP 2 N D H, attention 2 N^2 D
    H = model.late[0].mlp.fc1.out_features
    k = model.with_pruner(keep_ratio=0.25).k

    def block(n):
        return 4 * n * D * D + 2 * n * D * H + 2 * n * n * D

    assert counts[1.0].total - counts[0.25].total == 2 * (block(P) - block(k))
