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


RESIZE_MODES = ("letterbox", "stretch")
#: the grey of letterbox padding (Ultralytics' 114), uint8
LETTERBOX_FILL = 114


def fit_transform(
    orig_hw: Sequence[int], target_hw: Sequence[int], mode: str
) -> tuple[float, float, int, int, int, int]:
    """How an ``orig_hw = (h, w)`` image fits the network input ``target_hw = (H, W)``.

    Returns ``(sx, sy, px, py, nw, nh)``: the image is resized to ``nw x nh`` and placed at
    ``(px, py)``, so an input pixel is ``x_in = x * sx + px``, ``y_in = y * sy + py``.
    ``stretch``: ``nw, nh = W, H`` (aspect changes), no padding. ``letterbox``: one scale
    ``min(H / h, W / w)`` (aspect kept), centred, the rest padding. A degenerate fit (an image
    that would shrink to 0 px on a side) is an InputError naming both sizes.
    """
    h, w = (int(v) for v in orig_hw)
    H, W = (int(v) for v in target_hw)
    if min(h, w, H, W) < 1:
        raise InputError(f"cannot fit a {h}x{w} image into a {H}x{W} input (sizes must be >= 1)")
    if mode not in RESIZE_MODES:
        raise InputError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if mode == "stretch":
        return W / w, H / h, 0, 0, W, H
    scale = min(H / h, W / w)
    nw, nh = min(W, round(w * scale)), min(H, round(h * scale))
    if nw < 1 or nh < 1:
        raise InputError(
            f"a {h}x{w} image letterboxed into {H}x{W} would be {max(nh, 0)}x{max(nw, 0)} px (aspect "
            f"{w / h:.3g}:1 is too extreme for this input); crop it or use --resize stretch"
        )
    return nw / w, nh / h, (W - nw) // 2, (H - nh) // 2, nw, nh


def load_fitted(
    path: Path,
    boxes: np.ndarray,
    expected: tuple[int, int] | None,
    image_size: tuple[int, int] | None,
    mode: str = "stretch",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``path`` as RGB uint8 [H, W, 3]; fit it to ``image_size`` (``mode``: stretch or letterbox,
    see :func:`fit_transform`; ``boxes`` [M, 4] xyxy mapped the same way) when given and different.
    ``expected`` (H, W): the size the labels were written for — a file of another size is an
    InputError naming it. Returns ``(image, boxes, transform float32 [sx, sy, px, py])`` (the
    identity transform without fitting)."""

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # palette ('P') and grey PNGs become RGB through their palette
            w, h = im.size
            if expected is not None and (h, w) != tuple(expected):
                raise InputError(f"{path} is {h}x{w} but its labels say {expected[0]}x{expected[1]}")
            return fit_image(im, boxes, image_size, mode, where=str(path))
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def fit_image(
    im: Image.Image, boxes: np.ndarray, image_size: tuple[int, int] | None, mode: str = "stretch", where: str = "image"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An RGB PIL image and its ``boxes`` [M, 4] xyxy -> ``(image uint8 [H, W, 3], boxes [M, 4],
    transform float32 [sx, sy, px, py])`` fitted to ``image_size`` (see :func:`fit_transform`;
    identity when None or equal). ``where`` names the image in errors."""
    w, h = im.size
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    transform = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
    if image_size is not None and (h, w) != tuple(image_size):
        H, W = image_size
        try:
            sx, sy, px, py, nw, nh = fit_transform((h, w), (H, W), mode)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        im = im.resize((nw, nh), Image.BILINEAR)
        if (nw, nh) != (W, H):
            canvas = Image.new("RGB", (W, H), (LETTERBOX_FILL,) * 3)
            canvas.paste(im, (px, py))
            im = canvas
        transform = np.array([sx, sy, px, py], np.float32)
        boxes = boxes * transform[[0, 1, 0, 1]] + transform[[2, 3, 2, 3]]
    return np.array(im, dtype=np.uint8), boxes, transform


def frame_extras(
    orig_hw: Sequence[int], orig_boxes: np.ndarray, transform: np.ndarray, ignore: np.ndarray, ignore_labels: np.ndarray
) -> dict[str, Any]:
    """The item keys that map between the network input and the original frame (real datasets):
    ``orig_size`` (h, w), ``transform`` float32 [4] (sx, sy, px, py; input = orig * s + p),
    ``orig_boxes`` float32 [M, 4] (the boxes in the original image), ``ignore`` float32 [K, 4]
    (regions where a detection is neither a hit nor a false positive: KITTI DontCare, COCO
    iscrowd; original frame) and ``ignore_labels`` int64 [K] (-1: any class)."""
    return {
        "orig_size": (int(orig_hw[0]), int(orig_hw[1])),
        "transform": torch.from_numpy(np.asarray(transform, np.float32).reshape(4)),
        "orig_boxes": torch.from_numpy(np.ascontiguousarray(orig_boxes, dtype=np.float32)).reshape(-1, 4),
        "ignore": torch.from_numpy(np.ascontiguousarray(ignore, dtype=np.float32)).reshape(-1, 4),
        "ignore_labels": torch.from_numpy(np.ascontiguousarray(ignore_labels, dtype=np.int64)).reshape(-1),
    }


__all__ = [
    "DatasetBase",
    "BOX_TOLERANCE_PX",
    "IMAGE_SUFFIXES",
    "to_item",
    "check_index",
    "resolve_size",
    "check_box_bounds",
    "image_header_size",
    "load_fitted",
    "fit_image",
    "fit_transform",
    "frame_extras",
    "RESIZE_MODES",
]
