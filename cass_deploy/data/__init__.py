"""Datasets (SPEC §8): synthetic roadside scenes, COCO JSON and KITTI labels, one item format.

Every dataset yields ``{"image": float32 [3, H, W] in [0, 1], "boxes": float32 [M, 4] xyxy pixels,
"labels": int64 [M], "image_id": int}`` with labels ``car=0, truck=1, bus=2`` (``pedestrian=3``
when enabled); :func:`collate` batches them and :func:`load_dataset` picks one from a spec.
Each dataset also has ``get_numpy(i)`` (uint8 image, boxes, labels, id) for torch-free callers.
"""

from cass_deploy.data.classes import ALL_CLASSES, CLASSES, class_names
from cass_deploy.data.coco import CocoDataset
from cass_deploy.data.collate import collate
from cass_deploy.data.factory import detect_format, load_dataset
from cass_deploy.data.kitti import KittiDataset
from cass_deploy.data.synthetic import (
                                        DEFAULT_IMAGE_SIZE,
                                        SceneConfig,
                                        SyntheticRoadside,
                                        field_of_boxes,
                                        generate_scene,
                                        split_seed,
                                        write_synthetic_dataset,
)

__all__ = ["CLASSES", "ALL_CLASSES", "class_names", "SceneConfig", "generate_scene", "SyntheticRoadside",
           "write_synthetic_dataset", "split_seed", "field_of_boxes", "DEFAULT_IMAGE_SIZE",
           "CocoDataset", "KittiDataset", "collate", "load_dataset", "detect_format"]
