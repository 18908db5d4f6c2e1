"""KITTI ``label_2`` datasets — the label format of roadside sets such as DAIR-V2X-I and Rope3D.

One text file per image (``<stem>.txt`` beside ``<stem>.png|.jpg``), one object per line::

    type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry [score]

Only the 2-D box (x1 y1 x2 y2, pixels) and the type are used. Types are mapped with the class
map (default :data:`~cass_deploy.data.classes.DEFAULT_KITTI_CLASS_MAP`: Car/Van -> car,
Truck -> truck, Bus -> bus, any letter case, so Rope3D's ``car`` / ``van`` / ``truck`` / ``bus``
read too); unmapped types are dropped; ``DontCare`` boxes become ignore regions (item ``ignore``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cass_deploy.data.classes import DEFAULT_KITTI_CLASS_MAP, classes_of, resolve_class_map
from cass_deploy.data.common import IMAGE_SUFFIXES, check_box_bounds, check_index, image_header_size, load_fitted
from cass_deploy.data.labelled import Extras, LabelledImages
from cass_deploy.errors import InputError

KITTI_FIELDS = (
    "type",
    "truncated",
    "occluded",
    "alpha",
    "x1",
    "y1",
    "x2",
    "y2",
    "h",
    "w",
    "l",
    "x",
    "y",
    "z",
    "ry",
    "score",
)


class KittiDataset(LabelledImages):
    """Map-style dataset over ``image_dir`` + ``label_dir`` (KITTI label_2 text files).

    Item ``{"image": float32 [3, H, W] in [0, 1], "boxes": float32 [M, 4] xyxy pixels,
    "labels": int64 [M], "image_id": int}`` and the frame extras; ``image_id`` is the file stem as
    an integer when every stem is numeric (``000123`` -> 123), else the position in sorted order.

    Every label file needs its image (same stem); images without a label file are ignored.
    A malformed line (wrong field count, a non-number, ``x2 <= x1`` or ``y2 <= y1``) is an
    InputError naming the file and line. ``image_size=(H, W)``: images of another size are
    **resized** to it (bilinear) and their boxes scaled; without it every image must have the
    size of the first one (InputError naming the file otherwise). Boxes may stick out of the
    image by at most 1 px (clipped). ``max_images`` keeps the first N label files (sorted).
    Arguments: ``(image_dir, label_dir, class_map, image_size, max_images, resize_mode)``.
    """

    def _read(self, label_dir: Path, class_map: Mapping[str, str | None] | None) -> None:
        self.label_dir = label_dir
        for what, d in (("image", self.image_dir), ("label", self.label_dir)):
            if not d.is_dir():
                raise InputError(f"KITTI {what} directory not found: {d}")
        label_map = resolve_class_map(class_map, DEFAULT_KITTI_CLASS_MAP)
        self.classes = classes_of(label_map)
        label_files = sorted(p for p in self.label_dir.iterdir() if p.suffix == ".txt" and p.is_file())
        label_files = label_files[: self.max_images]
        if not label_files:
            raise InputError(f"no KITTI label files (*.txt) in {self.label_dir}")
        images = {}
        for p in sorted(self.image_dir.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                images.setdefault(p.stem, p)
        stems = [p.stem for p in label_files]
        numeric = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
        self.records = []
        for k, lp in enumerate(label_files):
            image = images.get(lp.stem)
            if image is None:
                raise InputError(f"{lp} has no image {lp.stem}.png/.jpg in {self.image_dir}")
            boxes, labels, lines, ignore = parse_label_file(lp, label_map, with_ignore=True)
            record = dict(image=image, label=lp, boxes=boxes, labels=labels, lines=lines, ignore=ignore)
            self.records.append({**record, "id": int(lp.stem) if numeric else k})
        # without image_size every image must match the first one (checked again on load)
        self._expected = None if self.image_size is not None else image_header_size(self.records[0]["image"])

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, Extras]:
        r = self.records[check_index(i, len(self.records))]
        h, w = image_header_size(r["image"])
        if self._expected is not None and (h, w) != self._expected:
            first = self.records[0]["image"]
            raise InputError(
                f"{r['image']} is {h}x{w} but {first} is {self._expected[0]}x"
                f"{self._expected[1]}; pass image_size=(H, W) to resize every image "
                f"(boxes are scaled with it)"
            )
        orig = np.asarray(
            [
                check_box_bounds(b, h, w, where=f"{r['label']}:{line}")
                for b, line in zip(r["boxes"].tolist(), r["lines"].tolist())
            ],
            np.float32,
        ).reshape(-1, 4)
        image, boxes, transform = load_fitted(r["image"], orig, None, self.image_size, self.resize_mode)
        ignore = np.clip(r["ignore"], 0, [w, h, w, h]).astype(np.float32)
        extras = dict(orig_hw=(h, w), orig_boxes=orig, transform=transform, ignore=ignore)
        return image, boxes, r["labels"], r["id"], {**extras, "ignore_labels": np.full(len(ignore), -1)}


def parse_label_file(path: Path, label_map: Mapping[str, int], with_ignore: bool = False) -> tuple[np.ndarray, ...]:
    """Kept objects of one label file: boxes float32 [M, 4] xyxy, labels int64 [M], line numbers [M]
    (and, ``with_ignore``, the ``DontCare`` regions float32 [K, 4]: areas where a detection is
    neither a hit nor a false positive).

    ``label_map``: lower-cased type -> label (see :func:`resolve_class_map`); types outside it
    (Pedestrian, Cyclist, Misc, ...) are dropped. Every non-blank line is validated; errors name
    ``path:line``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read KITTI label file {path}: {exc}") from None
    boxes, labels, lines, ignore = [], [], [], []
    for n, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) not in (15, 16):
            raise InputError(
                f"{path}:{n}: expected 15 fields (16 with a score) "
                f"'type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry [score]', "
                f"got {len(fields)}: {raw.strip()!r}"
            )
        values = []
        for name, v in zip(KITTI_FIELDS[1:], fields[1:]):
            try:
                f = float(v)
            except ValueError:
                f = math.nan
            if not math.isfinite(f):
                raise InputError(f"{path}:{n}: field '{name}' must be a finite number, got {v!r}")
            values.append(f)
        kind = fields[0]
        x1, y1, x2, y2 = values[3:7]
        if not (x2 > x1 and y2 > y1):
            raise InputError(f"{path}:{n}: box x1 y1 x2 y2 = {x1:g} {y1:g} {x2:g} {y2:g} needs x2 > x1 and y2 > y1")
        if kind.lower() == "dontcare":
            ignore.append([x1, y1, x2, y2])
            continue
        label = label_map.get(kind.lower())
        if label is None:
            continue
        boxes.append([x1, y1, x2, y2])
        labels.append(label)
        lines.append(n)
    out = (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), np.asarray(lines, np.int64))
    return out + (np.asarray(ignore, np.float32).reshape(-1, 4),) if with_ignore else out


__all__ = ["KittiDataset", "parse_label_file", "KITTI_FIELDS"]
