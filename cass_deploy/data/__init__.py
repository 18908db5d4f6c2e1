"""Datasets (SPEC §8): synthetic roadside scenes, COCO JSON and KITTI labels, one item format.

Every dataset yields ``{"image": float32 [3, H, W] in [0, 1], "boxes": float32 [M, 4] xyxy pixels,
"labels": int64 [M], "image_id": int}`` with labels ``car=0, truck=1, bus=2`` (``pedestrian=3``
when enabled); ``collate.collate`` batches them and ``factory.load_dataset`` picks one from a spec.
Each dataset also has ``get_numpy(i)`` (uint8 image, boxes, labels, id) for torch-free callers.

Import from the submodules (``cass_deploy.data.synthetic``, ``.coco``, ``.kitti``, ``.collate``,
``.factory``): this package itself imports nothing.
"""
