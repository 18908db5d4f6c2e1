"""Load a serialized TensorRT engine, with clear errors for a version or device mismatch.

An engine is compiled for one TensorRT version and one GPU. What built it is recorded in the
manifest beside it (:func:`device_facts` -> ``extra.tensorrt.built_on``: TensorRT version, GPU
name and compute capability, CUDA, and on a Jetson the board, L4T / JetPack release and power
mode); :func:`load_engine` compares that with the running device *before*
``deserialize_cuda_engine`` (which only returns ``None`` for a foreign engine) and refuses a
mismatch, naming both. The TensorRT logger used by both the builder
(:mod:`cass_deploy.export.tensorrt_build`) and the runtime lives here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cass_deploy.backends.jetson import nvpmodel_mode, read_board_info
from cass_deploy.backends.probe import import_backend, lazy_import
from cass_deploy.errors import InputError
from cass_deploy.runtime.manifest import MANIFEST_NAME, Manifest

LogFn = Callable[[str], None]
cuda = lazy_import("pycuda.driver", "pycuda")


# -- what built an engine ----------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceFacts:
    """What an engine depends on, of the machine that built it or runs it (None: unknown / not a Jetson).

    ``compute_capability`` is ``"8.7"``; ``cuda`` the CUDA version pycuda was built for and
    ``cuda_driver`` the driver's; ``power_mode`` the nvpmodel mode name.
    """

    tensorrt: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None
    cuda: str | None = None
    cuda_driver: str | None = None
    board: str | None = None
    l4t: str | None = None
    jetpack: str | None = None
    power_mode: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceFacts:
        return cls(**{k: (None if data.get(k) is None else str(data[k])) for k in cls.__dataclass_fields__})


#: facts whose difference makes an engine unloadable (refused before deserialising) ...
ENGINE_BINDING = ("tensorrt", "gpu", "compute_capability", "l4t")
#: ... and facts reported when they differ (the engine loads; numbers may not be comparable)
ENGINE_NOTED = ("cuda", "cuda_driver", "jetpack", "board", "power_mode")


def _cuda_version(value: Any) -> str | None:
    """pycuda's ``get_version()`` tuple ``(12, 6, 0)`` or driver integer ``12060`` -> ``"12.6"``."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return ".".join(str(int(v)) for v in value[:2])
    return f"{int(value) // 1000}.{int(value) % 1000 // 10}"


def device_facts(trt: Any = None, device: int = 0, jetson_root: str | Path = "/") -> DeviceFacts:
    """The running machine's :class:`DeviceFacts` (TensorRT and pycuda imported; CUDA initialised)."""
    trt = trt if trt is not None else _import_trt()
    import_backend("pycuda", "querying the GPU")
    cuda.init()
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    board = read_board_info(jetson_root)
    mode = nvpmodel_mode() if board.is_jetson else None
    return DeviceFacts(
        tensorrt=str(trt.__version__),
        gpu=str(dev.name()),
        compute_capability=f"{int(major)}.{int(minor)}",
        cuda=_cuda_version(cuda.get_version()),
        cuda_driver=_cuda_version(cuda.get_driver_version()),
        board=board.model if board.is_jetson else None,
        l4t=board.l4t,
        jetpack=board.jetpack,
        power_mode=getattr(mode, "name", None),
    )


def compare_device(
    built: DeviceFacts, running: DeviceFacts, *, version_compatible: bool = False, hardware_compatible: bool = False
) -> tuple[list[str], list[str]]:
    """``(refusals, notes)``: each a ``"<fact>: built with X, running Y"`` line.

    Facts of :data:`ENGINE_BINDING` refuse, those of :data:`ENGINE_NOTED` are noted; a fact unknown
    on either side is not compared. A version-compatible engine loads on a TensorRT of the same
    major at least as new; a hardware-compatible (Ampere+) one on any GPU of compute capability 8.0+.
    """
    refusals, notes = [], []
    for name in ENGINE_BINDING + ENGINE_NOTED:
        a, b = getattr(built, name), getattr(running, name)
        if a is None or b is None or a == b:
            continue
        line = f"{name.replace('_', ' ')}: built with {a}, running {b}"
        if name == "tensorrt" and version_compatible and _same_major_not_older(a, b):
            notes.append(line + " (version-compatible engine)")
        elif name in ("gpu", "compute_capability") and hardware_compatible and _ampere_plus(running):
            notes.append(line + " (hardware-compatible engine)")
        elif name in ENGINE_BINDING:
            refusals.append(line)
        else:
            notes.append(line)
    return refusals, notes


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def _same_major_not_older(built: str, running: str) -> bool:
    a, b = _version_tuple(built), _version_tuple(running)
    return bool(a) and bool(b) and a[0] == b[0] and b >= a


def _ampere_plus(running: DeviceFacts) -> bool:
    cc = running.compute_capability
    return cc is not None and _version_tuple(cc) >= (8, 0)


def check_engine_device(path: Path, running: DeviceFacts) -> list[str]:
    """Compare the ``built_on`` facts in the manifest beside engine ``path`` with ``running``.

    Returns the notes (facts that differ without making the engine unloadable); raises
    :class:`InputError` (exit 2) naming both sides when the engine cannot run here. An engine
    without such a manifest (``trtexec --saveEngine``, older exports) is not checked.
    """
    manifest_file = path.parent / MANIFEST_NAME
    if not manifest_file.is_file():
        return []
    man = Manifest.read(manifest_file)
    if man.artefact_file("engine") != path.name or man.engine_built_on is None:
        return []
    plan = (man.extra.get("tensorrt") or {}).get("plan") or {}
    refusals, notes = compare_device(
        DeviceFacts.from_dict(man.engine_built_on),
        running,
        version_compatible="VERSION_COMPATIBLE" in (plan.get("builder_flags") or ()),
        hardware_compatible=plan.get("hardware_compatibility_level") is not None,
    )
    if refusals:
        raise InputError(
            f"the engine {path} was built for another device or TensorRT (per {manifest_file}): "
            + "; ".join(refusals)
            + ". Engines are not portable across TensorRT versions or GPUs: rebuild it here from the ONNX "
            f"(cass-deploy export {path.parent} --engine --out NEW_DIR)"
        )
    return notes


# -- TensorRT --------------------------------------------------------------------------------
def _import_trt() -> Any:

    return import_backend("tensorrt", "building or loading a TensorRT engine")


def _make_logger(trt: Any, log: LogFn | None) -> Any:
    """A ``trt.ILogger`` that keeps warnings/errors (for error messages) and forwards to ``log``."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:  # called by TensorRT; must not raise
            try:
                label = {
                    trt.Logger.INTERNAL_ERROR: "internal error",
                    trt.Logger.ERROR: "error",
                    trt.Logger.WARNING: "warning",
                }.get(severity)
                if label is not None:
                    self.messages.append(f"[{label}] {msg}")
                if log is not None and (label is not None or severity == trt.Logger.INFO):
                    log(f"TensorRT {label or 'info'}: {msg}")
            except Exception:  # noqa: BLE001 - an exception here would abort inside C++
                pass

        def errors(self) -> list[str]:
            return [m for m in self.messages if not m.startswith("[warning]")]

    return _Logger()


@dataclass
class LoadedEngine:
    """A deserialized ``ICudaEngine`` with the runtime and logger it must not outlive."""

    engine: Any
    runtime: Any
    logger: Any
    path: Path
    trt_version: str
    notes: tuple[str, ...] = ()  # facts that differ from the build machine without blocking the load


def load_engine(path: str | Path, log: LogFn | None = None, device: int = 0) -> LoadedEngine:
    """Deserialize an engine file; a version or device mismatch is a clear :class:`InputError`.

    First the manifest beside the engine (when it records what built it) is compared with this
    machine (:func:`check_engine_device`). ``IRuntime.deserialize_cuda_engine`` returns ``None``
    (no exception) for an engine built by another TensorRT version or for another GPU; the
    message then names the TensorRT we run and, from the manifest, what the engine was built with.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"TensorRT engine {path} does not exist")
    trt = _import_trt()
    notes = tuple(check_engine_device(path, device_facts(trt, device)))
    if log is not None:
        for note in notes:
            log(f"note: {note}")
    logger = _make_logger(trt, log)
    runtime = trt.Runtime(logger)
    try:
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
    except Exception as exc:  # some builds raise instead of returning None
        logger.messages.append(f"[error] {type(exc).__name__}: {exc}")
        engine = None
    if engine is None:
        raise InputError(engine_mismatch_message(path, str(trt.__version__), logger.errors()))
    return LoadedEngine(
        engine=engine, runtime=runtime, logger=logger, path=path, trt_version=str(trt.__version__), notes=notes
    )


def engine_mismatch_message(path: Path, trt_version: str, errors: Sequence[str] = ()) -> str:
    """Explain why an engine could not be deserialized (pure; used by :func:`load_engine`)."""
    built_with = ""
    manifest_file = path.parent / MANIFEST_NAME
    if manifest_file.is_file():
        try:
            manifest = Manifest.read(manifest_file)
            version = manifest.trt_version
            device = manifest.built_on_device
            if version or device:
                built_with = (
                    " It was built with TensorRT "
                    + (version or "(unknown version)")
                    + (f" on {device}" if device else "")
                    + f" (per {manifest_file})."
                )
        except InputError as exc:
            built_with = f" (The manifest beside it could not be read: {exc})"
    detail = ("\n  TensorRT said: " + "\n  ".join(errors)) if errors else ""
    return (
        f"TensorRT {trt_version} could not deserialize the engine {path}: it was built by "
        f"another TensorRT version or for another GPU, or the file is not an engine."
        f"{built_with} Engines are not portable across TensorRT versions or devices: rebuild "
        f"it on this machine from the ONNX (cass-deploy export ... --engine).{detail}"
    )
