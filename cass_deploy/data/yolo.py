"""YOLO-format datasets (as Ultralytics writes them): ``images/`` + ``labels/<stem>.txt``.

One text file per image, one object per line, normalised to the image::

    class cx cy w h

``class`` is an integer id. Ids are mapped to this project's classes with an id map (default
:data:`DEFAULT_YOLO_CLASS_MAP`: COCO ids 2 car, 5 bus, 7 truck, the ids COCO-trained YOLO models
and most roadside YOLO sets use). With ``data.yaml`` (``names: [..]`` or ``names: {id: name}``)
or a class-names file (``classes.txt`` / ``*.names``, one name a line) beside ``images/``, ids are
mapped by *name* through :data:`~cass_deploy.data.classes.DEFAULT_COCO_CLASS_MAP` instead, unless
an explicit id map is given. An image without a label file has no objects (the YOLO convention).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cass_deploy.data.classes import DEFAULT_COCO_CLASS_MAP, classes_of, label_of, resolve_class_map
from cass_deploy.data.common import IMAGE_SUFFIXES, check_box_bounds, check_index, image_header_size, load_fitted
from cass_deploy.data.labelled import Extras, LabelledImages
from cass_deploy.errors import ConfigError, InputError

#: YOLO class id -> class, for labels in COCO's 80-class order
DEFAULT_YOLO_CLASS_MAP: dict[int, str] = {2: "car", 5: "bus", 7: "truck"}
NAME_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names", "coco.names")


def is_yolo_label_dir(label_dir: Path) -> bool:
    """True when the first non-empty line of the first label file has the 5 fields of YOLO."""
    for p in sorted(label_dir.glob("*.txt"))[:5]:
        try:
            for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.split():
                    return len(line.split()) == 5
        except OSError:
            return False
    return False


def class_names_file(root: Path) -> list[str] | None:
    """Class names from ``data.yaml`` / ``classes.txt`` / ``*.names`` in ``root`` (None when absent)."""
    for name in NAME_FILES:
        p = root / name
        if not p.is_file():
            continue
        if p.suffix == ".yaml":
            try:
                names = (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("names")
            except (yaml.YAMLError, AttributeError, OSError) as exc:
                raise InputError(f"cannot read class names from {p}: {exc}") from None
            if isinstance(names, Mapping):
                top = max(int(k) for k in names) if names else -1
                names = [str(names.get(i, names.get(str(i), ""))) for i in range(top + 1)]
            if not isinstance(names, list):
                raise InputError(f"{p} has no 'names' list or mapping")
            return [str(n) for n in names]
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    return None


def resolve_id_map(class_map: Mapping[Any, str | None] | None, names: Sequence[str] | None) -> dict[int, int]:
    """The YOLO id -> label map: ``class_map`` (id -> class name; None drops) when given, else the
    names of a data.yaml mapped through :data:`DEFAULT_COCO_CLASS_MAP`, else
    :data:`DEFAULT_YOLO_CLASS_MAP`. ConfigError for a bad map or one that keeps nothing."""
    if class_map is None and names is not None:
        by_name = resolve_class_map(None, DEFAULT_COCO_CLASS_MAP)
        out = {i: by_name[n.lower()] for i, n in enumerate(names) if n.lower() in by_name}
        if not out:
            raise ConfigError(f"no class in the dataset's names {list(names)[:10]} is a vehicle this tool maps")
        return out
    mapping = DEFAULT_YOLO_CLASS_MAP if class_map is None else class_map
    out = {}
    for k, v in mapping.items():
        try:
            key = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"a YOLO class map's keys are class ids, got {k!r}") from None
        if v is not None:
            out[key] = label_of(str(v))
    if not out:
        raise ConfigError("the YOLO class map keeps no class; map at least one id to a class")
    return out


class YoloDataset(LabelledImages):
    """Map-style dataset over ``image_dir`` + ``label_dir`` in YOLO format.

    Items as :class:`~cass_deploy.data.kitti.KittiDataset`'s (``image`` float32 [3, H, W],
    ``boxes`` float32 [M, 4] xyxy pixels of the network input, ``labels`` int64 [M], ``image_id``,
    and the frame extras). Every image in ``image_dir`` is an item. A malformed line (not 5
    fields, a non-number, a non-integer class, w or h <= 0) is an InputError naming ``file:line``.
    ``class_map``: YOLO id -> class name (see :func:`resolve_id_map`); ids outside it are dropped.
    Arguments: ``(image_dir, label_dir, class_map, image_size, max_images, resize_mode)``.
    """

    def _read(self, label_dir: Path, class_map: Mapping[Any, str | None] | None) -> None:
        self.label_dir = label_dir
        self.id_map = resolve_id_map(class_map, class_names_file(self.image_dir.parent))
        self.classes = classes_of({str(k): v for k, v in self.id_map.items()})
        images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        images = images[: self.max_images]
        if not images:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.image_dir}")
        self.records = [{"image": p, "label": self.label_dir / f"{p.stem}.txt", "id": k} for k, p in enumerate(images)]
        self._expected = None if self.image_size is not None else image_header_size(images[0])

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, Extras]:
        r = self.records[check_index(i, len(self.records))]
        h, w = image_header_size(r["image"])
        if self._expected is not None and (h, w) != self._expected:
            raise InputError(
                f"{r['image']} is {h}x{w} but {self.records[0]['image']} is {self._expected[0]}x{self._expected[1]}; "
                "pass --resize to fit every image to the model input"
            )
        boxes, labels, lines = parse_yolo_file(r["label"], self.id_map, h, w)
        orig = np.asarray(
            [check_box_bounds(b, h, w, where=f"{r['label']}:{n}") for b, n in zip(boxes.tolist(), lines)], np.float32
        ).reshape(-1, 4)
        image, fitted, transform = load_fitted(r["image"], orig, None, self.image_size, self.resize_mode)
        none = dict(ignore=np.zeros((0, 4), np.float32), ignore_labels=np.zeros(0, np.int64))
        return image, fitted, labels, r["id"], dict(orig_hw=(h, w), orig_boxes=orig, transform=transform, **none)


def parse_yolo_file(path: Path, id_map: Mapping[int, int], height: int, width: int) -> tuple[np.ndarray, ...]:
    """Kept objects of one YOLO label file of an ``height x width`` image: boxes float32 [M, 4]
    xyxy pixels, labels int64 [M], line numbers [M]. A missing file is an image without objects."""
    if not path.is_file():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read YOLO label file {path}: {exc}") from None
    rows, labels, lines = [], [], []
    for n, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise InputError(f"{path}:{n}: expected 5 fields 'class cx cy w h', got {len(fields)}: {raw.strip()!r}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise InputError(f"{path}:{n}: every field must be a number, got {raw.strip()!r}") from None
        if not all(math.isfinite(v) for v in values) or values[0] != int(values[0]) or values[0] < 0:
            raise InputError(f"{path}:{n}: class must be an integer >= 0 and all fields finite, got {raw.strip()!r}")
        if values[3] <= 0 or values[4] <= 0:
            raise InputError(f"{path}:{n}: box width and height must be > 0, got {raw.strip()!r}")
        label = id_map.get(int(values[0]))
        if label is None:
            continue
        rows.append(values[1:])
        labels.append(label)
        lines.append(n)
    c = np.asarray(rows, np.float64).reshape(-1, 4) * np.array([width, height, width, height])
    boxes = np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], axis=1).astype(np.float32)
    return boxes, np.asarray(labels, np.int64), np.asarray(lines, np.int64)


__all__ = ["YoloDataset", "parse_yolo_file", "DEFAULT_YOLO_CLASS_MAP", "is_yolo_label_dir", "resolve_id_map"]
