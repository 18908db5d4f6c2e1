"""One entry point from a dataset spec (``"synthetic"`` or a path) to a dataset object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cass_deploy.data.coco import CocoDataset
from cass_deploy.data.kitti import KittiDataset
from cass_deploy.data.synthetic import DEFAULT_IMAGE_SIZE, SPLITS, SceneConfig, SyntheticRoadside
from cass_deploy.data.yolo import YoloDataset, is_yolo_label_dir
from cass_deploy.errors import ConfigError, InputError

DEFAULT_SYNTHETIC_IMAGES = {"train": 512, "val": 128}
"""Scenes per split when ``num_images`` is not given for ``"synthetic"``."""

_EXPECTED = (
    "expected 'synthetic', a COCO directory (annotations.json, or one *.json, with the "
    "images in images/), a KITTI directory (image_2/ + label_2/, or images/ + labels/), or a YOLO "
    "directory (images/ + labels/*.txt with 'class cx cy w h' lines), "
    "either directly or in a <split>/ subdirectory"
)


def load_dataset(
    spec: str | Path,
    split: str = "val",
    num_images: int | None = None,
    image_size: Sequence[int] | None = None,
    seed: int = 0,
    class_map: Mapping[str, str | None] | None = None,
    scene_cfg: SceneConfig | None = None,
    resize_mode: str = "stretch",
    cache: bool = False,
) -> Any:
    """``"synthetic"`` -> :class:`SyntheticRoadside`; a directory -> COCO or KITTI, auto-detected.

    - ``"synthetic"``: ``num_images`` scenes (default 512 train / 128 val) of ``image_size``
      (default 256 x 448) from ``seed``; ``class_map`` does not apply (ConfigError if given).
    - a directory, or its ``<split>/`` subdirectory: COCO when it holds ``annotations.json``, a
      single ``*.json`` (several: the one whose name contains ``split``) or such a file in
      ``annotations/``; images in ``images/``, ``<split>*/`` or beside the JSON. Else KITTI with
      ``image_2/`` + ``label_2/`` or ``images/`` + ``labels/``. COCO wins when both are present.
    - a ``*.json`` file: COCO, images in ``images/`` beside it or its own directory.

    ``cache``: keep generated synthetic scenes in memory (training re-reads them every epoch).
    For directories ``num_images`` keeps the first N images and ``image_size`` fits every image to
    it (``resize_mode``: ``stretch``, or ``letterbox`` keeping the aspect; boxes mapped the same
    way). Anything else, or an empty dataset, is an InputError naming the path.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1):
        raise InputError(f"num_images must be an integer >= 1, got {num_images!r}")
    if isinstance(spec, str) and spec == "synthetic":
        if class_map is not None:
            raise ConfigError("class_map applies to COCO / KITTI data; synthetic scenes always use car / truck / bus")
        n = DEFAULT_SYNTHETIC_IMAGES[split] if num_images is None else num_images
        return SyntheticRoadside(
            n,
            split=split,
            seed=seed,
            image_size=DEFAULT_IMAGE_SIZE if image_size is None else image_size,
            cfg=scene_cfg,
            cache=cache,
        )
    if scene_cfg is not None:
        raise ConfigError("scene_cfg applies to 'synthetic' data only")
    path = Path(spec)
    if not path.exists():
        raise InputError(f"dataset {str(spec)!r} not found: no such file or directory; {_EXPECTED}")
    kind, paths = detect_format(path, split)
    image_dir, labels = paths.values()  # the images, then the COCO JSON or the label folder
    cls = {"coco": CocoDataset, "yolo": YoloDataset, "kitti": KittiDataset}[kind]
    ds = cls(image_dir, labels, class_map, image_size, num_images, resize_mode)
    if len(ds) == 0:  # the dataset classes refuse this already; kept as the contract
        raise InputError(f"dataset {path} is empty")
    return ds


def detect_format(path: str | Path, split: str = "val") -> tuple[str, dict[str, Path]]:
    """``("coco", {"image_dir", "ann_file"})``, ``("kitti", {"image_dir", "label_dir"})`` or
    ``("yolo", {"image_dir", "label_dir"})`` (``images/`` + ``labels/`` whose lines have 5 fields).

    InputError naming ``path`` and what was expected when neither layout is found.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise InputError(f"dataset {path} is a file but not a COCO *.json; {_EXPECTED}")
        images = path.parent / "images"
        return "coco", {"image_dir": images if images.is_dir() else path.parent, "ann_file": path}
    if not path.is_dir():
        raise InputError(f"dataset {path} is neither a file nor a directory; {_EXPECTED}")
    for root in (path, path / split):
        if not root.is_dir():
            continue
        ann = _coco_annotation(root, split)
        if ann is not None:
            return "coco", {"image_dir": _coco_images(root, ann, split), "ann_file": ann}
        for images, labels in (("image_2", "label_2"), ("images", "labels")):
            if (root / images).is_dir() and (root / labels).is_dir():
                kind = "yolo" if images == "images" and is_yolo_label_dir(root / labels) else "kitti"
                return kind, {"image_dir": root / images, "label_dir": root / labels}
    raise InputError(f"dataset directory {path} has no recognised layout; {_EXPECTED}")


def _coco_annotation(root: Path, split: str) -> Path | None:
    if (root / "annotations.json").is_file():
        return root / "annotations.json"
    for d in (root, root / "annotations"):
        if not d.is_dir():
            continue
        found = sorted(p for p in d.glob("*.json") if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            named = [p for p in found if split in p.stem]
            if len(named) == 1:
                return named[0]
            raise InputError(
                f"{d} holds several COCO JSON files {[p.name for p in found]}; name one "
                f"annotations.json, keep one per directory, or pass the file itself"
            )
    return None


def _coco_images(root: Path, ann: Path, split: str) -> Path:
    if (root / "images").is_dir():
        return root / "images"
    named = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(split))
    if len(named) == 1:
        return named[0]
    return ann.parent if ann.parent != root / "annotations" else root


__all__ = ["load_dataset", "detect_format", "DEFAULT_SYNTHETIC_IMAGES"]
