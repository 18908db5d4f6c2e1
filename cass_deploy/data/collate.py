"""Batching of dataset items: images stack, boxes and labels stay per-image lists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import InputError

torch = lazy_import("torch")


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Items ``{"image": [3, H, W], "boxes": [M_b, 4], "labels": [M_b], "image_id": int}`` -> batch.

    Returns ``{"images": float32 [B, 3, H, W], "boxes": list of float32 [M_b, 4],
    "labels": list of int64 [M_b], "image_ids": int64 [B]}``, and for items of real datasets (see
    ``data.common.frame_extras``) ``"transforms"`` float32 [B, 4], ``"orig_sizes"`` int64 [B, 2] and the
    lists ``"orig_boxes"``, ``"ignore"``, ``"ignore_labels"``. Images of different sizes are an
    InputError naming both image ids (resize with the dataset's ``image_size``).
    """

    if not samples:
        raise InputError("collate needs at least one sample")
    for k, s in enumerate(samples):
        missing = [key for key in ("image", "boxes", "labels", "image_id") if key not in s]
        if missing:
            raise InputError(f"sample {k} lacks {missing}; expected keys image, boxes, labels, image_id")
    first = samples[0]
    shape = tuple(first["image"].shape)
    if len(shape) != 3 or shape[0] != 3:
        raise InputError(f"image {first['image_id']} has shape {list(shape)}; expected [3, H, W]")
    for s in samples[1:]:
        if tuple(s["image"].shape) != shape:
            raise InputError(
                f"image {s['image_id']} has shape {list(s['image'].shape)} but image "
                f"{first['image_id']} has {list(shape)}; give the dataset an image_size "
                f"so every image is resized to one size"
            )
    images = torch.stack([torch.as_tensor(s["image"], dtype=torch.float32) for s in samples])
    boxes = [torch.as_tensor(s["boxes"], dtype=torch.float32).reshape(-1, 4) for s in samples]
    labels = [torch.as_tensor(s["labels"], dtype=torch.int64).reshape(-1) for s in samples]
    for s, b, lab in zip(samples, boxes, labels):
        if b.shape[0] != lab.shape[0]:
            raise InputError(f"image {s['image_id']} has {b.shape[0]} boxes but {lab.shape[0]} labels")
    image_ids = torch.tensor([int(s["image_id"]) for s in samples], dtype=torch.int64)
    batch = {"images": images, "boxes": boxes, "labels": labels, "image_ids": image_ids}
    if all("transform" in s for s in samples):  # real datasets: the way back to the original frame
        batch["transforms"] = torch.stack([torch.as_tensor(s["transform"], dtype=torch.float32) for s in samples])
        batch["orig_sizes"] = torch.tensor([list(s["orig_size"]) for s in samples], dtype=torch.int64)
        for key in ("orig_boxes", "ignore", "ignore_labels"):
            batch[key] = [s[key] for s in samples]
    return batch


__all__ = ["collate"]
