"""Backend capabilities as data, checked before any export or engine build.

One row per deployment target (like Ultralytics' export-format table). :func:`check_request`
refuses a request that a target cannot run, naming the offending value and the fixes; it never
clamps ``k`` or changes the precision.

Sources: TensorRT operator docs (TopK ``k <= 3840``), the TensorRT 10.x -> 11.x migration guide (11
removed the FP16/INT8 builder flags and the implicit INT8 calibrator; networks are always strongly
typed; DLA is absent from 11.0) and DLA's lack of dynamic dimensions. Which ONNX ops a TensorRT
version takes, and which are DLA layers, is data: ``backends/trt_ops`` (NVIDIA's onnx-tensorrt
operator matrix per release branch, and the DLA supported-layer list); each TensorRT target names
its matrix (``op_matrix``). ``cass-deploy check`` (``backends.graph_check``) applies all of it per node.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from cass_deploy.backends import trt_ops
from cass_deploy.errors import ConfigError, InputError, LimitError

PRECISIONS = ("fp32", "fp16", "int8")
PRUNER_MODES = ("global", "band", "threshold")

#: TensorRT ITopKLayer: k must not exceed this (TensorRT 8.x - 11.x).
TENSORRT_MAX_TOPK = 3840


@dataclass(frozen=True)
class TargetLimits:
    """What one deployment target can run."""

    name: str
    backend: str  # "onnxruntime" | "tensorrt"
    description: str
    precisions: tuple[str, ...]
    max_topk_k: int | None  # None: no documented limit
    trt_major: int | None = None
    strongly_typed_required: bool = False
    implicit_int8_calibrator: bool = False  # we never use it: int8 is explicit QDQ only
    dla: bool = False
    op_matrix: str | None = None  # backends/trt_ops/<op_matrix>.json: the operator matrix this target uses
    matrix_note: str = ""  # why that matrix stands for this version, when it is not the version's own

    @property
    def unsupported_ops(self) -> Mapping[str, str]:
        """ONNX ops the target's operator matrix marks N (op -> where that is said)."""
        if self.op_matrix is None:
            return {}
        m = trt_ops.load_matrix(self.op_matrix)
        return {op: f"marked unsupported (N) in {m.cite()}" for op in sorted(m.unsupported)}

    @property
    def dla_ops(self) -> frozenset[str]:
        """On a DLA target, the ONNX ops that map to DLA layers (``trt_ops/dla_layers.json``); every
        other op runs on the GPU through GPU fallback. Empty for a target without DLA."""
        return frozenset(trt_ops.dla_layers()["ops"]) if self.dla else frozenset()

    @property
    def dla_requires_gpu_fallback(self) -> bool:
        """A DLA target needs GPU fallback: the pruner's TopK and Gather are not DLA layers."""
        return self.dla

    @property
    def dynamic_shapes(self) -> bool:
        """DLA has no dynamic dimensions; the GPU and CPU targets take optimisation profiles."""
        return not self.dla

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "backend": self.backend,
            "description": self.description,
            "precisions": list(self.precisions),
            "max_topk_k": self.max_topk_k,
            "trt_major": self.trt_major,
            "strongly_typed_required": self.strongly_typed_required,
            "implicit_int8_calibrator": self.implicit_int8_calibrator,
            "dla": self.dla,
            "dla_requires_gpu_fallback": self.dla_requires_gpu_fallback,
            "dynamic_shapes": self.dynamic_shapes,
            "op_matrix": self.op_matrix,
            "matrix_note": self.matrix_note,
        }


#: why the JetPack 6.2 targets use the 10.1 matrix
_OLDER_10 = (
    "the onnx-tensorrt snapshot here has no 10.3 branch; its newest 10.x matrix at or below 10.3 (branch "
    "10.1-GA) stands in: operators added in 10.2-10.3 show as unsupported (conservative)"
)


def _onnxruntime(name: str, description: str) -> TargetLimits:
    """An ONNX Runtime target: every precision, no documented TopK limit."""
    return TargetLimits(
        name=name, backend="onnxruntime", description=description, precisions=PRECISIONS, max_topk_k=None
    )


def _tensorrt(
    name: str, trt_major: int, op_matrix: str, description: str, precisions: tuple[str, ...] = PRECISIONS, **rest
) -> TargetLimits:
    """A TensorRT target: TopK ``k <= 3840``; 10.x keeps the implicit INT8 calibrator, 11.x removed it and is
    always strongly typed. ``rest``: ``dla``, ``matrix_note``."""
    return TargetLimits(
        name=name,
        backend="tensorrt",
        description=description,
        precisions=precisions,
        max_topk_k=TENSORRT_MAX_TOPK,
        trt_major=trt_major,
        strongly_typed_required=trt_major >= 11,
        implicit_int8_calibrator=trt_major < 11,
        op_matrix=op_matrix,
        **rest,
    )


TARGETS: Mapping[str, TargetLimits] = MappingProxyType(
    {
        t.name: t
        for t in (
            _onnxruntime("onnxruntime-cpu", "ONNX Runtime, CPU execution provider"),
            _onnxruntime("onnxruntime-cuda", "ONNX Runtime, CUDA execution provider (onnxruntime-gpu)"),
            _tensorrt(
                "tensorrt10.3",
                10,
                "trt_10_1",
                "TensorRT 10.3 as JetPack 6.2 ships it (Jetson Orin): FP16/INT8 builder flags "
                "or a strongly typed network",
                matrix_note=_OLDER_10,
            ),
            _tensorrt(
                "tensorrt10",
                10,
                "trt_10_15",
                "the newest TensorRT 10.x on a GPU: FP16/INT8 builder flags or a strongly typed network",
            ),
            _tensorrt(
                "tensorrt11",
                11,
                "trt_10_15",
                "TensorRT 11.x on a GPU: always strongly typed, precision comes from the ONNX",
                matrix_note="no 11.x operator matrix could be obtained here; the newest 10.x matrix (10.15) "
                "stands in: confirm on the device with `polygraphy inspect capability`",
            ),
            _tensorrt(
                "tensorrt10-dla",
                10,
                "trt_10_1",
                "TensorRT 10.3 (JetPack 6.2) on a Jetson DLA core with GPU fallback (fp16/int8 only)",
                precisions=("fp16", "int8"),
                dla=True,
                matrix_note=_OLDER_10,
            ),
        )
    }
)


def get_target(target: str) -> TargetLimits:
    """The row for ``target``; :class:`ConfigError` listing the known targets otherwise."""
    try:
        return TARGETS[target]
    except KeyError:
        raise ConfigError(f"unknown deployment target {target!r}; known: {', '.join(TARGETS)}") from None


def max_k_for(target: str) -> int | None:
    """Largest TopK ``k`` the target accepts (``None``: no documented limit)."""
    return get_target(target).max_topk_k


def target_for(backend: str, *, trt_major: int | None = None, dla_core: int | None = None, device: str = "cpu") -> str:
    """Map a backend choice to a target name (``device`` is ``cpu``/``cuda`` for ONNX Runtime)."""
    if backend == "onnxruntime":
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"ONNX Runtime device must be 'cpu' or 'cuda', got {device!r}")
        return f"onnxruntime-{device}"
    if backend == "tensorrt":
        if trt_major is None:
            raise ConfigError("the TensorRT target needs the TensorRT major version (10 or 11)")
        if trt_major < 10:
            raise LimitError(f"TensorRT {trt_major}.x is not supported; use TensorRT 10 or 11 (JetPack 6 ships 10.3)")
        if dla_core is not None:
            if trt_major != 10:
                raise LimitError(_dla_not_in(trt_major))
            return "tensorrt10-dla"
        return "tensorrt10" if trt_major == 10 else "tensorrt11"
    raise ConfigError(f"unknown backend {backend!r}; choose onnxruntime or tensorrt")


def patch_grid(image_size: Sequence[int], patch_size: int) -> tuple[int, int]:
    """Patch grid ``(Hp, Wp)`` of an ``(H, W)`` input, padding up to a multiple of the patch."""
    h, w = _pair(image_size, "image_size")
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
        raise InputError(f"patch_size must be a positive integer, got {patch_size!r}")
    return math.ceil(h / patch_size), math.ceil(w / patch_size)


def check_image_size(image_size: Sequence[int], patch_size: int, what: str = "image size") -> tuple[int, int]:
    """The one check of an input size wherever one is taken (``--image-size``, configs, profiles):
    ``(H, W)`` positive integers, each a multiple of ``patch_size``; returns them as ints, or raises an
    InputError naming ``what`` and the value."""
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise InputError(f"{what} must be two integers H W, got {image_size!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (h, w)) or h < 1 or w < 1:
        raise InputError(f"{what} must be two positive integers H W, got {h} {w}")
    _positive_int(patch_size, "patch_size")
    if h % patch_size or w % patch_size:
        fit = " ".join(str(max(patch_size, round(v / patch_size) * patch_size)) for v in (h, w))
        raise InputError(
            f"{what} {h} {w} is not a multiple of the patch size {patch_size} in both dimensions (e.g. {fit})"
        )
    return int(h), int(w)


def check_request(
    target: str,
    *,
    k: int | None = None,
    pruner_mode: str | None = None,
    topk_sizes: Sequence[int] | None = None,
    keep_ratio: float | None = None,
    precision: str = "fp32",
    ops: Iterable[str] = (),
    image_size: Sequence[int] | None = None,
    patch_size: int | None = None,
    dynamic_batch: Sequence[int] | None = None,
    gpu_fallback: bool = True,
    dla_core: int | None = None,
) -> list[str]:
    """Refuse (:class:`LimitError`) what ``target`` cannot run; return informational notes.

    ``k``: the global pruner's TopK; ``topk_sizes``: the ``band`` pruner's per-band TopK sizes
    (each band is one TopK, so the limit applies per band); ``image_size`` is ``(H, W)``;
    ``dynamic_batch`` is ``(min, opt, max)``. Nothing is clamped or changed.
    """
    limits = get_target(target)
    notes: list[str] = []

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision not in limits.precisions:
        raise LimitError(
            f"target {target} does not run {precision}; it supports "
            f"{', '.join(limits.precisions)}"
            + (
                " (DLA computes in fp16 or int8 only: use --precision fp16, or drop the DLA core to build for the GPU)"
                if limits.dla
                else ""
            )
        )

    patches = None
    if image_size is not None and patch_size is not None:
        hp, wp = patch_grid(image_size, patch_size)
        patches = hp * wp

    if pruner_mode is not None and pruner_mode not in PRUNER_MODES:
        raise ConfigError(f"unknown pruner mode {pruner_mode!r}; choose one of {', '.join(PRUNER_MODES)}")
    if pruner_mode == "band":
        if topk_sizes is None:
            raise InputError(
                "the band pruner runs one TopK per band: pass topk_sizes "
                "(the per-band k) so each can be checked against the limit"
            )
        _check_band_sizes(limits, topk_sizes)
    elif pruner_mode != "threshold" and k is not None:
        _check_k(limits, k, patches, image_size, patch_size, keep_ratio)
    elif topk_sizes is not None and pruner_mode is None:
        _check_band_sizes(limits, topk_sizes)

    op_set = set(ops)
    bad = sorted(op_set & set(limits.unsupported_ops))
    if bad:
        raise LimitError(
            f"target {target} cannot run ONNX op(s) " + "; ".join(f"{op}: {limits.unsupported_ops[op]}" for op in bad)
        )

    if dla_core is not None or limits.dla:
        notes += _check_dla(limits, target, dla_core, gpu_fallback, op_set, dynamic_batch)
    return notes


def _check_k(
    limits: TargetLimits,
    k: int,
    patches: int | None,
    image_size: Sequence[int] | None,
    patch_size: int | None,
    keep_ratio: float | None,
) -> None:
    _positive_int(k, "k")
    if patches is not None and k > patches:
        raise LimitError(f"k={k} exceeds the {patches} patches of the input; keep_ratio must be <= 1")
    limit = limits.max_topk_k
    if limit is None or k <= limit:
        return
    detail = ""
    fixes = [
        f"use the `band` pruner (--pruner band): each band runs its own TopK of at most "
        f"{limit}, e.g. {math.ceil(k / limit)} or more equal bands of about "
        f"{math.ceil(k / math.ceil(k / limit))} patches each"
    ]
    if patches is not None and image_size is not None and patch_size is not None:
        h, w = _pair(image_size, "image_size")
        hp, wp = patch_grid(image_size, patch_size)
        ratio = keep_ratio if keep_ratio is not None else k / patches
        padded = (
            ""
            if (hp * patch_size, wp * patch_size) == (h, w)
            else f" after padding to {wp * patch_size}x{hp * patch_size}"
        )
        detail = (
            f" ({w}x{h} at patch {patch_size} is a {hp}x{wp} grid = {patches} patches"
            f"{padded}; keep_ratio {ratio:g} gives k = ceil({ratio:g} x {patches}) = {k})"
        )
        max_ratio = math.floor(limit / patches * 100) / 100
        fixes.append(f"lower keep_ratio to {max_ratio:g} or less (k = {math.ceil(max_ratio * patches)})")
        fixes.append(
            f"use a smaller input, e.g. 1280x720 "
            f"({math.prod(patch_grid((720, 1280), patch_size))} patches at patch "
            f"{patch_size})"
        )
    else:
        fixes.append(f"lower keep_ratio or the input size so that k <= {limit}")
    raise LimitError(
        f"TopK on {limits.name} supports k <= {limit}, but k={k} was "
        f"requested{detail}. Fixes: " + "; or ".join(fixes) + ". (Nothing is clamped.)"
    )


def _check_band_sizes(limits: TargetLimits, topk_sizes: Sequence[int]) -> None:
    if len(topk_sizes) == 0:
        raise InputError("topk_sizes is empty: the band pruner needs one k per band")
    for i, kb in enumerate(topk_sizes):
        _positive_int(kb, f"topk_sizes[{i}] (band {i})")
    limit = limits.max_topk_k
    if limit is None:
        return
    over = [(i, kb) for i, kb in enumerate(topk_sizes) if kb > limit]
    if over:
        listed = ", ".join(f"band {i}: k={kb}" for i, kb in over)
        raise LimitError(
            f"TopK supports k <= {limit} per band on {limits.name}, but {listed}. Fixes: use "
            f"more bands (split band {over[0][0]} so no band keeps more than {limit} patches), "
            "lower keep_ratio, or use a smaller input. (Nothing is clamped.)"
        )


def _check_dla(
    limits: TargetLimits,
    target: str,
    dla_core: int | None,
    gpu_fallback: bool,
    ops: set[str],
    dynamic_batch: Sequence[int] | None,
) -> list[str]:
    if not limits.dla:
        if limits.trt_major is not None and limits.trt_major >= 11:
            raise LimitError(_dla_not_in(limits.trt_major))
        raise LimitError(
            f"target {target} has no DLA; DLA needs target tensorrt10-dla (TensorRT 10 on a Jetson with DLA cores)"
        )
    if dla_core is None:
        raise LimitError(f"target {target} needs a DLA core: pass --dla-core 0 (or 1 on boards with two cores)")
    if not isinstance(dla_core, int) or isinstance(dla_core, bool) or dla_core < 0:
        raise LimitError(f"dla_core must be a non-negative integer, got {dla_core!r}")
    if limits.dla_requires_gpu_fallback and not gpu_fallback:
        raise LimitError(
            "DLA without GPU fallback cannot run the pruner: TopK and Gather/Scatter are not DLA "
            "layers. Enable GPU fallback (--gpu-fallback / trtexec --allowGPUFallback)"
        )
    if dynamic_batch is not None:
        lo, _, hi = dynamic_batch
        if lo != hi:
            raise LimitError(
                f"DLA has no dynamic dimensions, but dynamic batch {lo}..{hi} was "
                "requested; export a fixed batch for DLA (min = opt = max)"
            )
    on_gpu = sorted(ops - limits.dla_ops)
    notes = [f"DLA core {dla_core}: fp16/int8 layers run on DLA, the rest on the GPU"]
    if on_gpu:
        notes.append(f"these ops run on the GPU (not DLA layers): {', '.join(on_gpu)}")
    return notes


def _dla_not_in(trt_major: int) -> str:
    return (
        f"DLA is not available with TensorRT {trt_major}.x (absent from 11.0); build DLA "
        "engines with TensorRT 10 on the Jetson (JetPack 6 ships 10.3), or drop --dla-core"
    )


def _positive_int(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")


def _pair(value: Sequence[int], what: str) -> tuple[int, int]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise InputError(f"{what} must be (H, W), got {value!r}") from None
    for v in (a, b):
        _positive_int(v, what)
    return int(a), int(b)
