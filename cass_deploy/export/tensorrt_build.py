"""ONNX -> TensorRT engine for TensorRT 10 and 11, and engine loading with clear errors.

The rules live in the pure :func:`plan_build` (unit-tested without TensorRT); :func:`build_engine`
only carries the plan out with the TensorRT Python API:

- TensorRT 10: FP16 / INT8 builder flags (INT8 only for explicit Q/DQ models: we never use the
  implicit calibrator), or a strongly typed network (then no precision flags).
- TensorRT 11: always strongly typed, no precision flags; the precision must already be in the
  ONNX (fp16 tensors, Q/DQ nodes), otherwise the request is refused before building.
- DLA (TensorRT 10 only): fp16/int8, default device DLA, a DLA core and GPU fallback (the
  pruner's TopK and Gather are not DLA layers), fixed shapes.

Engines are written as the plain bytes TensorRT serialises, atomically.
"""

from __future__ import annotations

import itertools
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import onnx

from cass_deploy.backends.limits import PRECISIONS
from cass_deploy.errors import ExportError, InputError, LimitError
from cass_deploy.io_utils import atomic_path, check_writable
from cass_deploy.runtime.manifest import load_onnx
from cass_deploy.runtime.trt_engine import _import_trt, _make_logger

Shape = tuple[int, ...]
LogFn = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked for; validated on construction.

    ``strongly_typed=None`` means automatic: on for TensorRT >= 11, off for 10. ``profiles`` maps
    each dynamic input name to ``(min, opt, max)`` shapes.
    """

    precision: str = "fp32"
    strongly_typed: bool | None = None
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    profiles: Mapping[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    dla_core: int | None = None
    gpu_fallback: bool = True
    builder_optimization_level: int | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mib is not None and (not isinstance(self.workspace_mib, int) or self.workspace_mib < 1):
            raise InputError(f"workspace_mib must be a positive integer, got {self.workspace_mib!r}")
        if self.dla_core is not None and (
            not isinstance(self.dla_core, int) or isinstance(self.dla_core, bool) or self.dla_core < 0
        ):
            raise InputError(f"dla_core must be a non-negative integer, got {self.dla_core!r}")
        level = self.builder_optimization_level
        if level is not None and (not isinstance(level, int) or not 0 <= level <= 5):
            raise InputError(f"builder_optimization_level must be 0..5, got {level!r}")
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
        profiles = {}
        for name, shapes in dict(self.profiles).items():
            try:
                lo, opt, hi = (tuple(int(d) for d in s) for s in shapes)
            except (TypeError, ValueError):
                raise InputError(f"profile for {name!r} must be (min, opt, max) shapes, got {shapes!r}") from None
            if not len(lo) == len(opt) == len(hi):
                raise InputError(f"profile for {name!r}: min/opt/max ranks differ ({lo}, {opt}, {hi})")
            if not all(1 <= a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise InputError(
                    f"profile for {name!r} needs 1 <= min <= opt <= max on every axis, got min={lo} opt={opt} max={hi}"
                )
            profiles[str(name)] = (lo, opt, hi)
        object.__setattr__(self, "profiles", profiles)

    @property
    def has_dynamic_profile(self) -> bool:
        return any(lo != hi for lo, _, hi in self.profiles.values())


@dataclass(frozen=True)
class BuildPlan:
    """How to configure TensorRT: flag *names* (resolved against ``tensorrt`` at build time; the
    trtexec line spells them through :data:`TRTEXEC_ARGS`)."""

    trt_major: int
    strongly_typed: bool
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag member names
    builder_flags: tuple[str, ...]  # BuilderFlag member names
    default_device_type: str = "GPU"  # DeviceType member name
    dla_core: int | None = None
    hardware_compatibility_level: str | None = None  # HardwareCompatibilityLevel member name
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "trt_major": self.trt_major,
            "strongly_typed": self.strongly_typed,
            "network_flags": list(self.network_flags),
            "builder_flags": list(self.builder_flags),
            "default_device_type": self.default_device_type,
            "dla_core": self.dla_core,
            "hardware_compatibility_level": self.hardware_compatibility_level,
            "notes": list(self.notes),
        }


def plan_build(trt_major: int, options: BuildOptions, has_qdq: bool, onnx_is_fp16: bool) -> BuildPlan:
    """Turn a request into TensorRT settings, or refuse it (:class:`LimitError`) before building.

    ``has_qdq``: the ONNX has QuantizeLinear/DequantizeLinear nodes; ``onnx_is_fp16``: it
    carries fp16 tensors. A precision the ONNX does not carry is never changed silently.
    """
    if trt_major < 10:
        raise LimitError(f"TensorRT {trt_major}.x is not supported; use TensorRT 10 or 11 (JetPack 6 ships 10.3)")
    dla = options.dla_core is not None
    strongly = _strongly_typed(trt_major, options)
    if dla:
        _refuse_dla(trt_major, options, strongly)
    _refuse_precision_mismatch(trt_major, options.precision, strongly, has_qdq, onnx_is_fp16)
    network_flags, builder_flags, notes = _precision_flags(trt_major, options.precision, strongly, onnx_is_fp16)

    device = "GPU"
    if dla:
        builder_flags.append("GPU_FALLBACK")
        device = "DLA"
        notes.append(f"DLA core {options.dla_core} with GPU fallback: TopK/Gather run on the GPU")

    if options.version_compatible:
        builder_flags.append("VERSION_COMPATIBLE")
        notes.append("version-compatible engine: loadable by newer TensorRT on the same OS (possibly slower)")
    return BuildPlan(
        trt_major=trt_major,
        strongly_typed=strongly,
        network_flags=tuple(network_flags),
        builder_flags=tuple(builder_flags),
        default_device_type=device,
        dla_core=options.dla_core if dla else None,
        hardware_compatibility_level="AMPERE_PLUS" if options.hardware_compatible else None,
        notes=tuple(notes),
    )


def _strongly_typed(trt_major: int, options: BuildOptions) -> bool:
    """TensorRT 11 is always strongly typed (asking otherwise is refused); TensorRT 10 when asked."""
    if trt_major >= 11:
        if options.strongly_typed is False:
            raise LimitError(
                f"TensorRT {trt_major} networks are always strongly typed; drop "
                "the request for a weakly typed build (--no-strongly-typed)"
            )
        return True
    return bool(options.strongly_typed)


def _refuse_dla(trt_major: int, options: BuildOptions, strongly: bool) -> None:
    """Refuse a DLA build no TensorRT can make: TensorRT 11, fp32, strongly typed, no GPU fallback
    (the pruner's TopK / Gather are not DLA layers), dynamic shapes, hardware compatibility."""
    if trt_major >= 11:
        raise LimitError(
            f"DLA is not available with TensorRT {trt_major}.x (absent from "
            "11.0); build DLA engines with TensorRT 10 on the Jetson "
            "(JetPack 6 ships 10.3), or drop --dla-core"
        )
    if options.precision == "fp32":
        raise LimitError(
            "DLA computes in fp16 or int8 only; request --precision fp16 "
            "(or int8), or drop --dla-core to build for the GPU"
        )
    if strongly:
        raise LimitError(
            "DLA builds on TensorRT 10 use the FP16/INT8 builder flags; drop --strongly-typed for a DLA engine"
        )
    if not options.gpu_fallback:
        raise LimitError(
            "DLA without GPU fallback cannot run the pruner: TopK and "
            "Gather/Scatter are not DLA layers; enable GPU fallback"
        )
    if options.has_dynamic_profile:
        raise LimitError("DLA has no dynamic dimensions; use a fixed batch (min = opt = max) for a DLA engine")
    if options.hardware_compatible:
        raise LimitError(
            "hardware-compatible engines are GPU-only (Ampere+); drop --hardware-compatible for a DLA engine"
        )


def _refuse_precision_mismatch(trt_major: int, p: str, strongly: bool, has_qdq: bool, onnx_is_fp16: bool) -> None:
    """Refuse a requested precision ``p`` the ONNX does not carry (never changed silently)."""
    if p == "int8" and not has_qdq:
        raise LimitError(
            "int8 needs an ONNX with explicit Q/DQ nodes (cass-deploy supports explicit "
            "quantization only; TensorRT 11 has no implicit calibrator): export with "
            "--precision int8 and calibration images"
        )
    if p != "int8" and has_qdq:
        raise LimitError(
            f"the ONNX has Q/DQ (int8) nodes but {p} was requested; request "
            "--precision int8, or export a non-quantized ONNX for fp16/fp32"
        )
    if p == "fp32" and onnx_is_fp16:
        raise LimitError(
            "the ONNX carries fp16 tensors but fp32 was requested; request "
            "--precision fp16 or export the ONNX with --precision fp32"
        )
    if p == "fp16" and strongly and not onnx_is_fp16:
        where = f"TensorRT {trt_major} is always strongly typed" if trt_major >= 11 else "a strongly typed network"
        raise LimitError(
            f"fp16 was requested but the ONNX is fp32, and {where}: precision comes from the "
            "ONNX. Export with --precision fp16 so the ONNX carries fp16"
            + (", or build without --strongly-typed on TensorRT 10" if trt_major < 11 else "")
        )


def _precision_flags(
    trt_major: int, p: str, strongly: bool, onnx_is_fp16: bool
) -> tuple[list[str], list[str], list[str]]:
    """How precision ``p`` reaches TensorRT -> (network flag names, builder flag names, notes):
    from the ONNX on a strongly typed network, else FP16 / INT8 builder flags."""
    builder_flags: list[str] = []
    network_flags: list[str] = []
    notes: list[str] = []
    if trt_major >= 11:
        notes.append(f"TensorRT {trt_major}: strongly typed by default; precision from the ONNX")
    elif strongly:
        network_flags.append("STRONGLY_TYPED")
        notes.append("strongly typed network: precision from the ONNX, no precision flags")
    elif p == "fp16":
        builder_flags.append("FP16")
    elif p == "int8":
        builder_flags.append("INT8")
        if onnx_is_fp16:
            builder_flags.append("FP16")
        notes.append(
            "explicit Q/DQ int8: layers without Q/DQ (the predictor and pruner by "
            "default) stay in " + ("fp16/fp32" if onnx_is_fp16 else "fp32")
        )
    return network_flags, builder_flags, notes


# -- ONNX facts ------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxFacts:
    """What the builder needs to know about an ONNX file."""

    has_qdq: bool
    is_fp16: bool
    op_types: frozenset[str]
    inputs: tuple[tuple[str, tuple[int | str | None, ...]], ...]


def inspect_onnx(path: str | Path) -> OnnxFacts:
    """Q/DQ presence, fp16 tensors, op types and input shapes of an ONNX file (no torch)."""

    return onnx_facts(load_onnx(path))


def onnx_facts(model: Any) -> OnnxFacts:
    """:class:`OnnxFacts` of an in-memory ``onnx.ModelProto``."""

    fp16 = onnx.TensorProto.FLOAT16
    graph = model.graph
    ops = frozenset(node.op_type for node in graph.node)
    is_fp16 = (
        any(t.data_type == fp16 for t in graph.initializer)
        or any(v.type.tensor_type.elem_type == fp16 for v in (*graph.input, *graph.output, *graph.value_info))
        or any(
            node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute)
            for node in graph.node
        )
    )
    init_names = {t.name for t in graph.initializer}
    inputs = tuple(
        (
            v.name,
            tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim
            ),
        )
        for v in graph.input
        if v.name not in init_names
    )
    return OnnxFacts(
        has_qdq=bool(ops & {"QuantizeLinear", "DequantizeLinear"}), is_fp16=is_fp16, op_types=ops, inputs=inputs
    )


def _trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


#: The TensorRT enum each :class:`BuildPlan` field names members of. :func:`build_engine` resolves
#: the plan through this table only, so the API conformance check (``tools/trt_api.py``) knows every
#: ``Enum.MEMBER`` a plan can make the builder touch, per TensorRT major version.
PLAN_ENUMS: Mapping[str, str] = MappingProxyType(
    {
        "network_flags": "NetworkDefinitionCreationFlag",
        "builder_flags": "BuilderFlag",
        "default_device_type": "DeviceType",
        "hardware_compatibility_level": "HardwareCompatibilityLevel",
    }
)


def plan_members(plan: BuildPlan) -> dict[str, tuple[tuple[str, str], ...]]:
    """``{plan field: ((enum, member), ...)}``: the TensorRT names :func:`build_engine` resolves for
    ``plan`` (the device type only for a DLA plan: a GPU plan leaves TensorRT's default)."""
    device = (plan.default_device_type,) if plan.dla_core is not None else ()
    hardware = (plan.hardware_compatibility_level,) if plan.hardware_compatibility_level is not None else ()
    values = {
        "network_flags": plan.network_flags,
        "builder_flags": plan.builder_flags,
        "default_device_type": device,
        "hardware_compatibility_level": hardware,
    }
    return {key: tuple((PLAN_ENUMS[key], name) for name in names) for key, names in values.items()}


def _resolve(trt: Any, members: Sequence[tuple[str, str]]) -> list[Any]:
    """``trt.<Enum>.<MEMBER>`` for each ``(enum, member)``; a missing one is an :class:`ExportError`."""
    out = []
    for enum_name, name in members:
        member = getattr(getattr(trt, enum_name, None), name, None)
        if member is None:
            raise ExportError(f"{enum_name}.{name} does not exist in TensorRT {trt.__version__}")
        out.append(member)
    return out


def enumerate_plans(trt_major: int) -> list[tuple[BuildOptions, BuildPlan]]:
    """Every plan :func:`plan_build` makes for ``trt_major``: precision x the ONNX's precision x
    strongly typed x DLA core x version / hardware compatibility (refused requests left out).

    The API conformance check resolves each plan's :func:`plan_members` against the real bindings
    of every TensorRT version of that major, so a name guarded by a version check is exercised.
    """
    onnx_kinds = {  # (has Q/DQ, carries fp16) of the ONNX each precision can come with
        "fp32": [(False, False)],
        "fp16": [(False, False), (False, True)],
        "int8": [(True, False), (True, True)],
    }
    axes = {
        "precision": PRECISIONS,
        "strongly_typed": (None, False, True),
        "dla_core": (None, 0, 1),
        "version_compatible": (False, True),
        "hardware_compatible": (False, True),
    }
    plans = []
    for combo in itertools.product(*axes.values()):
        settings = dict(zip(axes, combo))
        for has_qdq, onnx_fp16 in onnx_kinds[settings["precision"]]:
            opts = BuildOptions(**settings)
            try:
                plans.append((opts, plan_build(trt_major, opts, has_qdq, onnx_fp16)))
            except LimitError:
                pass
    return plans


@dataclass(frozen=True)
class BuildResult:
    engine_path: Path
    plan: BuildPlan
    trt_version: str
    seconds: float
    timing_cache: Path | None
    warnings: tuple[str, ...]
    trtexec: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": str(self.engine_path),
            "plan": self.plan.to_dict(),
            "tensorrt": self.trt_version,
            "seconds": round(self.seconds, 3),
            "timing_cache": None if self.timing_cache is None else str(self.timing_cache),
            "warnings": list(self.warnings),
            "trtexec": self.trtexec,
        }


def build_engine(
    onnx_path: str | Path, engine_path: str | Path, options: BuildOptions, force: bool = False, log: LogFn | None = None
) -> BuildResult:
    """Build a serialized engine from ``onnx_path`` and write it atomically to ``engine_path``.

    Refuses an existing ``engine_path`` without ``force`` and unsupported requests before the
    builder runs; a failed build raises :class:`ExportError` with TensorRT's errors and leaves
    no file behind.
    """

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    check_writable(engine_path, force)
    facts = inspect_onnx(onnx_path)
    trt = _import_trt()
    plan = plan_build(_trt_major(trt), options, facts.has_qdq, facts.is_fp16)
    start = time.perf_counter()
    logger = _make_logger(trt, log)
    builder = trt.Builder(logger)

    members = plan_members(plan)
    flags = 0
    for member in _resolve(trt, members["network_flags"]):
        flags |= 1 << int(member)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(onnx_path))
    if not parsed or parser.num_errors:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(
            f"TensorRT {trt.__version__} could not parse {onnx_path}:\n  "
            + "\n  ".join(errors or logger.errors() or ["(no parser message)"])
        )

    config = builder.create_builder_config()
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    for member in _resolve(trt, members["builder_flags"]):
        config.set_flag(member)
    if plan.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if plan.dla_core >= cores:
            raise LimitError(
                f"DLA core {plan.dla_core} requested but this device has {cores} "
                "DLA core(s)" + (" (DLA exists on Jetson Orin/Xavier only)" if cores == 0 else "")
            )
        (config.default_device_type,) = _resolve(trt, members["default_device_type"])
        config.DLA_core = plan.dla_core
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    if members["hardware_compatibility_level"]:
        (config.hardware_compatibility_level,) = _resolve(trt, members["hardware_compatibility_level"])
    _add_profiles(trt, builder, network, config, options, onnx_path)
    cache = _load_timing_cache(config, options.timing_cache, log)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT {trt.__version__} failed to build an engine from "
            f"{onnx_path}:\n  " + "\n  ".join(logger.errors() or ["(no error message; rerun with a log)"])
        )
    with atomic_path(engine_path, force=force) as tmp:
        with open(tmp, "wb") as f:
            f.write(serialized)
    if options.timing_cache is not None and cache is not None:
        data = config.get_timing_cache().serialize()
        with atomic_path(options.timing_cache, force=True) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
    return BuildResult(
        engine_path=engine_path,
        plan=plan,
        trt_version=str(trt.__version__),
        seconds=time.perf_counter() - start,
        timing_cache=options.timing_cache,
        warnings=tuple(m for m in logger.messages if m.startswith("[warning]")),
        trtexec=trtexec_for(onnx_path, engine_path, options, plan),
    )


def _add_profiles(trt: Any, builder: Any, network: Any, config: Any, options: BuildOptions, onnx_path: Path) -> None:
    """One optimisation profile covering every dynamic input (``-1`` dims)."""
    inputs = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs[tensor.name] = tuple(int(d) for d in tensor.shape)
    unknown = sorted(set(options.profiles) - set(inputs))
    if unknown:
        raise InputError(
            f"profile given for {', '.join(unknown)}, which {onnx_path} does not "
            f"have as input(s); inputs: {', '.join(inputs)}"
        )
    dynamic = {name: shape for name, shape in inputs.items() if any(d < 0 for d in shape)}
    missing = sorted(set(dynamic) - set(options.profiles))
    if missing:
        raise InputError(
            "dynamic input(s) need min/opt/max shapes: "
            + ", ".join(f"{n} {dynamic[n]}" for n in missing)
            + " (set --dynamic-batch min,opt,max)"
        )
    if not options.profiles:
        return
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in options.profiles.items():
        declared = inputs[name]
        for shape in (lo, opt, hi):
            if len(shape) != len(declared) or any(d >= 0 and s != d for s, d in zip(shape, declared)):
                raise InputError(
                    f"profile shape {shape} for {name!r} does not fit its declared shape {declared} (-1 = dynamic)"
                )
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)


def _load_timing_cache(config: Any, path: Path | None, log: LogFn | None) -> Any:
    """Attach a timing cache (loaded from ``path`` when it exists) to ``config``."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        if log is not None:
            log(f"timing cache {path} was built for another device or TensorRT version; starting an empty one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


# -- trtexec ----------------------------------------------------------------------------------
#: The trtexec argument of every setting a :class:`BuildPlan` can hold, keyed by (plan field,
#: TensorRT member name), in the order they appear on the line. The trtexec line takes every
#: TensorRT setting from the plan through this table only, so a flag cannot be in the plan and
#: missing from the line, or the reverse. ``section`` places the argument on the line:
#: ``precision`` right after ``--saveEngine``, ``device`` after the shapes, ``compatibility`` last.
TRTEXEC_ARGS: Mapping[tuple[str, str], tuple[str, str]] = MappingProxyType(
    {
        ("network_flags", "STRONGLY_TYPED"): ("precision", "--stronglyTyped"),
        ("builder_flags", "INT8"): ("precision", "--int8"),
        ("builder_flags", "FP16"): ("precision", "--fp16"),
        ("default_device_type", "DLA"): ("device", "--useDLACore={dla_core}"),
        ("builder_flags", "GPU_FALLBACK"): ("device", "--allowGPUFallback"),
        ("builder_flags", "VERSION_COMPATIBLE"): ("compatibility", "--versionCompatible"),
        ("hardware_compatibility_level", "AMPERE_PLUS"): ("compatibility", "--hardwareCompatibilityLevel=ampere+"),
    }
)
TRTEXEC_SECTIONS = ("precision", "device", "compatibility")


def plan_settings(plan: BuildPlan) -> tuple[tuple[str, str], ...]:
    """The (plan field, TensorRT member name) of every non-default setting ``plan`` holds."""
    held = [("network_flags", n) for n in plan.network_flags]
    held += [("builder_flags", n) for n in plan.builder_flags]
    if plan.default_device_type != "GPU":
        held.append(("default_device_type", plan.default_device_type))
    if plan.hardware_compatibility_level is not None:
        held.append(("hardware_compatibility_level", plan.hardware_compatibility_level))
    return tuple(held)


def trtexec_plan_args(plan: BuildPlan) -> dict[str, list[str]]:
    """``plan``'s trtexec arguments by section (see :data:`TRTEXEC_ARGS`), in table order.

    A setting without a trtexec argument is an :class:`ExportError` (never dropped silently).
    """
    held = set(plan_settings(plan))
    missing = sorted(held - set(TRTEXEC_ARGS))
    if missing:
        raise ExportError(
            "no trtexec argument for "
            + ", ".join(f"{f} {n}" for f, n in missing)
            + " of the build plan; add it to TRTEXEC_ARGS"
        )
    sections: dict[str, list[str]] = {s: [] for s in TRTEXEC_SECTIONS}
    for key, (section, arg) in TRTEXEC_ARGS.items():
        if key in held:
            sections[section].append(arg.format(dla_core=plan.dla_core))
    return sections


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def _shape_spec(shapes: Mapping[str, Sequence[int]]) -> str:
    # trtexec: names containing ':' or ',' are wrapped in single quotes ('Input:0')
    return ",".join((f"'{n}'" if (":" in n or "," in n) else n) + ":" + _dims(s) for n, s in shapes.items())


def trtexec_for(onnx: str | Path, engine: str | Path, options: BuildOptions, plan: BuildPlan) -> str:
    """The ``trtexec`` command line equivalent to building ``plan`` (shell-quoted, for the manifest).

    Every TensorRT setting comes from ``plan`` through :data:`TRTEXEC_ARGS` (TensorRT >= 11 plans
    hold no precision flags, so none appear); ``options`` adds only what the plan does not hold:
    workspace, timing cache, shapes (``--minShapes/--optShapes/--maxShapes``) and the builder
    optimisation level.
    """
    sections = trtexec_plan_args(plan)
    args = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", *sections["precision"]]
    if options.workspace_mib is not None:
        args.append(f"--memPoolSize=workspace:{int(options.workspace_mib)}M")
    if options.timing_cache is not None:
        args.append(f"--timingCacheFile={options.timing_cache}")
    if options.profiles:
        for flag, idx in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            args.append(f"{flag}=" + _shape_spec({n: s[idx] for n, s in options.profiles.items()}))
    args += sections["device"]
    if options.builder_optimization_level is not None:
        args.append(f"--builderOptimizationLevel={int(options.builder_optimization_level)}")
    args += sections["compatibility"]
    return " ".join(shlex.quote(a) for a in args)
