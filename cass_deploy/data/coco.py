"""COCO-JSON detection datasets (``images``, ``annotations`` with ``bbox = [x, y, w, h]``, ``categories``).

Only the categories named in the class map are kept (default
:data:`~cass_deploy.data.classes.DEFAULT_COCO_CLASS_MAP`: car, truck, bus and aliases such as
``van``); the others are dropped. ``iscrowd = 1`` regions are not objects: as in pycocotools they
become ignore regions (item ``ignore`` / ``ignore_labels``), where a detection of that class is
neither a hit nor a false positive. Boxes become xyxy float pixels. Category ids may start at 0;
``file_name`` may hold sub-folders (relative to the image directory).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.data.classes import DEFAULT_COCO_CLASS_MAP, classes_of, resolve_class_map
from cass_deploy.data.common import BOX_TOLERANCE_PX, check_box_bounds, check_index, load_fitted
from cass_deploy.data.labelled import Extras, LabelledImages
from cass_deploy.errors import InputError


class CocoDataset(LabelledImages):
    """Map-style dataset over a COCO JSON file; item ``{"image", "boxes", "labels", "image_id"}``
    and the frame extras (``iscrowd`` regions as ``ignore``).

    image: float32 [3, H, W] in [0, 1]; boxes: float32 [M, 4] xyxy pixels; labels: int64 [M];
    image_id: the COCO image id. Arguments: ``(image_dir, ann_file, class_map, image_size,
    max_images, resize_mode)``.

    ``image_size=(H, W)``: every image whose size differs is **resized** (bilinear) to it and its
    boxes are scaled by the same factors. Without it, all images must share one size (so a batch
    can be stacked) — a differing one is an InputError naming the file. Boxes may stick out of the
    image by at most 1 px (they are clipped); more is an InputError naming the annotation.
    ``max_images`` keeps the first N images (in file order).
    """

    def _read(self, ann_file: Path, class_map: Mapping[str, str | None] | None) -> None:
        self.ann_file = ann_file
        if not self.ann_file.is_file():
            raise InputError(f"COCO annotation file not found: {self.ann_file}")
        if not self.image_dir.is_dir():
            raise InputError(f"COCO image directory not found: {self.image_dir}")
        label_map = resolve_class_map(class_map, DEFAULT_COCO_CLASS_MAP)
        self.classes = classes_of(label_map)
        self.records = _parse(_read_json(self.ann_file), self.ann_file, label_map)[: self.max_images]
        if not self.records:
            raise InputError(f"{self.ann_file} lists no images")
        if self.image_size is None:
            first = self.records[0]
            for r in self.records[1:]:
                if (r["height"], r["width"]) != (first["height"], first["width"]):
                    raise InputError(
                        f"{self.image_dir / r['file_name']} is {r['height']}x{r['width']} but "
                        f"{self.image_dir / first['file_name']} is {first['height']}x{first['width']}; "
                        f"pass image_size=(H, W) to resize every image (boxes are scaled with it)"
                    )

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, Extras]:
        r = self.records[check_index(i, len(self.records))]
        path = self.image_dir / r["file_name"]
        hw = (r["height"], r["width"])
        image, boxes, transform = load_fitted(path, r["boxes"], hw, self.image_size, self.resize_mode)
        ignore = {k: r[k] for k in ("ignore", "ignore_labels")}
        extras = dict(orig_hw=hw, orig_boxes=r["boxes"], transform=transform, **ignore)
        return image, boxes, r["labels"], r["id"], extras


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read COCO annotation file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path} is not COCO JSON: it needs an 'images' list")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise InputError(f"{path}: '{key}' must be a list")
    return data


def _parse(data: dict, path: Path, label_map: dict[str, int]) -> list[dict[str, Any]]:
    """Images in file order, each with its kept boxes (xyxy float32 [M, 4]) and labels (int64 [M])."""
    cat_label: dict[Any, int] = {}
    for c in data.get("categories", []):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise InputError(f"{path}: category {c!r} needs an 'id' and a 'name'")
        label = label_map.get(c["name"].lower())
        if label is not None:
            cat_label[c["id"]] = label
    records: list[dict[str, Any]] = []
    by_id: dict[Any, dict[str, Any]] = {}
    for im in data["images"]:
        try:
            rec = {
                "id": int(im["id"]),
                "file_name": str(im["file_name"]),
                "height": int(im["height"]),
                "width": int(im["width"]),
                "boxes": [],
                "labels": [],
                "ignore": [],
                "ignore_labels": [],
            }
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"{path}: image entry {im!r} needs integer 'id', 'height', 'width' and a 'file_name'"
            ) from None
        if rec["height"] < 1 or rec["width"] < 1:
            raise InputError(f"{path}: image {rec['file_name']} has size {rec['height']}x{rec['width']}")
        if rec["id"] in by_id:
            raise InputError(f"{path}: image id {rec['id']} appears twice")
        by_id[rec["id"]] = rec
        records.append(rec)
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict):
            raise InputError(f"{path}: annotation {ann!r} is not an object")
        label = cat_label.get(ann.get("category_id"))
        if label is None:
            continue
        aid = ann.get("id", "?")
        rec = by_id.get(ann.get("image_id"))
        if rec is None:
            raise InputError(f"{path}: annotation {aid} refers to unknown image_id {ann.get('image_id')!r}")
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        ):
            raise InputError(f"{path}: annotation {aid} has bbox {bbox!r}; expected 4 finite numbers [x, y, w, h]")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise InputError(
                f"{path}: annotation {aid} (image {rec['file_name']}) has bbox {bbox!r} with width or height <= 0"
            )
        box = check_box_bounds(
            (x, y, x + w, y + h),
            rec["height"],
            rec["width"],
            where=f"{path}: annotation {aid} (image {rec['file_name']})",
        )
        crowd = "ignore" if ann.get("iscrowd", 0) else ""
        rec[crowd or "boxes"].append(box)
        rec[f"{crowd}_labels" if crowd else "labels"].append(label)
    for rec in records:
        for key, lab in (("boxes", "labels"), ("ignore", "ignore_labels")):
            rec[key] = np.asarray(rec[key], np.float32).reshape(-1, 4)
            rec[lab] = np.asarray(rec[lab], np.int64).reshape(-1)
    return records


__all__ = ["CocoDataset", "BOX_TOLERANCE_PX"]
