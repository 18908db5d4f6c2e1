"""Optional backends: availability without importing, lazy imports, and installed versions.

``is_available(name)`` answers with ``importlib.util.find_spec`` only (except ``"cuda"``, which
has to ask torch); ``require(name)`` turns a missing backend into :class:`BackendUnavailable`
with what to install; ``import_backend(name)`` imports it and converts a broken install (e.g. a
missing ``libnvinfer.so``) into the same error. :func:`lazy_import` is the one way a module of
this package names a heavy or optional library at its top without paying for (or failing on)
the import until it is used, as Polygraphy's ``mod.lazy_import`` does.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from types import ModuleType

from cass_deploy.errors import BackendUnavailable, ConfigError


class LazyModule(ModuleType):
    """A stand-in for module ``name`` that imports it on first attribute access.

    With ``backend`` (a key of :data:`MODULES`), a missing or broken install raises
    :class:`BackendUnavailable` with the hint of what to install, instead of ``ImportError``.
    """

    def __init__(self, name: str, backend: str | None = None, purpose: str | None = None) -> None:
        super().__init__(name)
        self.__dict__["_lazy"] = (name, backend, purpose)

    def _load(self) -> ModuleType:
        # sys.modules is asked on every access (a dict lookup), so a module replaced there (a
        # test's stand-in, a reload) is what callers see, as with a plain import statement.
        name, backend, purpose = self.__dict__["_lazy"]
        module = sys.modules.get(name)
        if module is not None:
            return module
        if backend is None:
            return importlib.import_module(name)
        require(backend, purpose)
        try:
            return importlib.import_module(name)
        except ImportError as exc:  # installed but broken (missing shared library, ABI mismatch)
            raise BackendUnavailable(f"{backend} is installed but failed to import ({exc}); {_HINTS[backend]}") from exc

    def __getattr__(self, attr: str):
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())


def lazy_import(name: str, backend: str | None = None, purpose: str | None = None) -> ModuleType:
    """Module ``name`` (``"tensorrt"``, ``"pycuda.driver"``, ``"torch"``), imported when first used.

    ``backend`` names the :data:`MODULES` entry whose install hint a failure should carry.
    """
    if backend is not None:
        _check_name(backend)
    return LazyModule(name, backend, purpose)


#: backend name -> importable top-level module
MODULES: dict[str, str] = {
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "tensorrt": "tensorrt",
    "pycuda": "pycuda",
    "jtop": "jtop",
    "cuda": "torch",  # torch with a visible CUDA device
    "ray": "ray",  # ablate / tune units on Ray (SPEC 7d)
}

_HINTS: dict[str, str] = {
    "torch": "torch is not installed; install cass-deploy (it depends on torch) or use the "
    "ONNX Runtime / TensorRT runners, which do not need it",
    "onnx": "onnx is not installed; pip install 'onnx>=1.16'",
    "onnxruntime": "ONNX Runtime is not installed; pip install onnxruntime (or cass-deploy[gpu] for onnxruntime-gpu)",
    "tensorrt": "TensorRT is not installed; install cass-deploy[trt] on a machine with an NVIDIA "
    "GPU or use the Jetson image in docker/",
    "pycuda": "pycuda is not installed; install cass-deploy[trt] (it brings pycuda) on a machine "
    "with the CUDA toolkit, or use the Jetson image in docker/",
    "jtop": "jetson-stats is not installed; pip install cass-deploy[jetson] on the Jetson "
    "(tegrastats is used instead when it is absent)",
    "cuda": "no CUDA GPU is visible to torch; run on a machine with an NVIDIA GPU and a CUDA build "
    "of torch, or choose a CPU backend",
    "ray": "Ray is not installed; pip install 'cass-deploy[distributed]' (or run the sweep in this process "
    "with --jobs 1)",
}


#: The one version table: label -> distributions that carry its version, first installed wins.
#: TensorRT ships as ``tensorrt`` (meta), per-CUDA wheels and their bindings, or the lean runtime;
#: JetPack installs its Python bindings with apt, without metadata (see MODULE_FALLBACK).
VERSIONS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnxscript": ("onnxscript",),
    "onnxslim": ("onnxslim",),
    "tensorrt": (
        "tensorrt",
        "tensorrt-cu12",
        "tensorrt-cu13",
        "tensorrt-cu12-bindings",
        "tensorrt-cu13-bindings",
        "tensorrt-lean",
    ),
    "pycuda": ("pycuda",),
    "jetson-stats": ("jetson-stats",),
    "ray": ("ray",),
}
#: labels whose module is asked for ``__version__`` when no distribution metadata exists
MODULE_FALLBACK: dict[str, str] = {"tensorrt": "tensorrt", "pycuda": "pycuda"}

_torch = lazy_import("torch")


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
            return bool(_torch.cuda.is_available())
        except ImportError:
            return False
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
        raise BackendUnavailable(f"{name} is installed but failed to import ({exc}); {_HINTS[name]}") from exc


def package_version(*dists: str) -> str | None:
    """Installed version of the first distribution found among ``dists`` (no import)."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def installed_version(label: str) -> str | None:
    """Installed version of a :data:`VERSIONS` label (``"tensorrt"``, ``"onnxruntime"``, ...).

    Distribution metadata first (no import); for the labels in :data:`MODULE_FALLBACK`, the
    module's ``__version__`` when no distribution carries one. ``None`` when not installed or
    when the fallback import fails.
    """
    version = package_version(*VERSIONS.get(label, (label,)))
    module = MODULE_FALLBACK.get(label)
    if version is None and module is not None and _has_module(module):
        try:
            version = str(getattr(importlib.import_module(module), "__version__", "unknown"))
        except Exception:  # noqa: BLE001 - a broken optional install is reported as absent
            return None
    return version


def trt_version() -> str | None:
    """TensorRT version string, or ``None`` when TensorRT is not installed.

    Unlike :func:`installed_version`, an installed but broken TensorRT raises
    :class:`BackendUnavailable` (building an engine needs to know why it cannot).
    """
    if not _has_module("tensorrt"):
        return None
    version = package_version(*VERSIONS["tensorrt"])
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
