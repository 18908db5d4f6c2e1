"""What is installed and which backends can run here: ``cass-deploy env``.

``collect()`` never raises because an optional package is missing or broken: each probe turns
its failure into ``None`` or a ``usable: False`` with the reason. torch, onnxruntime, tensorrt
and pycuda are lazy modules, imported by the probes only when installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from pathlib import Path
from typing import Any

from cass_deploy import __version__
from cass_deploy.backends.jetson import nvpmodel_mode, read_board_info, run_tool
from cass_deploy.backends.probe import VERSIONS, installed_version, lazy_import

torch = lazy_import("torch")
ort = lazy_import("onnxruntime")
trt = lazy_import("tensorrt")
cuda = lazy_import("pycuda.driver")

#: what ``cass-deploy env`` reports: every label of the one version table
PACKAGES = tuple(VERSIONS)

BACKENDS = ("torch-cpu", "torch-cuda", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def package_version(key: str) -> str | None:
    """Installed version of ``key`` (a label of :data:`cass_deploy.backends.probe.VERSIONS`) or None."""
    return installed_version(key)


def _torch_info() -> dict[str, Any] | None:
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        info: dict[str, Any] = {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cuda_available": False,
            "gpus": [],
        }
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, never raised
        return {"error": f"import failed: {exc}"}
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["cudnn"] = torch.backends.cudnn.version()
    except Exception as exc:
        info["error"] = f"CUDA query failed: {exc}"
    return info


def _onnxruntime_info() -> dict[str, Any] | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    try:
        return {
            "version": ort.__version__,
            "providers": list(ort.get_available_providers()),
            "device": ort.get_device(),
        }
    except Exception as exc:
        return {"error": f"import failed: {exc}", "providers": []}


def _tensorrt_info() -> dict[str, Any] | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        return {"version": trt.__version__}
    except Exception as exc:
        return {"error": f"import failed: {exc}"}


def _pycuda_info() -> dict[str, Any] | None:
    if importlib.util.find_spec("pycuda") is None:
        return None
    try:
        cuda.init()
        count = cuda.Device.count()
        return {"devices": [cuda.Device(i).name() for i in range(count)], "driver_version": cuda.get_driver_version()}
    except Exception as exc:
        return {"error": f"CUDA driver not usable through pycuda: {exc}", "devices": []}


def nvidia_smi(timeout: float = 10.0) -> list[dict[str, str]] | None:
    """GPUs from ``nvidia-smi --query-gpu`` (None when absent or failing; Jetson has none)."""

    fields = ("name", "driver_version", "memory.total", "compute_cap")
    out = run_tool(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"], timeout=timeout)
    if out is None:  # older drivers lack compute_cap
        fields = fields[:3]
        out = run_tool(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"], timeout=timeout)
    if out is None:
        return None
    gpus = []
    for line in out.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) == len(fields):
            gpus.append(dict(zip(fields, values)))
    return gpus


def _usable(ok: bool, reason: str) -> dict[str, Any]:
    return {"usable": bool(ok), "reason": reason}


def backend_table(
    torch_info: dict | None, ort_info: dict | None, trt_info: dict | None, pycuda_info: dict | None
) -> dict[str, dict[str, Any]]:
    """For each backend in BACKENDS: ``{"usable": bool, "reason": str}`` from the probe results."""
    out: dict[str, dict[str, Any]] = {}
    if torch_info is None:
        out["torch-cpu"] = _usable(False, "torch is not installed")
        out["torch-cuda"] = _usable(False, "torch is not installed")
    elif "version" not in torch_info:
        out["torch-cpu"] = _usable(False, torch_info.get("error", "torch import failed"))
        out["torch-cuda"] = out["torch-cpu"]
    else:
        out["torch-cpu"] = _usable(True, f"torch {torch_info['version']}")
        if torch_info.get("cuda_available"):
            out["torch-cuda"] = _usable(
                True, f"CUDA {torch_info['cuda_build']}: " + ", ".join(torch_info.get("gpus") or [])
            )
        elif not torch_info.get("cuda_build"):
            out["torch-cuda"] = _usable(False, f"torch {torch_info['version']} is a CPU-only build")
        else:
            out["torch-cuda"] = _usable(
                False,
                torch_info.get("error", f"torch built for CUDA {torch_info['cuda_build']} but sees no CUDA device"),
            )
    providers = (ort_info or {}).get("providers", [])
    for name, provider in (
        ("onnxruntime-cpu", "CPUExecutionProvider"),
        ("onnxruntime-cuda", "CUDAExecutionProvider"),
        ("onnxruntime-tensorrt", "TensorrtExecutionProvider"),
    ):
        if ort_info is None:
            out[name] = _usable(False, "onnxruntime is not installed")
        elif provider in providers:
            note = "" if name == "onnxruntime-cpu" else " (listed; its CUDA libraries load at session creation)"
            out[name] = _usable(True, f"onnxruntime {ort_info.get('version')}: {provider}{note}")
        else:
            hint = "" if name == "onnxruntime-cpu" else "; install onnxruntime-gpu (cass-deploy[gpu])"
            out[name] = _usable(
                False, ort_info.get("error") or f"{provider} not in onnxruntime's available providers{hint}"
            )
    if trt_info is None:
        out["tensorrt"] = _usable(
            False,
            "TensorRT is not installed; install cass-deploy[trt] on a "
            "machine with an NVIDIA GPU (on Jetson it comes with JetPack)",
        )
    elif "version" not in trt_info:
        out["tensorrt"] = _usable(False, trt_info.get("error", "tensorrt import failed"))
    elif pycuda_info is None:
        out["tensorrt"] = _usable(
            False, f"TensorRT {trt_info['version']} found but pycuda is not installed (pip install pycuda)"
        )
    elif not pycuda_info.get("devices"):
        out["tensorrt"] = _usable(False, pycuda_info.get("error", "pycuda sees no CUDA device"))
    else:
        out["tensorrt"] = _usable(True, f"TensorRT {trt_info['version']} on " + ", ".join(pycuda_info["devices"]))
    return out


def collect(jetson_root: str | Path = "/") -> dict[str, Any]:
    """Versions, devices and backend usability as one JSON-able dict."""

    torch_info = _torch_info()
    ort_info = _onnxruntime_info()
    trt_info = _tensorrt_info()
    pycuda_info = _pycuda_info()
    board = read_board_info(jetson_root)
    jetson = board.to_dict()
    if board.is_jetson:
        mode = nvpmodel_mode()
        jetson["power_mode"] = mode.to_dict() if mode else None
    return {
        "cass_deploy": __version__,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": {key: package_version(key) for key in PACKAGES},
        "torch": torch_info,
        "onnxruntime": ort_info,
        "tensorrt": trt_info,
        "pycuda": pycuda_info,
        "nvidia_smi": nvidia_smi(),
        "jetson": jetson,
        "backends": backend_table(torch_info, ort_info, trt_info, pycuda_info),
    }


__all__ = ["collect", "package_version", "nvidia_smi", "backend_table", "PACKAGES", "BACKENDS"]
