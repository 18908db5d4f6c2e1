"""Load a serialized TensorRT engine, with clear errors for a version or device mismatch.

The TensorRT logger used by both the builder (:mod:`cass_deploy.export.tensorrt_build`) and the
runtime lives here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cass_deploy.backends.probe import import_backend
from cass_deploy.errors import InputError
from cass_deploy.runtime.manifest import MANIFEST_NAME, Manifest

LogFn = Callable[[str], None]


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


def load_engine(path: str | Path, log: LogFn | None = None) -> LoadedEngine:
    """Deserialize an engine file; a version or device mismatch is a clear :class:`InputError`.

    ``IRuntime.deserialize_cuda_engine`` returns ``None`` (no exception) for an engine built by
    another TensorRT version or for another GPU; the message names the TensorRT we run and, when
    a ``manifest.json`` sits beside the engine, the version and device it was built with.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"TensorRT engine {path} does not exist")
    trt = _import_trt()
    logger = _make_logger(trt, log)
    runtime = trt.Runtime(logger)
    try:
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
    except Exception as exc:  # some builds raise instead of returning None
        logger.messages.append(f"[error] {type(exc).__name__}: {exc}")
        engine = None
    if engine is None:
        raise InputError(engine_mismatch_message(path, str(trt.__version__), logger.errors()))
    return LoadedEngine(engine=engine, runtime=runtime, logger=logger, path=path, trt_version=str(trt.__version__))


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
