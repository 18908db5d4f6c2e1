"""Class names, integer labels and the category-name maps used by the dataset loaders.

Labels are fixed across every dataset: ``car=0, truck=1, bus=2, pedestrian=3``, so a model
trained on synthetic scenes is evaluated on COCO or KITTI data with the same label ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import yaml

from cass_deploy.errors import ConfigError, InputError

CLASSES: tuple[str, ...] = ("car", "truck", "bus")
"""The vehicle classes (labels 0, 1, 2); the default class list everywhere."""

ALL_CLASSES: tuple[str, ...] = CLASSES + ("pedestrian",)
"""Every class a dataset may produce; ``pedestrian`` (label 3) only when enabled or mapped."""

DEFAULT_COCO_CLASS_MAP: dict[str, str] = {
    "car": "car",
    "van": "car",
    "minivan": "car",
    "suv": "car",
    "truck": "truck",
    "lorry": "truck",
    "bus": "bus",
    "coach": "bus",
}
"""COCO category name -> class (matched case-insensitively); categories not listed are dropped."""

DEFAULT_KITTI_CLASS_MAP: dict[str, str] = {
    "Car": "car",
    "Van": "car",
    "Truck": "truck",
    "Bus": "bus",
}
"""KITTI / DAIR-V2X-I / Rope3D ``type`` -> class (matched case-insensitively); DontCare, Pedestrian,
Cyclist, Misc, Tram ... are dropped."""


def class_names(include_pedestrian: bool = False) -> tuple[str, ...]:
    """``("car", "truck", "bus")`` plus ``"pedestrian"`` when asked."""
    return ALL_CLASSES if include_pedestrian else CLASSES


def label_of(name: str) -> int:
    """Integer label of a class name; ConfigError for an unknown one."""
    try:
        return ALL_CLASSES.index(name)
    except ValueError:
        raise ConfigError(f"unknown class {name!r}; classes are {list(ALL_CLASSES)}") from None


def resolve_class_map(class_map: Mapping[str, str | None] | None, default: Mapping[str, str]) -> dict[str, int]:
    """Validate a ``source name -> class name`` map; return ``lower-cased source name -> label``.

    ``class_map=None`` uses ``default``; a given map replaces it (it does not extend it). A value
    of ``None`` drops that source name explicitly. Targets must be in :data:`ALL_CLASSES`.
    """
    mapping = default if class_map is None else class_map
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"class_map must be a mapping of category name -> class name, got {type(mapping).__name__}")
    out: dict[str, int] = {}
    for src, dst in mapping.items():
        if not isinstance(src, str) or not src:
            raise ConfigError(f"class_map key must be a non-empty string, got {src!r}")
        if dst is None:
            continue
        label = label_of(dst) if isinstance(dst, str) else None
        if label is None:
            raise ConfigError(f"class_map[{src!r}] must be a class name, got {dst!r}")
        key = src.lower()
        if key in out and out[key] != label:
            raise ConfigError(
                f"class_map maps {src!r} to {dst!r} but a name differing only in case to {ALL_CLASSES[out[key]]!r}"
            )
        out[key] = label
    if not out:
        raise ConfigError("class_map keeps no category; map at least one name to a class")
    return out


def classes_of(label_map: Mapping[str, int]) -> tuple[str, ...]:
    """The class names a resolved map can produce, in label order (``car, truck, bus[, pedestrian]``)."""
    top = max(label_map.values())
    return ALL_CLASSES[: max(top + 1, len(CLASSES))]


#: a ``--class-map`` value that leaves a model class unscored on purpose (no note)
UNSCORED = ("none", "null", "-")


def parse_class_map(text: str | Mapping[str, str | None] | None) -> dict[str, str | None] | None:
    """``--class-map``: ``"vehicle=car,lorry=truck"``, an inline JSON object, or a JSON / YAML file
    of ``model class name -> dataset class`` (one of :data:`ALL_CLASSES`; ``none`` / ``null`` /
    ``-`` leaves that class unscored on purpose). Returns the mapping (target None: unscored), or
    None for no map. InputError (exit 2) names a malformed entry or an unknown class."""
    if text is None:
        return None
    raw: object
    if isinstance(text, Mapping):
        raw = dict(text)
    elif str(text).strip().startswith("{"):
        try:
            raw = json.loads(str(text))
        except json.JSONDecodeError as exc:
            raise InputError(f"--class-map {text!r} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    elif "=" in str(text):
        pairs = [p.strip() for p in str(text).split(",") if p.strip()]
        bad = [p for p in pairs if p.count("=") != 1 or not p.split("=")[0].strip()]
        if bad:
            raise InputError(f"--class-map entry {bad[0]!r} is not NAME=CLASS (e.g. vehicle=car)")
        raw = {a.strip(): b.strip() for a, b in (p.split("=") for p in pairs)}
    else:
        raw = _read_map_file(Path(str(text)))
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"--class-map must map model class names to classes, got {raw!r}")
    out: dict[str, str | None] = {}
    for src, dst in raw.items():
        target = None if dst is None or str(dst).lower() in UNSCORED else str(dst).lower()
        if target is not None and target not in ALL_CLASSES:
            raise InputError(f"--class-map {src}={dst}: {dst!r} is not a class; classes are {list(ALL_CLASSES)}")
        out[str(src)] = target
    return out


def _read_map_file(path: Path) -> object:
    if not path.is_file():
        raise InputError(f"--class-map {str(path)!r}: neither NAME=CLASS pairs, a JSON object nor a JSON / YAML file")
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"--class-map file {path} cannot be read: {str(exc).splitlines()[0]}") from None
