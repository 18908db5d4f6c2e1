"""Capabilities as data: requests a target cannot run are refused before any build."""

from __future__ import annotations

import math

import pytest

from cass_deploy.backends import limits
from cass_deploy.backends.limits import check_request, max_k_for, patch_grid, target_for
from cass_deploy.errors import ConfigError, InputError, LimitError


def test_table_encodes_the_documented_limits():
    t10, t11, dla = (limits.TARGETS[n] for n in ("tensorrt10", "tensorrt11", "tensorrt10-dla"))
    assert max_k_for("tensorrt10") == max_k_for("tensorrt11") == 3840
    assert max_k_for("onnxruntime-cpu") is None and max_k_for("onnxruntime-cuda") is None
    assert not t10.strongly_typed_required and t11.strongly_typed_required
    assert t10.implicit_int8_calibrator and not t11.implicit_int8_calibrator
    assert dla.dla and not t10.dla and not t11.dla
    assert dla.precisions == ("fp16", "int8") and dla.dla_requires_gpu_fallback
    # op support is data (backends/trt_ops): NonZero is Y in the 10.x matrices, Det / Unique N in all
    assert "NonZero" not in t10.unsupported_ops and {"Det", "Unique", "BitShift"} <= set(t10.unsupported_ops)
    assert "TopK" not in dla.dla_ops and "Conv" in dla.dla_ops and not t10.dla_ops
    assert limits.TARGETS["tensorrt10.3"].op_matrix == dla.op_matrix == "trt_10_1" and t10.op_matrix == "trt_10_15"
    assert set(t11.to_dict()) >= {"name", "precisions", "max_topk_k", "dla"}


def test_patch_grid_pads_up():
    assert patch_grid((720, 1280), 16) == (45, 80)  # 3600 patches
    assert patch_grid((1080, 1920), 16) == (68, 120)  # 1080/16 = 67.5 -> 68
    with pytest.raises(InputError, match="image_size"):
        patch_grid((1080,), 16)
    with pytest.raises(InputError, match="patch_size"):
        patch_grid((720, 1280), 0)


def test_1080p_keep_half_is_refused_with_band_advice():
    patches = math.ceil(1080 / 16) * math.ceil(1920 / 16)
    k = math.ceil(0.5 * patches)
    assert (patches, k) == (8160, 4080)
    with pytest.raises(LimitError) as err:
        check_request(
            "tensorrt10",
            k=k,
            precision="fp16",
            image_size=(1080, 1920),
            patch_size=16,
            keep_ratio=0.5,
            pruner_mode="global",
        )
    msg = str(err.value)
    for needle in ("band", "4080", "3840", "8160", "68x120", "1920x1080", "1280x720", "Nothing is clamped"):
        assert needle in msg, needle
    # the suggested keep_ratio really fits
    assert math.ceil(0.47 * patches) <= 3840 < math.ceil(0.48 * patches)
    assert "0.47" in msg


def test_720p_k1800_fits_and_onnxruntime_has_no_topk_limit():
    assert check_request("tensorrt10", k=1800, image_size=(720, 1280), patch_size=16) == []
    assert check_request("tensorrt11", k=3840) == []
    assert check_request("onnxruntime-cpu", k=4080, image_size=(1080, 1920), patch_size=16) == []


def test_k_larger_than_patch_count_or_not_positive_is_refused():
    with pytest.raises(LimitError, match="exceeds the 3600 patches"):
        check_request("onnxruntime-cpu", k=3601, image_size=(720, 1280), patch_size=16)
    with pytest.raises(InputError, match="k must be a positive integer"):
        check_request("tensorrt10", k=0)


def test_band_pruner_is_checked_per_band():
    # 4080 kept patches in three bands: every TopK is below the limit, the total is not
    assert check_request("tensorrt10", k=4080, pruner_mode="band", topk_sizes=[1360, 1360, 1360]) == []
    with pytest.raises(LimitError, match=r"band 1: k=3900"):
        check_request("tensorrt10", pruner_mode="band", topk_sizes=[100, 3900, 80])
    with pytest.raises(InputError, match="pass topk_sizes"):
        check_request("tensorrt10", k=1200, pruner_mode="band")
    with pytest.raises(InputError, match=r"topk_sizes\[1\] \(band 1\)"):
        check_request("tensorrt10", pruner_mode="band", topk_sizes=[10, 0])


def test_threshold_pruner_has_no_topk():
    assert check_request("tensorrt10", k=5000, pruner_mode="threshold") == []


def test_unsupported_precision_per_target():
    with pytest.raises(LimitError, match="tensorrt10-dla does not run fp32.*fp16, int8"):
        check_request("tensorrt10-dla", precision="fp32", dla_core=0)
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        check_request("tensorrt10", precision="fp8")
    for target in ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt10", "tensorrt11"):
        for precision in ("fp32", "fp16", "int8"):
            check_request(target, precision=precision)


def test_unknown_target_lists_known_ones():
    with pytest.raises(ConfigError, match="known: onnxruntime-cpu, .*tensorrt10-dla"):
        check_request("openvino", k=10)


def test_ops_the_matrix_marks_unsupported_are_refused_for_tensorrt_only():
    with pytest.raises(LimitError, match=r"Det: marked unsupported \(N\) in onnx-tensorrt"):
        check_request("tensorrt11", ops={"TopK", "Det"})
    assert check_request("tensorrt10", ops={"TopK", "NonZero"}) == []  # NonZero is Y in 10.x
    assert check_request("onnxruntime-cpu", ops={"Det"}) == []


def test_dla_rules():
    with pytest.raises(LimitError, match="DLA is not available with TensorRT 11"):
        check_request("tensorrt11", precision="fp16", dla_core=0)
    with pytest.raises(LimitError, match="has no DLA"):
        check_request("tensorrt10", precision="fp16", dla_core=0)
    with pytest.raises(LimitError, match="GPU fallback"):
        check_request("tensorrt10-dla", precision="fp16", dla_core=0, gpu_fallback=False)
    with pytest.raises(LimitError, match="pass --dla-core"):
        check_request("tensorrt10-dla", precision="fp16")
    with pytest.raises(LimitError, match="no dynamic dimensions"):
        check_request("tensorrt10-dla", precision="fp16", dla_core=0, dynamic_batch=(1, 2, 4))
    notes = check_request(
        "tensorrt10-dla",
        precision="int8",
        dla_core=1,
        k=1800,
        ops={"Conv", "TopK", "GatherElements"},
        dynamic_batch=(2, 2, 2),
    )
    assert any("GatherElements, TopK" in n for n in notes)
    with pytest.raises(LimitError, match="3840"):
        check_request("tensorrt10-dla", precision="fp16", dla_core=0, k=4000)


def test_target_for():
    assert target_for("onnxruntime", device="cuda") == "onnxruntime-cuda"
    assert target_for("tensorrt", trt_major=10) == "tensorrt10"
    assert target_for("tensorrt", trt_major=11) == "tensorrt11"
    assert target_for("tensorrt", trt_major=10, dla_core=0) == "tensorrt10-dla"
    with pytest.raises(LimitError, match="DLA is not available with TensorRT 11"):
        target_for("tensorrt", trt_major=11, dla_core=0)
    with pytest.raises(LimitError, match="TensorRT 8.x is not supported"):
        target_for("tensorrt", trt_major=8)
    with pytest.raises(ConfigError):
        target_for("tvm")
