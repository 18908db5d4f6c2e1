"""Export target profiles: one YAML per device (Jetson Orin Nano / NX / AGX, x86 GPU, CPU).

A profile fixes what an engine build needs to know in advance: input size, batch (or a dynamic
batch range), precision, workspace, DLA, keep ratio and pruner mode, opset. Those fields are the
export settings a profile shares with a request: they, their types and the profile defaults come
from ``export.settings.SETTINGS`` (:class:`~cass_deploy.export.settings.ProfileSettings`); the
profile adds its own (name, description, target, device, timing_cache, memory bandwidth, patch).
Load one by name (``load_profile("jetson-orin-nx")``) or from a YAML path. Profiles are validated
on load: the input must tile into whole patches, and a TensorRT profile with a ``global`` pruner
must keep its ``k`` (the pruner's ``compute_k``) within TensorRT's TopK limit, checked by
``backends.limits.check_request``, the one source of backend limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cass_deploy.backends.limits import PRECISIONS, PRUNER_MODES, check_request
from cass_deploy.config import check_choice, from_dict, load_mapping, to_dict
from cass_deploy.errors import ConfigError, InputError, LimitError
from cass_deploy.export.settings import ProfileSettings
from cass_deploy.model.interface import compute_k

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

TARGETS = ("tensorrt", "onnxruntime")
DEVICES = ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "x86-gpu", "cpu")
# DLA cores per device (Orin Nano has none; Orin NX 8GB has one, 16GB two; AGX Orin two).
DLA_CORES = {"jetson-orin-nano": 0, "jetson-orin-nx": 2, "jetson-agx-orin": 2, "x86-gpu": 0, "cpu": 0}
OPSET_RANGE = (17, 23)


@dataclass(frozen=True, kw_only=True)
class ExportProfile(ProfileSettings):
    """One deployment target. ``image_size`` is ``(H, W)`` in pixels of the network input.

    The settings shared with a request (the ``SETTINGS`` rows with a ``profile`` default, e.g.
    ``dynamic_batch`` as ``(min, opt, max)``) are inherited from :class:`ProfileSettings`; the
    fields below are the profile's own.
    """

    name: str
    description: str
    target: str
    device: str
    timing_cache: bool = True  # keep a timing cache beside the engine
    memory_bandwidth_gbs: float | None = None  # informational (PLATFORM-NOTES.md)
    patch_size: int = 16

    def __post_init__(self) -> None:
        where = f"export profile {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"export profile name must be a non-empty string, got {self.name!r}")
        check_choice(f"{where}: target", self.target, TARGETS)
        check_choice(f"{where}: device", self.device, DEVICES)
        check_choice(f"{where}: precision", self.precision, PRECISIONS)
        check_choice(f"{where}: pruner_mode", self.pruner_mode, PRUNER_MODES)
        self._check_input_size(where)
        self._check_batch(where)
        if self.workspace_mib is not None:
            _positive_int(where, "workspace_mib", self.workspace_mib)
        if (
            isinstance(self.keep_ratio, bool)
            or not isinstance(self.keep_ratio, (int, float))
            or not 0 < self.keep_ratio <= 1
        ):
            raise ConfigError(f"{where}: keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if (
            isinstance(self.opset, bool)
            or not isinstance(self.opset, int)
            or not OPSET_RANGE[0] <= self.opset <= OPSET_RANGE[1]
        ):
            raise ConfigError(f"{where}: opset must be an integer in {list(OPSET_RANGE)}, got {self.opset!r}")
        if self.dla_core is not None:
            self._check_dla(where)
        if self.memory_bandwidth_gbs is not None and (
            isinstance(self.memory_bandwidth_gbs, bool)
            or not isinstance(self.memory_bandwidth_gbs, (int, float))
            or self.memory_bandwidth_gbs <= 0
        ):
            raise ConfigError(f"{where}: memory_bandwidth_gbs must be > 0 or null, got {self.memory_bandwidth_gbs!r}")
        # a band pruner's per-band k depends on the model's bands, so only the export can check it
        if self.target == "tensorrt" and self.pruner_mode == "global":
            self._check_topk(where)

    def _check_input_size(self, where: str) -> None:
        """``patch_size`` and ``image_size`` positive integers, the input tiling into whole patches."""
        _positive_int(where, "patch_size", self.patch_size)
        if len(self.image_size) != 2:
            raise ConfigError(f"{where}: image_size must be [H, W], got {list(self.image_size)!r}")
        for axis, v in zip("HW", self.image_size):
            _positive_int(where, f"image_size {axis}", v)
            if v % self.patch_size:
                raise ConfigError(
                    f"{where}: image_size {axis}={v} is not a multiple of the patch "
                    f"size {self.patch_size}; pad or resize to "
                    f"{math.ceil(v / self.patch_size) * self.patch_size}"
                )

    def _check_batch(self, where: str) -> None:
        """``batch`` a positive integer, within ``dynamic_batch`` ``[min, opt, max]`` when there is one."""
        _positive_int(where, "batch", self.batch)
        if self.dynamic_batch is None:
            return
        lo, opt, hi = self.dynamic_batch
        for label, v in (("min", lo), ("opt", opt), ("max", hi)):
            _positive_int(where, f"dynamic_batch {label}", v)
        if not lo <= opt <= hi:
            raise ConfigError(
                f"{where}: dynamic_batch must be [min, opt, max] with "
                f"min <= opt <= max, got {list(self.dynamic_batch)!r}"
            )
        if not lo <= self.batch <= hi:
            raise ConfigError(f"{where}: batch {self.batch} is outside dynamic_batch {list(self.dynamic_batch)!r}")

    def _check_dla(self, where: str) -> None:
        """A ``dla_core``: a TensorRT target, a core the device has, fp16 / int8, a fixed batch."""
        if self.target != "tensorrt":
            raise ConfigError(f"{where}: dla_core needs target tensorrt, got {self.target!r}")
        cores = DLA_CORES[self.device]
        if (
            isinstance(self.dla_core, bool)
            or not isinstance(self.dla_core, int)
            or not 0 <= self.dla_core < max(cores, 1)
            or cores == 0
        ):
            raise ConfigError(
                f"{where}: device {self.device} has {cores} DLA core(s); dla_core {self.dla_core!r} is not one of them"
            )
        if self.precision == "fp32":
            raise ConfigError(
                f"{where}: DLA computes in fp16 or int8 only; set precision "
                f"fp16 or int8, or dla_core null to build for the GPU"
            )
        if self.dynamic_batch is not None:
            raise ConfigError(
                f"{where}: DLA engines have no dynamic dimensions; set dynamic_batch null with dla_core {self.dla_core}"
            )

    def _check_topk(self, where: str) -> None:
        """A global pruner's ``k`` within TensorRT's TopK limit (the same in every TensorRT version)."""
        try:
            check_request(
                "tensorrt10",
                k=self.topk_k(),
                image_size=self.image_size,
                patch_size=self.patch_size,
                pruner_mode=self.pruner_mode,
                keep_ratio=self.keep_ratio,
            )
        except LimitError as exc:
            raise LimitError(f"{where}: {exc}") from exc

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(Hp, Wp)``."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    def num_patches(self) -> int:
        """``P = Hp * Wp``."""
        hp, wp = self.grid
        return hp * wp

    def topk_k(self) -> int:
        """``k = ceil(keep_ratio * P)``, computed by the pruner's own ``compute_k`` (SPEC §6)."""
        return compute_k(self.keep_ratio, self.num_patches())

    def max_batch(self) -> int:
        return self.dynamic_batch[2] if self.dynamic_batch is not None else self.batch

    def to_dict(self) -> dict[str, Any]:
        out = to_dict(self)
        out["grid"] = list(self.grid)
        out["num_patches"] = self.num_patches()
        out["k"] = self.topk_k()
        return out


def _positive_int(where: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {name} must be an integer >= 1, got {value!r}")


def list_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_from_mapping(data: dict[str, Any], default_name: str | None = None) -> ExportProfile:
    """Build a profile from a mapping (unknown keys are a ConfigError)."""
    data = dict(data)
    if default_name is not None:
        data.setdefault("name", default_name)
    missing = [k for k in ("name", "description", "target", "device", "image_size") if k not in data]
    if missing:
        raise ConfigError(f"export profile {data.get('name', default_name)!r} is missing {', '.join(missing)}")
    return from_dict(ExportProfile, data)


def load_profile(name_or_path: str | Path) -> ExportProfile:
    """A shipped profile by name (``"jetson-orin-nx"``) or a YAML/JSON file by path."""
    text = str(name_or_path)
    path = Path(text)
    looks_like_path = path.suffix.lower() in (".yaml", ".yml", ".json") or path.parent != Path(".")
    if looks_like_path or path.is_file():
        if not path.is_file():
            raise InputError(f"export profile file not found: {path}")
        return profile_from_mapping(load_mapping(path), default_name=path.stem)
    shipped = PROFILE_DIR / f"{text}.yaml"
    if not shipped.is_file():
        raise InputError(
            f"unknown export profile {text!r}; available: {', '.join(list_profiles())} "
            f"(or pass the path of a YAML file)"
        )
    return profile_from_mapping(load_mapping(shipped), default_name=text)


__all__ = [
    "ExportProfile",
    "load_profile",
    "list_profiles",
    "profile_from_mapping",
    "TARGETS",
    "DEVICES",
    "PRECISIONS",
    "PRUNER_MODES",
    "DLA_CORES",
    "PROFILE_DIR",
]
