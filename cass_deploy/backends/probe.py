"""Lazy availability probes for optional backends (no heavy import to ask).

``is_available(name)`` answers with ``importlib.util.find_spec`` only (except ``"cuda"``, which
has to ask torch); ``require(name)`` turns a missing backend into :class:`BackendUnavailable`
with what to install; ``import_backend(name)`` imports it and converts a broken install (e.g. a
missing ``libnvinfer.so``) into the same error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from types import ModuleType

from cass_deploy.errors import BackendUnavailable, ConfigError

#: backend name -> importable top-level module
MODULES: dict[str, str] = {
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "tensorrt": "tensorrt",
    "pycuda": "pycuda",
    "jtop": "jtop",
    "cuda": "torch",  # torch with a visible CUDA device
}

_HINTS: dict[str, str] = {
    "torch": "torch is not installed; install cass-deploy (it depends on torch) or use the "
             "ONNX Runtime / TensorRT runners, which do not need it",
    "onnx": "onnx is not installed; pip install 'onnx>=1.16'",
    "onnxruntime": "ONNX Runtime is not installed; pip install onnxruntime "
                   "(or cass-deploy[gpu] for onnxruntime-gpu)",
    "tensorrt": "TensorRT is not installed; install cass-deploy[trt] on a machine with an NVIDIA "
                "GPU or use the Jetson image in docker/",
    "pycuda": "pycuda is not installed; install cass-deploy[trt] (it brings pycuda) on a machine "
              "with the CUDA toolkit, or use the Jetson image in docker/",
    "jtop": "jetson-stats is not installed; pip install cass-deploy[jetson] on the Jetson "
            "(tegrastats is used instead when it is absent)",
    "cuda": "no CUDA GPU is visible to torch; run on a machine with an NVIDIA GPU and a CUDA build "
            "of torch, or choose a CPU backend",
}


def _check_name(name: str) -> None:
    if name not in MODULES:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(sorted(MODULES))}")


def _has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package or a bad __spec__
        return False


def is_available(name: str) -> bool:
    """True if backend ``name`` can be imported (``"cuda"``: torch sees a CUDA device)."""
    _check_name(name)
    if not _has_module(MODULES[name]):
        return False
    if name == "cuda":
        try:
            import torch
        except ImportError:
            return False
        return bool(torch.cuda.is_available())
    return True


def available_backends() -> dict[str, bool]:
    """``{name: is_available(name)}`` for every known backend (for ``cass-deploy env``)."""
    return {name: is_available(name) for name in MODULES}


def require(name: str, purpose: str | None = None) -> None:
    """Raise :class:`BackendUnavailable` with an actionable message if ``name`` is missing."""
    if not is_available(name):
        prefix = f"{purpose} needs {name}: " if purpose else ""
        raise BackendUnavailable(prefix + _HINTS[name])


def import_backend(name: str, purpose: str | None = None) -> ModuleType:
    """Import and return backend ``name`` (``"cuda"`` returns torch); errors are actionable."""
    require(name, purpose)
    try:
        return importlib.import_module(MODULES[name])
    except ImportError as exc:  # installed but broken (missing shared library, ABI mismatch)
        raise BackendUnavailable(
            f"{name} is installed but failed to import ({exc}); {_HINTS[name]}") from exc


def package_version(*dists: str) -> str | None:
    """Installed version of the first distribution found among ``dists`` (no import)."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def trt_version() -> str | None:
    """TensorRT version string, or ``None`` when TensorRT is not installed."""
    if not _has_module("tensorrt"):
        return None
    version = package_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs")
    if version is None:  # apt / JetPack installs may carry no dist metadata: ask the module
        version = getattr(import_backend("tensorrt"), "__version__", None)
    return version


def trt_major_version() -> int | None:
    """Major TensorRT version (10, 11, ...) or ``None`` when TensorRT is not installed."""
    version = trt_version()
    if version is None:
        return None
    try:
        return int(version.split(".")[0])
    except ValueError as exc:
        raise BackendUnavailable(f"cannot parse the TensorRT version {version!r}") from exc
