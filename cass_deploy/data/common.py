"""Plumbing shared by the datasets: the item dict, index checks, image loading and resizing,
box-bound checks. numpy / PIL only; torch is imported where tensors are made."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import InputError

torch = lazy_import("torch")

try:  # the numpy paths (get_numpy, generate_scene) work without torch
    from torch.utils.data import Dataset as DatasetBase
except ImportError:  # pragma: no cover - exercised only on torch-free installs
    DatasetBase = object  # type: ignore[assignment,misc]

BOX_TOLERANCE_PX = 1.0
"""A box may stick out of its image by this much (it is clipped); more is an InputError."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def to_item(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, image_id: int) -> dict[str, Any]:
    """numpy sample -> dataset item.

    image uint8 [H, W, 3] -> ``"image"`` float32 [3, H, W] in [0, 1]; ``"boxes"`` float32 [M, 4];
    ``"labels"`` int64 [M]; ``"image_id"`` int.
    """

    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0),
        "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
        "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).reshape(-1),
        "image_id": int(image_id),
    }


def check_index(i: Any, n: int) -> int:
    """Dataset index (negative counts from the end) -> 0..n-1; IndexError when out of range."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"dataset index must be an integer, got {type(i).__name__}")
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for a dataset of {n} images")
    return i


def resolve_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    """``None`` or a positive ``(H, W)`` pair of ints; InputError otherwise."""
    if image_size is None:
        return None
    try:
        H, W = image_size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (H, W))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"image_size must be a pair of positive integers (H, W), got {image_size!r}")
    return int(H), int(W)


def check_box_bounds(box: Sequence[float], height: int, width: int, where: str) -> list[float]:
    """xyxy within the image up to :data:`BOX_TOLERANCE_PX` (then clipped); InputError naming
    ``where`` when it sticks out further or is empty after clipping."""
    x1, y1, x2, y2 = (float(v) for v in box)
    t = BOX_TOLERANCE_PX
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise InputError(
            f"{where}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the "
            f"{height}x{width} image by more than {t:g} px"
        )
    x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
    y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
    if not (x2 > x1 and y2 > y1):
        raise InputError(f"{where}: box is empty inside the {height}x{width} image")
    return [x1, y1, x2, y2]


def image_header_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header; InputError naming the file when unreadable."""

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    return h, w


def load_rgb(
    path: Path, boxes: np.ndarray, expected: tuple[int, int] | None, image_size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` as RGB uint8 [H, W, 3]; resize to ``image_size`` (scaling ``boxes`` [M, 4] xyxy)
    when given and different. ``expected`` (H, W): the size the labels were written for — a file of
    another size is an InputError naming it."""

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if expected is not None and (h, w) != tuple(expected):
                raise InputError(f"{path} is {h}x{w} but its labels say {expected[0]}x{expected[1]}")
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            if image_size is not None and (h, w) != tuple(image_size):
                H, W = image_size
                im = im.resize((W, H), Image.BILINEAR)
                scale = np.array([W / w, H / h, W / w, H / h], np.float32)
                boxes = boxes * scale
            image = np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    return image, boxes


__all__ = [
    "DatasetBase",
    "BOX_TOLERANCE_PX",
    "IMAGE_SUFFIXES",
    "to_item",
    "check_index",
    "resolve_size",
    "check_box_bounds",
    "image_header_size",
    "load_rgb",
]
