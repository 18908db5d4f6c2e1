"""What an export is asked to do: the settings of ``cass-deploy export`` and of deployment profiles."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cass_deploy.backends.limits import PRECISIONS
from cass_deploy.errors import InputError
from cass_deploy.export.profiles import load_profile


@dataclass
class ExportRequest:
    """What to export. ``target`` names a row of ``export.limits`` (checked before building)."""

    checkpoint: Path
    out: Path
    parts: str = "full"
    precision: str = "fp32"
    batch: int = 1
    dynamic_batch: tuple[int, int, int] | None = None
    opset: int = 17
    simplify: bool = True
    image_size: tuple[int, int] | None = None
    pruner_mode: str | None = None
    keep_ratio: float | None = None
    keep_predictor_fp32: bool = True
    calib_data: str = "synthetic"
    calib_images: int = 32
    calib_method: str = "minmax"
    target: str | None = None
    engine: bool = False
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    strongly_typed: bool | None = None
    profile: str | None = None
    force: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:

        if self.parts not in ("predictor", "full"):
            raise InputError(f"--parts must be 'predictor' or 'full', got {self.parts!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise InputError(f"--batch must be an integer >= 1, got {self.batch!r}")
        if self.dynamic_batch is not None:
            lo, opt, hi = self.dynamic_batch
            if not (1 <= lo <= opt <= hi):
                raise InputError(f"--dynamic-batch needs 1 <= min <= opt <= max, got {list(self.dynamic_batch)}")
            if hi < 2:
                raise InputError(f"--dynamic-batch {list(self.dynamic_batch)} allows only batch 1; use --batch 1")
        if self.precision == "int8" and self.calib_images < 1:
            raise InputError(f"--calib-images must be >= 1 for int8, got {self.calib_images}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) <= 0):
            raise InputError(f"--image-size must be two positive integers H W, got {self.image_size!r}")


def apply_profile(req_kwargs: dict[str, Any], profile_name: str | None) -> dict[str, Any]:
    """Fill unset request fields from an export profile (explicit flags win)."""
    if not profile_name:
        return req_kwargs

    prof = load_profile(profile_name)
    defaults = {"image_size": tuple(prof.image_size), "batch": prof.batch,
                "dynamic_batch": tuple(prof.dynamic_batch) if prof.dynamic_batch else None,
                "precision": prof.precision, "workspace_mib": prof.workspace_mib, "dla_core": prof.dla_core,
                "gpu_fallback": prof.gpu_fallback, "keep_ratio": prof.keep_ratio, "pruner_mode": prof.pruner_mode,
                "opset": prof.opset, "simplify": prof.simplify,
                "target": None if prof.target == "tensorrt" else "onnxruntime-cpu"}
    merged = dict(req_kwargs)
    for k, v in defaults.items():
        if merged.get(k) is None:
            merged[k] = v
    if prof.target == "tensorrt" and merged.get("engine") is None:
        merged["engine"] = True
    merged["profile"] = prof.name
    return merged


def request_from(**kwargs: Any) -> ExportRequest:
    """ExportRequest from keyword args, dropping ``None`` so dataclass defaults apply."""
    names = {f.name for f in dataclasses.fields(ExportRequest)}
    return ExportRequest(**{k: v for k, v in kwargs.items() if k in names and v is not None})
