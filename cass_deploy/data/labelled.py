"""What the labelled image datasets (COCO JSON, KITTI and YOLO text files) share: the constructor,
the length, the numpy view and the item with its frame extras."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.data.common import DatasetBase, check_index, frame_extras, resolve_size, to_item
from cass_deploy.errors import InputError

#: ``_load``'s extras: ``orig_hw`` (h, w), ``orig_boxes`` [M, 4], ``transform`` [4], ``ignore`` [K, 4],
#: ``ignore_labels`` [K] (see :func:`~cass_deploy.data.common.frame_extras`)
Extras = dict[str, Any]


def check_max_images(max_images: Any) -> int | None:
    """``None`` or an integer >= 1 (how many images to keep); InputError otherwise."""
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise InputError(f"max_images must be an integer >= 1, got {max_images!r}")
    return max_images


class LabelledImages(DatasetBase):  # type: ignore[misc,valid-type]
    """A map-style dataset of image files and their labels (``labels``: a COCO JSON file or a
    folder of KITTI / YOLO text files). Subclasses implement ``_read(labels, class_map)`` (sets
    ``records`` and ``classes``; ``self.max_images`` keeps the first N) and ``_load(i)`` ->
    ``(image uint8 [H, W, 3], boxes float32 [M, 4], labels int64 [M], image_id, extras)``.

    Item ``{"image": float32 [3, H, W] in [0, 1], "boxes": float32 [M, 4] xyxy pixels of the
    network input, "labels": int64 [M], "image_id": int}`` plus the frame extras
    (:func:`~cass_deploy.data.common.frame_extras`). ``image_size=(H, W)``: images of another size
    are fitted to it (``resize_mode``: stretch or letterbox; boxes mapped the same way)."""

    records: list[dict[str, Any]]

    def __init__(
        self,
        image_dir: str | Path,
        labels: str | Path,
        class_map: Mapping[Any, str | None] | None = None,
        image_size: Sequence[int] | None = None,
        max_images: int | None = None,
        resize_mode: str = "stretch",
    ) -> None:
        self.image_dir, self.resize_mode = Path(image_dir), resize_mode
        self.image_size = resolve_size(image_size)
        self.max_images = check_max_images(max_images)
        self._read(Path(labels), class_map)

    def _read(self, labels: Path, class_map: Mapping[Any, str | None] | None) -> None:
        raise NotImplementedError

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, Extras]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def get_numpy(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(image uint8 [H, W, 3], boxes float32 [M, 4], labels int64 [M], image_id)`` — no torch."""
        image, boxes, labels, image_id, _ = self._load(check_index(i, len(self.records)))
        return image, boxes, labels, image_id

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, boxes, labels, image_id, ex = self._load(check_index(i, len(self.records)))
        extras = frame_extras(ex["orig_hw"], ex["orig_boxes"], ex["transform"], ex["ignore"], ex["ignore_labels"])
        return {**to_item(image, boxes, labels, image_id), **extras}


__all__ = ["LabelledImages", "check_max_images", "Extras"]
