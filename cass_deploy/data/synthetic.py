"""Deterministic synthetic roadside scenes (SPEC §8): a pole- or gantry-mounted camera looking
down a multi-lane road.

The scene is built in metres and projected through a pinhole camera over a flat ground plane
(camera height ``h``, focal ``f = focal_frac * W``, horizon row ``y_h``, vanishing column
``x_v``): a ground point at lateral ``X`` and depth ``Z`` lands at
``x = x_v + f (X - X_cam) / Z``, ``y = y_h + f (h - Y) / Z``. Vehicles are one or two 3-D boxes
(car: body + cabin, truck: container + cab, bus: one box) whose visible faces are drawn as exact
perspective trapezoids, far to near. That gives, without tuning for any hypothesis:

- **far field** (box bottom above ``far_bottom * H``): many small vehicles, uniform in depth,
  so crowded near the horizon, many narrower than one 16-px patch; denser on the left because
  the road's vanishing point sits left of centre, far lanes on the left are busier
  (``far_left_weight``) and an optional T-junction joins from the left (``cross_road_prob``);
- **mid field** (bottom between ``far_bottom`` and ``near_bottom``): a few medium vehicles;
- **near field** (bottom below ``near_bottom * H``): one to three large vehicles, mostly trucks
  and buses, whose container and body panels are large flat areas — often road-grey
  (``flat_panel_prob``), so a patch inside one looks locally like asphalt — with distinct edges;
- lane markings, a sidewalk, grass, a skyline of buildings and trees, vehicle and tree shadows,
  haze, sun direction, brightness / colour cast, blur and sensor noise varying per image.

Everything is a pure function of ``(seed, index)``: each scene draws from its own
``numpy.random.SeedSequence([seed, index])``, so scenes do not depend on call order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from cass_deploy.data.classes import ALL_CLASSES, CLASSES, class_names
from cass_deploy.data.common import DatasetBase, check_index, to_item
from cass_deploy.errors import ConfigError, InputError
from cass_deploy.io_utils import atomic_dir

DEFAULT_IMAGE_SIZE: tuple[int, int] = (256, 448)
SPLITS: tuple[str, ...] = ("train", "val")

# class -> (width, height, length) in metres and their jitter
_DIMS = {
    0: ((1.8, 1.5, 4.5), (0.1, 0.08, 0.4)),
    1: ((2.5, 3.4, 8.5), (0.1, 0.4, 2.0)),
    2: ((2.55, 3.2, 11.5), (0.05, 0.15, 1.0)),
    3: ((0.5, 1.7, 0.4), (0.05, 0.1, 0.05)),
}


def _palette(colours: str) -> np.ndarray:
    """``"ebebe8 c8cacd ..."`` (hex RGB, space-separated) -> float32 [N, 3] in 0..255."""
    return np.array([[int(c[i : i + 2], 16) for i in (0, 2, 4)] for c in colours.split()], np.float32)


_CAR_COLOURS = _palette("ebebe8 c8cacd 96989c 28282c 19191c a01e1e 1e3c82 142346 6e735f beaa8c 5a1419 dcd23c")
_TRUCK_COLOURS = _palette("e4e4e1 b9bcbe 3c5a96 a02823 3c6e46 d2aa32 f0f0ee")
_BUS_COLOURS = _palette("ebebe6 e6c828 328250 285aaa c83c28 bec0c3")
_CLOTHES = _palette("1e1e23 28325a 961e1e c8c8c8 465a3c 786450")
_GLASS = np.array([34, 42, 54], np.float32)
_DARK = np.array([24, 24, 27], np.float32)
_TIRE = np.array([14, 14, 16], np.float32)
_RED = np.array([205, 35, 30], np.float32)
_HEAD = np.array([240, 238, 215], np.float32)
_PLATE = np.array([215, 215, 200], np.float32)
_GRILLE = np.array([48, 48, 52], np.float32)
_SIGN = np.array([235, 150, 40], np.float32)
_SKIN = np.array([190, 150, 120], np.float32)
_NO_COLOUR = np.zeros(3, np.float32)


@dataclass(frozen=True)
class SceneConfig:
    """Every knob of the scene generator. Fractions of H / W unless marked metres or pixels.

    The defaults meet the geometry contract other modules rely on at 256 x 448: horizon at
    0.25-0.35 H; 12-40 far-field vehicles (bottom edge above 0.5 H, mostly 4-20 px wide),
    2-8 mid-field (bottom 0.5-0.75 H), 1-3 near-field (bottom below 0.75 H, ~50-220 px wide,
    mostly trucks and buses); far-field density higher on the left half.
    """

    # camera and road
    horizon_range: tuple[float, float] = (0.25, 0.35)
    vanishing_x_range: tuple[float, float] = (0.30, 0.50)
    camera_height_range: tuple[float, float] = (5.0, 7.0)  # metres
    focal_frac: float = 1.0  # focal length / W
    lanes_range: tuple[int, int] = (4, 6)
    lane_width: float = 3.5  # metres
    camera_lateral_range: tuple[float, float] = (0.2, 0.5)  # camera across the road / width
    # fields: box bottom edge / H
    far_bottom: float = 0.5
    near_bottom: float = 0.75
    far_count_range: tuple[int, int] = (12, 40)
    mid_count_range: tuple[int, int] = (2, 8)
    near_count_range: tuple[int, int] = (1, 3)
    far_min_width_px: float = 4.0  # a car at the far end of the drawn traffic is this wide
    far_left_weight: float = 2.5  # far-field lane weight, leftmost / rightmost (1 = even)
    cross_road_prob: float = 0.5  # chance of a T-junction road joining from the left
    cross_road_share: float = 0.35  # share of far-field vehicles on it when present
    # class mix per field: (car, truck, bus)
    far_class_probs: tuple[float, float, float] = (0.75, 0.15, 0.10)
    mid_class_probs: tuple[float, float, float] = (0.60, 0.25, 0.15)
    near_class_probs: tuple[float, float, float] = (0.25, 0.45, 0.30)
    flat_panel_prob: float = 0.5  # truck / bus body coloured close to the road grey
    max_overlap: float = 0.5  # reject a vehicle whose box overlaps another by more
    min_box_px: float = 2.0
    pedestrians: bool = False
    pedestrian_count_range: tuple[int, int] = (2, 8)
    # appearance
    brightness_range: tuple[float, float] = (0.7, 1.25)
    noise_std_range: tuple[float, float] = (1.5, 6.0)  # 8-bit levels
    tree_shadow_prob: float = 0.6
    blur_prob: float = 0.5

    def __post_init__(self) -> None:
        def rng_pair(name: str, lo_ok: float, hi_ok: float, integer: bool = False) -> None:
            v = getattr(self, name)
            if (
                not isinstance(v, (tuple, list))
                or len(v) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            ):
                raise ConfigError(f"scene.{name} must be a pair of numbers, got {v!r}")
            if integer and not all(float(x).is_integer() for x in v):
                raise ConfigError(f"scene.{name} must be a pair of integers, got {v!r}")
            if not (lo_ok <= v[0] <= v[1] <= hi_ok) or not all(math.isfinite(x) for x in v):
                raise ConfigError(f"scene.{name} must satisfy {lo_ok} <= lo <= hi <= {hi_ok}, got {v!r}")

        def number(name: str, lo_ok: float, hi_ok: float) -> None:
            v = getattr(self, name)
            if (
                not isinstance(v, (int, float))
                or isinstance(v, bool)
                or not math.isfinite(v)
                or not lo_ok <= v <= hi_ok
            ):
                raise ConfigError(f"scene.{name} must be a number in [{lo_ok}, {hi_ok}], got {v!r}")

        rng_pair("horizon_range", 0.05, 0.9)
        rng_pair("vanishing_x_range", 0.0, 1.0)
        rng_pair("camera_height_range", 4.0, 30.0)
        rng_pair("lanes_range", 2, 12, integer=True)
        rng_pair("camera_lateral_range", -1.0, 2.0)
        for name in ("far_count_range", "mid_count_range", "near_count_range", "pedestrian_count_range"):
            rng_pair(name, 0, 500, integer=True)
        rng_pair("brightness_range", 0.05, 4.0)
        rng_pair("noise_std_range", 0.0, 64.0)
        number("focal_frac", 0.2, 5.0)
        number("lane_width", 2.0, 6.0)
        number("far_bottom", 0.05, 0.95)
        number("near_bottom", 0.05, 0.95)
        number("far_min_width_px", 2.0, 64.0)
        number("far_left_weight", 0.01, 100.0)
        number("max_overlap", 0.0, 1.0)
        number("min_box_px", 1.0, 64.0)
        for name in ("cross_road_prob", "cross_road_share", "flat_panel_prob", "tree_shadow_prob", "blur_prob"):
            number(name, 0.0, 1.0)
        if not self.horizon_range[1] < self.far_bottom < self.near_bottom:
            raise ConfigError(
                f"scene needs horizon_range hi < far_bottom < near_bottom, got "
                f"{self.horizon_range[1]}, {self.far_bottom}, {self.near_bottom}"
            )
        for name in ("far_class_probs", "mid_class_probs", "near_class_probs"):
            v = getattr(self, name)
            if (
                not isinstance(v, (tuple, list))
                or len(v) != 3
                or not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in v)
                or sum(v) <= 0
            ):
                raise ConfigError(
                    f"scene.{name} must be 3 weights >= 0 for (car, truck, bus) with a positive sum, got {v!r}"
                )
        if not isinstance(self.pedestrians, bool):
            raise ConfigError(f"scene.pedestrians must be true or false, got {self.pedestrians!r}")

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names this configuration produces (``pedestrian`` only when enabled)."""
        return class_names(self.pedestrians)


# --------------------------------------------------------------------------- camera geometry


@dataclass(frozen=True)
class _Camera:
    H: int
    W: int
    f: float  # focal length, pixels
    h: float  # camera height, metres
    yh: float  # horizon row
    xv: float  # vanishing column (camera axis)
    xc: float  # camera lateral position, metres (road spans X in [0, road_w])

    def x(self, X: Any, Z: Any) -> Any:
        return self.xv + self.f * (X - self.xc) / Z

    def y(self, Y: Any, Z: Any) -> Any:
        return self.yh + self.f * (self.h - Y) / Z

    def depth_of_row(self, y: float) -> float:
        return self.f * self.h / (y - self.yh)


@dataclass
class _Vehicle:
    label: int
    field: int  # 0 far, 1 mid, 2 near (by construction of the depth range)
    axis: str  # "z": drives along the main road; "x": along the cross road
    X0: float
    X1: float
    Z0: float
    Z1: float
    height: float
    front_high: bool  # the front is at the high end of the driving axis
    colour: np.ndarray  # body colour, float32 [3]
    colour2: np.ndarray  # truck cab / clothes colour, float32 [3]
    box: np.ndarray  # clipped xyxy, float64 [4]


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` as ints; ConfigError unless both are multiples of 16 and at least 64."""
    try:
        H, W = (int(v) for v in image_size)
        ok = all(float(v) == int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ConfigError(f"image_size must be (H, W), got {image_size!r}") from None
    if not ok or H < 64 or W < 64 or H % 16 or W % 16:
        raise ConfigError(f"image_size (H, W) must be multiples of 16 and at least 64, got {image_size!r}")
    return H, W


def field_of_boxes(
    boxes: np.ndarray, image_height: int, far_bottom: float = 0.5, near_bottom: float = 0.75
) -> np.ndarray:
    """Field index per box by its bottom edge: 0 far (y2 < far_bottom H), 1 mid, 2 near
    (y2 >= near_bottom H): the same split as :func:`cass_deploy.evaluation.metrics.field_of`, in numpy.

    boxes: [M, 4] xyxy pixels -> int64 [M].
    """
    y2 = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:, 3]
    H = float(image_height)
    return (y2 >= far_bottom * H).astype(np.int64) + (y2 >= near_bottom * H).astype(np.int64)


# --------------------------------------------------------------------------- public API


def generate_scene(
    seed: int, index: int, image_size: Sequence[int] = DEFAULT_IMAGE_SIZE, cfg: SceneConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One roadside scene, a pure function of ``(seed, index)``.

    Returns ``image`` uint8 [H, W, 3] (RGB), ``boxes`` float32 [M, 4] (xyxy pixels, clipped to the
    image, at least ``min_box_px`` wide and high, in drawing order far to near) and ``labels``
    int64 [M] (``car=0, truck=1, bus=2``, ``pedestrian=3`` when enabled).
    """
    cfg = SceneConfig() if cfg is None else cfg
    if not isinstance(cfg, SceneConfig):
        raise ConfigError(f"cfg must be a SceneConfig, got {type(cfg).__name__}")
    H, W = check_image_size(image_size)
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise InputError(f"{name} must be an integer >= 0, got {v!r}")
    ss = np.random.SeedSequence([int(seed), int(index)])
    rng_cam, rng_veh, rng_bg, rng_paint, rng_ped = (np.random.default_rng(s) for s in ss.spawn(5))

    cam, road = _sample_camera(rng_cam, H, W, cfg)
    vehicles = _place_vehicles(rng_veh, cam, road, cfg)
    if cfg.pedestrians:
        vehicles += _place_pedestrians(rng_ped, cam, road, cfg, vehicles)
    vehicles.sort(key=lambda v: -_distance(cam, v))  # painter's order: far first

    light = _sample_light(rng_bg, cfg)
    img = _render_background(rng_bg, cam, road, light, cfg)
    for v in vehicles:
        _paint_shadow(img, cam, v, light)
    panel_noise = 2.0 * _white_noise(rng_paint, (H, W, 1))  # fine texture of painted panels
    for v in vehicles:
        _paint_vehicle(img, cam, v, light, road, panel_noise)
    image = _finish(img, rng_bg, light)

    if vehicles:
        boxes = np.stack([v.box for v in vehicles]).astype(np.float32)
        labels = np.array([v.label for v in vehicles], dtype=np.int64)
    else:
        boxes, labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    return image, boxes, labels


def split_seed(seed: int, split: str) -> int:
    """Scene seed of a split: a stable hash of ``(seed, split)``, so train and val never share scenes."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    digest = hashlib.sha256(f"cass-deploy-synthetic:{int(seed)}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# Scenes cost ~70 ms each to draw on one core, more than a training step of the demo model per
# image, so training caches them (``cache=True``): once per process and split, shared by every
# dataset of the same (scene seed, size, scene config) — the ablation's runs draw them once.
# uint8 images: 0.34 MB per 256 x 448 scene; the oldest key is dropped beyond _CACHE_KEYS.
_CACHE_KEYS = 4
_SCENE_CACHES: dict[tuple, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}


def _shared_cache(key: tuple) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if key not in _SCENE_CACHES:
        while len(_SCENE_CACHES) >= _CACHE_KEYS:
            _SCENE_CACHES.pop(next(iter(_SCENE_CACHES)))
        _SCENE_CACHES[key] = {}
    return _SCENE_CACHES[key]


class SyntheticRoadside(DatasetBase):  # type: ignore[misc,valid-type]
    """Map-style dataset of roadside scenes generated on the fly (or cached with ``cache=True``,
    in a cache shared by the datasets of this process with the same scene seed, size and config).

    Item ``i``: ``{"image": float32 [3, H, W] in [0, 1], "boxes": float32 [M, 4] xyxy pixels,
    "labels": int64 [M], "image_id": i}``. Scene ``i`` of a split is
    ``generate_scene(split_seed(seed, split), i, image_size, cfg)``.
    """

    def __init__(
        self,
        num_images: int,
        split: str = "train",
        seed: int = 0,
        image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
        cfg: SceneConfig | None = None,
        cache: bool = False,
    ) -> None:
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
            raise InputError(f"num_images must be an integer >= 1, got {num_images!r}")
        self.num_images = int(num_images)
        self.split = split
        self.seed = seed
        self.scene_seed = split_seed(seed, split)
        self.image_size = check_image_size(image_size)
        self.cfg = SceneConfig() if cfg is None else cfg
        if not isinstance(self.cfg, SceneConfig):
            raise ConfigError(f"cfg must be a SceneConfig, got {type(self.cfg).__name__}")
        self.classes = self.cfg.classes
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = (
            _shared_cache((self.scene_seed, self.image_size, self.cfg)) if cache else None
        )

    def __len__(self) -> int:
        return self.num_images

    def get_numpy(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(image uint8 [H, W, 3], boxes float32 [M, 4], labels int64 [M], image_id)`` — no torch."""
        i = check_index(i, self.num_images)
        if self._cache is not None and i in self._cache:
            return (*self._cache[i], i)
        scene = generate_scene(self.scene_seed, i, self.image_size, self.cfg)
        if self._cache is not None:
            self._cache[i] = scene
        return (*scene, i)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return to_item(*self.get_numpy(i))

    def prefill(self, workers: int) -> int:
        """Draw every scene the cache lacks now, in ``workers`` forked processes (numpy only; a
        scene is a pure function of its seed and index, so the result is the same as drawing them
        one by one). Returns how many were drawn; without a cache or with one worker, nothing is
        done here (scenes are drawn when first read)."""
        if self._cache is None or workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            return 0
        todo = [i for i in range(self.num_images) if i not in self._cache]
        if len(todo) < 4 * workers:  # not worth starting processes
            return 0
        args = [(self.scene_seed, i, self.image_size, self.cfg) for i in todo]
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for i, scene in zip(todo, pool.map(_draw, args, chunksize=max(1, len(todo) // (4 * workers)))):
                self._cache[i] = scene
        return len(todo)


def _draw(a: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_scene(*a)


def write_synthetic_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
    split: str = "val",
    force: bool = False,
    cfg: SceneConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``images/000000.png ...`` + ``annotations.json`` (COCO) for one split; return ``out_dir``.

    The images are exactly ``SyntheticRoadside(num_images, split, seed, image_size, cfg)``'s, with
    image ids ``0..N-1``; category ids are ``label + 1``. Written into a temp directory that
    replaces ``out_dir`` only when complete; an existing ``out_dir`` needs ``force=True``.
    """

    ds = SyntheticRoadside(num_images, split=split, seed=seed, image_size=image_size, cfg=cfg)
    H, W = ds.image_size
    images, annotations = [], []
    with atomic_dir(out_dir, force=force) as tmp:
        (tmp / "images").mkdir()
        for i in range(len(ds)):
            image, boxes, labels, image_id = ds.get_numpy(i)
            name = f"{i:06d}.png"
            Image.fromarray(image).save(tmp / "images" / name, compress_level=1)
            images.append({"id": image_id, "file_name": name, "height": H, "width": W})
            b = boxes.astype(np.float64)
            for box, label in zip(b, labels.tolist()):
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(label) + 1,
                        "bbox": [float(box[0]), float(box[1]), w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
            if progress is not None:
                progress(i + 1, len(ds))
        data = {
            "info": {
                "description": "cass-deploy synthetic roadside scenes",
                "split": split,
                "seed": seed,
                "scene_seed": ds.scene_seed,
                "image_size": [H, W],
                "scene_config": dataclasses.asdict(ds.cfg),
            },
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": k + 1, "name": n, "supercategory": "vehicle" if k < 3 else "person"}
                for k, n in enumerate(ds.classes)
            ],
        }
        (tmp / "annotations.json").write_text(json.dumps(data) + "\n")
    return Path(out_dir)


# --------------------------------------------------------------------------- scene layout


def _sample_camera(rng: np.random.Generator, H: int, W: int, cfg: SceneConfig) -> tuple[_Camera, dict]:
    yh = rng.uniform(*cfg.horizon_range) * H
    xv = rng.uniform(*cfg.vanishing_x_range) * W
    h = rng.uniform(*cfg.camera_height_range)
    f = cfg.focal_frac * W
    n_lanes = int(rng.integers(cfg.lanes_range[0], cfg.lanes_range[1] + 1))
    road_w = n_lanes * cfg.lane_width
    xc = rng.uniform(*cfg.camera_lateral_range) * road_w
    cam = _Camera(H=H, W=W, f=f, h=h, yh=yh, xv=xv, xc=xc)
    # depth ranges of the three fields (depth of a vehicle's nearest face)
    z_far = cam.depth_of_row(cfg.far_bottom * H)
    z_mid = cam.depth_of_row(cfg.near_bottom * H)
    z_bottom = cam.depth_of_row(1.06 * H)
    z_near = cam.depth_of_row(1.3 * H)  # nearest start of a near-field vehicle (cut by the frame)
    z_max = max(f * _DIMS[0][0][0] / cfg.far_min_width_px, 1.6 * z_far)
    cross = None
    if rng.random() < cfg.cross_road_prob:
        zc0 = rng.uniform(1.25 * z_far, max(1.3 * z_far, 0.55 * z_max))
        cross = (zc0, zc0 + 2 * cfg.lane_width)
    road = {
        "n_lanes": n_lanes,
        "width": road_w,
        "lane_w": cfg.lane_width,
        "sidewalk": 3.0,
        "z_far": z_far,
        "z_mid": z_mid,
        "z_bottom": z_bottom,
        "z_near": z_near,
        "z_max": z_max,
        "cross": cross,
    }
    return cam, road


def _place_vehicles(rng: np.random.Generator, cam: _Camera, road: dict, cfg: SceneConfig) -> list[_Vehicle]:
    """Vehicles of the near, mid and far field, in that order, so that a farther vehicle is
    rejected when mostly hidden behind a nearer one. Returns them with boxes and colours set."""
    n_lanes = road["n_lanes"]
    layout = _Layout(cam, cfg)
    fields = (  # (field, count range, depth range of the nearest face, class weights)
        (2, cfg.near_count_range, (road["z_near"], 0.97 * road["z_mid"]), cfg.near_class_probs),
        (1, cfg.mid_count_range, (1.03 * road["z_mid"], 0.98 * road["z_far"]), cfg.mid_class_probs),
        (0, cfg.far_count_range, (1.02 * road["z_far"], road["z_max"]), cfg.far_class_probs),
    )
    left_w = cfg.far_left_weight ** (1.0 - np.arange(n_lanes) / max(n_lanes - 1, 1))
    for field, (lo, hi), z_range, probs in fields:
        target = int(rng.integers(lo, hi + 1))
        n_cross = int(round(target * cfg.cross_road_share)) if field == 0 and road["cross"] else 0
        lane_w = left_w if field == 0 else np.ones(n_lanes)
        got = (
            layout.fill(
                _candidates(rng, cam, road, 12 * n_cross + 12, field, z_range, probs, lane_w, on_cross=True), n_cross
            )
            if n_cross
            else 0
        )
        layout.fill(
            _candidates(rng, cam, road, 12 * (target - got) + 12, field, z_range, probs, lane_w, on_cross=False),
            target - got,
        )
    for v in layout.placed:
        v.colour = _body_colour(rng, v.label, cfg)
        v.colour2 = _TRUCK_COLOURS[rng.integers(len(_TRUCK_COLOURS))]
    return layout.placed


def _candidates(
    rng: np.random.Generator,
    cam: _Camera,
    road: dict,
    k: int,
    field: int,
    z_range: tuple[float, float],
    probs: Sequence[float],
    lane_weights: np.ndarray,
    on_cross: bool,
) -> dict[str, np.ndarray]:
    """``k`` random vehicles (arrays [k]) of one field, on the main road or the cross road."""
    p = np.asarray(probs, np.float64) / float(sum(probs))
    label = rng.choice(3, size=k, p=p)
    base = np.array([_DIMS[c][0] for c in range(3)])[label]  # [k, 3] width, height, length
    jit = np.array([_DIMS[c][1] for c in range(3)])[label]
    wid, hei, length = (base + jit * rng.uniform(-1, 1, (k, 3))).T
    lane_w = road["lane_w"]
    if on_cross:  # T-junction from the left: drives along X, seen side-on
        lane = rng.integers(0, 2, k)
        z0 = road["cross"][0] + lane * lane_w + (lane_w - wid) / 2
        x_left = np.minimum(cam.xc - cam.xv * z0 / cam.f - 0.3 * length, -2.0 - length)
        xm = x_left + (-1.0 - length / 2 - x_left) * rng.random(k)
        X0, X1, Z0, Z1 = xm - length / 2, xm + length / 2, z0, z0 + wid
        axis_x, front_high = np.ones(k, bool), lane == 0
    else:
        n = len(lane_weights)
        lane = rng.choice(n, size=k, p=lane_weights / lane_weights.sum())
        xm = (lane + 0.5) * lane_w + rng.normal(0, 0.25, k)
        z_lo, z_hi = z_range
        z_hi = max(z_hi, z_lo + 0.1)
        if field == 2:  # near field: log-uniform, the frame cuts the nearest (>= half stays visible)
            z0 = z_lo * np.exp(rng.uniform(0, np.log(z_hi / z_lo), k))
        else:  # uniform in depth: crowded toward the horizon
            z0 = rng.uniform(z_lo, z_hi, k)
        X0, X1, Z0, Z1 = xm - wid / 2, xm + wid / 2, z0, z0 + length
        axis_x, front_high = np.zeros(k, bool), lane >= n // 2
    return {
        "label": label,
        "field": np.full(k, field),
        "axis_x": axis_x,
        "front_high": front_high,
        "X0": X0,
        "X1": X1,
        "Z0": Z0,
        "Z1": Z1,
        "height": hei,
    }


def _place_pedestrians(
    rng: np.random.Generator, cam: _Camera, road: dict, cfg: SceneConfig, vehicles: list[_Vehicle]
) -> list[_Vehicle]:
    """Pedestrians on the sidewalks, from the bottom of the image to 120 m; label 3."""
    layout = _Layout(cam, cfg)
    for v in vehicles:
        layout.add(v)
    target = int(rng.integers(cfg.pedestrian_count_range[0], cfg.pedestrian_count_range[1] + 1))
    k = 12 * target + 12
    (w0, h0, l0), (dw, dh, _) = _DIMS[3]
    wid = w0 + dw * rng.uniform(-1, 1, k)
    hei = h0 + dh * rng.uniform(-1, 1, k)
    off = rng.uniform(0.4, road["sidewalk"] - 0.4, k)
    xm = np.where(rng.random(k) < 0.5, -off, road["width"] + off)
    z_hi = max(min(0.6 * road["z_max"], 120.0), 1.5 * road["z_bottom"])
    z0 = road["z_bottom"] * np.exp(rng.uniform(0, math.log(z_hi / road["z_bottom"]), k))
    n0 = len(layout.placed)
    layout.fill(
        {
            "label": np.full(k, 3),
            "field": np.zeros(k, np.int64),
            "axis_x": np.zeros(k, bool),
            "front_high": np.zeros(k, bool),
            "X0": xm - wid / 2,
            "X1": xm + wid / 2,
            "Z0": z0,
            "Z1": z0 + l0,
            "height": hei,
        },
        target,
    )
    peds = layout.placed[n0:]
    for v in peds:
        v.colour = _CLOTHES[rng.integers(len(_CLOTHES))]
        v.colour2 = _CLOTHES[rng.integers(len(_CLOTHES))]
    return peds


def _body_colour(rng: np.random.Generator, label: int, cfg: SceneConfig) -> np.ndarray:
    if label in (1, 2) and rng.random() < cfg.flat_panel_prob:
        # flat panel close to asphalt grey: resolved against the road colour when painted
        return np.array([-1.0, rng.uniform(0.85, 1.2), 0.0], np.float32)
    table = {0: _CAR_COLOURS, 1: _TRUCK_COLOURS, 2: _BUS_COLOURS}[label]
    c = table[rng.integers(len(table))] * rng.uniform(0.9, 1.08)
    return np.clip(c, 0, 255).astype(np.float32)


class _Layout:
    """Vehicles placed so far (boxes, 3-D footprints); ``fill`` adds candidates greedily."""

    def __init__(self, cam: _Camera, cfg: SceneConfig) -> None:
        self.cam, self.cfg = cam, cfg
        self.placed: list[_Vehicle] = []
        self._boxes = np.zeros((0, 4))
        self._feet = np.zeros((0, 4))
        self._axis_x = np.zeros(0, bool)

    def add(self, v: _Vehicle) -> None:
        self.placed.append(v)
        self._boxes = np.concatenate([self._boxes, v.box[None]])
        self._feet = np.concatenate([self._feet, np.array([[v.X0, v.X1, v.Z0, v.Z1]])])
        self._axis_x = np.append(self._axis_x, v.axis == "x")

    def boxes(self, c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Clipped boxes [k, 4] of candidates and whether each is usable: at least ``min_box_px``
        wide and high and at least half inside the image in each direction."""
        cam, cfg = self.cam, self.cfg
        dx0, dx1 = c["X0"] - cam.xc, c["X1"] - cam.xc
        r = np.stack([dx0 / c["Z0"], dx0 / c["Z1"], dx1 / c["Z0"], dx1 / c["Z1"]])
        fx0, fx1 = cam.xv + cam.f * r.min(0), cam.xv + cam.f * r.max(0)
        fy0, fy1 = cam.y(c["height"], c["Z1"]), cam.y(0.0, c["Z0"])  # h > height: far top is highest
        box = np.stack(
            [np.clip(fx0, 0, cam.W), np.clip(fy0, 0, cam.H), np.clip(fx1, 0, cam.W), np.clip(fy1, 0, cam.H)], 1
        )
        bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        ok = (bw >= cfg.min_box_px) & (bh >= cfg.min_box_px) & (bw >= 0.5 * (fx1 - fx0)) & (bh >= 0.5 * (fy1 - fy0))
        return box, ok

    def _conflict(
        self,
        box: np.ndarray,
        feet: np.ndarray,
        axis_x: np.ndarray,
        obox: np.ndarray,
        ofeet: np.ndarray,
        oaxis_x: np.ndarray,
    ) -> np.ndarray:
        """[k, n]: boxes overlap by more than ``max_overlap`` of the smaller one, or 3-D footprints
        come closer than 1 m along a driving direction / 0.2 m across it."""
        b, o = box[:, None, :], obox[None, :, :]
        inter = np.clip(np.minimum(b[..., 2], o[..., 2]) - np.maximum(b[..., 0], o[..., 0]), 0, None) * np.clip(
            np.minimum(b[..., 3], o[..., 3]) - np.maximum(b[..., 1], o[..., 1]), 0, None
        )
        area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        area_o = (o[..., 2] - o[..., 0]) * (o[..., 3] - o[..., 1])
        hidden = inter > self.cfg.max_overlap * np.minimum(area_b, area_o)
        any_x = axis_x[:, None] | oaxis_x[None, :]
        any_z = ~axis_x[:, None] | ~oaxis_x[None, :]
        gx, gz = np.where(any_x, 1.0, 0.2), np.where(any_z, 1.0, 0.2)
        f, g = feet[:, None, :], ofeet[None, :, :]
        touch = (
            (g[..., 0] < f[..., 1] + gx)
            & (f[..., 0] - gx < g[..., 1])
            & (g[..., 2] < f[..., 3] + gz)
            & (f[..., 2] - gz < g[..., 3])
        )
        return hidden | touch

    def fill(self, c: dict[str, np.ndarray], quota: int) -> int:
        """Accept candidates in order while they fit, up to ``quota``; return how many were added."""
        if quota <= 0:
            return 0
        box, ok = self.boxes(c)
        feet = np.stack([c["X0"], c["X1"], c["Z0"], c["Z1"]], 1)
        if self.placed:
            ok &= ~self._conflict(box, feet, c["axis_x"], self._boxes, self._feet, self._axis_x).any(1)
        blocked = ~ok
        added = 0
        for i in range(len(box)):  # greedy: one vectorised conflict row per accepted vehicle
            if blocked[i]:
                continue
            v = _Vehicle(
                int(c["label"][i]),
                int(c["field"][i]),
                "x" if c["axis_x"][i] else "z",
                float(feet[i, 0]),
                float(feet[i, 1]),
                float(feet[i, 2]),
                float(feet[i, 3]),
                float(c["height"][i]),
                bool(c["front_high"][i]),
                _NO_COLOUR,
                _NO_COLOUR,
                box[i],
            )
            self.add(v)
            added += 1
            if added == quota:
                break
            blocked |= self._conflict(box[i : i + 1], feet[i : i + 1], c["axis_x"][i : i + 1], box, feet, c["axis_x"])[
                0
            ]
        return added


def _distance(cam: _Camera, v: _Vehicle) -> float:
    return math.hypot(0.5 * (v.X0 + v.X1) - cam.xc, 0.5 * (v.Z0 + v.Z1))


# --------------------------------------------------------------------------- rendering helpers

_NOISE_BANK: np.ndarray | None = None
_NOISE_BANK_SIZE = 1 << 21


def _white_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise of ``shape``: a window of a fixed, process-wide bank at a
    random offset (deterministic, ~50x cheaper than drawing it); drawn directly when too big."""
    global _NOISE_BANK
    n = int(np.prod(shape))
    if n > _NOISE_BANK_SIZE // 2:
        return rng.standard_normal(shape, dtype=np.float32)
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(20240611).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
    start = int(rng.integers(0, _NOISE_BANK_SIZE - n))
    return _NOISE_BANK[start : start + n].reshape(shape)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise: a random grid of spacing ``cell`` pixels, smoothstep-interpolated. [h, w], ~N(0, 0.6)."""
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    yi = (np.arange(h, dtype=np.float32) + 0.5) / cell
    xi = (np.arange(w, dtype=np.float32) + 0.5) / cell
    y0, x0 = yi.astype(np.int64), xi.astype(np.int64)
    fy, fx = yi - y0, xi - x0
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    gx = g[:, x0] + (g[:, x0 + 1] - g[:, x0]) * fx  # [gh, w]: along x first
    top = gx[y0]
    return top + (gx[y0 + 1] - top) * fy[:, None]


def _sample_light(rng: np.random.Generator, cfg: SceneConfig) -> dict:
    sunny = rng.random() < 0.65
    return {
        "sunny": sunny,
        "sun_side": float(rng.choice([-1.0, 1.0])),  # sun from the left (-1) or right (+1)
        "sun_front": bool(rng.random() < 0.5),  # sun behind the camera: near faces lit
        "shadow_len": rng.uniform(0.3, 0.9) if sunny else 0.15,
        "shadow_k": rng.uniform(0.45, 0.65) if sunny else rng.uniform(0.75, 0.85),
        "gain": rng.uniform(*cfg.brightness_range),
        "cast": rng.uniform(0.92, 1.08, size=3).astype(np.float32),
        "gamma": rng.uniform(0.85, 1.15),
        "noise": rng.uniform(*cfg.noise_std_range),
        "blur": bool(rng.random() < cfg.blur_prob),
        "vignette": rng.uniform(0.0, 0.25),
        "haze": rng.uniform(250.0, 900.0),
        "tree_shadows": bool(rng.random() < cfg.tree_shadow_prob) and sunny,
    }


class _Ground(NamedTuple):
    """The ground plane below the horizon, per pixel row ``g0 ..`` of the image (``h = H - g0`` rows).

    g0: first ground row; Zr [h]: depth of each row (metres); X [h, W]: lateral position of each
    pixel (metres); Zc [h, 1]: ``Zr`` as a column.
    """

    g0: int
    Zr: np.ndarray
    X: np.ndarray
    Zc: np.ndarray


def _render_background(rng: np.random.Generator, cam: _Camera, road: dict, light: dict, cfg: SceneConfig) -> np.ndarray:
    """Sky, skyline, ground, sidewalks, road with markings, tree shadows. float32 [H, W, 3] (0-255).

    The parts draw from ``rng`` in this order: sky, skyline, ground materials, tree shadows.
    """
    H, W = cam.H, cam.W
    ys = np.arange(H, dtype=np.float32) + 0.5
    xs = np.arange(W, dtype=np.float32) + 0.5
    img = np.empty((H, W, 3), np.float32)
    s = W / 448.0

    hor, hz = _paint_sky(rng, img, cam, light, ys, s)
    _paint_skyline(rng, img, cam, hor, hz, ys, xs, s)

    # ground plane (rows below the horizon)
    g0 = int(cam.yh + 0.5)
    gy = ys[g0:]
    Zr = cam.f * cam.h / np.maximum(gy - cam.yh, 0.25)  # [h]
    X = cam.xc + (xs[None, :] - cam.xv) * Zr[:, None] / cam.f  # [h, W]
    ground = _Ground(g0, Zr, X, Zr[:, None])
    on_road = (X >= 0) & (X <= road["width"])
    mat, tex, palette = _ground_materials(rng, cam, road, ground, on_road, s)
    cov, centre = _lane_markings(cam, road, light, ground, on_road)
    shade = _tree_shadows(rng, road, light, ground, s)

    # compose per channel: (material + texture) and paint under shadow, hazed toward the horizon
    fade = np.exp(-Zr / light["haze"])[:, None]  # aerial perspective
    lit = shade * fade
    a, b, c = (1 - cov) * lit, cov * lit, 0.9 * (1 - fade)
    out = img[g0:]
    for ch, yellow in enumerate((0.0, 25.0, 145.0)):  # centre line: yellow
        paint = 225.0 - yellow * centre if yellow else 225.0
        out[..., ch] = (np.take(palette[:, ch], mat) + tex) * a + paint * b + hor[ch] * c
    return img


def _paint_sky(
    rng: np.random.Generator, img: np.ndarray, cam: _Camera, light: dict, ys: np.ndarray, s: float
) -> tuple[np.ndarray, int]:
    """Sky gradient and clouds into the rows above the horizon of ``img`` [H, W, 3] (in place).

    Returns the horizon colour ``hor`` float32 [3] and ``hz``, the first row at or below the horizon."""
    W = cam.W
    overcast = not light["sunny"]
    top = np.array([150, 165, 180] if overcast else [95, 140, 205], np.float32) * rng.uniform(0.9, 1.1)
    hor = np.array([200, 205, 210] if overcast else [200, 215, 230], np.float32) * rng.uniform(0.92, 1.05)
    hz = max(int(math.ceil(cam.yh)), 1)
    t = np.clip(ys[:hz] / cam.yh, 0, 1)[:, None, None] ** 0.7
    img[:hz] = top * (1 - t) + hor * t
    clouds = np.clip(_smooth_noise(rng, hz, W, 40 * s) + 0.2, 0, None)[..., None]
    img[:hz] += clouds * (25 if overcast else 45)
    return hor, hz


def _paint_skyline(
    rng: np.random.Generator,
    img: np.ndarray,
    cam: _Camera,
    hor: np.ndarray,
    hz: int,
    ys: np.ndarray,
    xs: np.ndarray,
    s: float,
) -> None:
    """Buildings (window grid) and trees (noisy blobs) standing on the horizon, hazed toward ``hor``:
    64 column segments of random width, into ``img`` [H, W, 3] rows above ``hz`` (in place)."""
    H, W = cam.H, cam.W
    widths = np.maximum(rng.integers(int(8 * s) + 2, int(60 * s) + 4, size=64), 2)
    seg = np.repeat(np.arange(64), widths)[:W]
    kinds = rng.random(64) < 0.55  # True: building
    heights = np.where(kinds, rng.uniform(0.03, 0.2, 64), rng.uniform(0.02, 0.09, 64)) * H
    heights *= rng.random(64) < 0.85  # some gaps
    col_h = heights[seg] + np.where(kinds[seg], 0.0, 2.5 * s * _smooth_noise(rng, 1, W, 6 * s)[0])
    build_c = np.array([[150, 145, 140], [120, 110, 100], [175, 170, 160], [110, 90, 80], [90, 95, 105]], np.float32)[
        rng.integers(0, 5, 64)
    ][seg]
    tree_c = np.array([55, 80, 45], np.float32) * rng.uniform(0.7, 1.2, (64, 1)).astype(np.float32)
    col_c = np.where(kinds[seg][:, None], build_c, tree_c[seg])
    r0 = max(0, int(cam.yh - col_h.max()) - 1)
    yy = ys[r0:hz, None]
    sky_mask = (yy >= cam.yh - col_h[None, :]) & (yy < cam.yh + 1)
    windows = (np.floor(yy / (4 * s)) % 2 == 0) & (np.floor(xs[None, :] / (3 * s)) % 2 == 0) & kinds[seg][None, :]
    tex = 8 * _white_noise(rng, (hz - r0, W)) * (~kinds[seg])[None, :]
    sk = col_c[None, :, :] - 35 * windows[..., None] + tex[..., None]
    hazed = 0.55 * sk + 0.45 * hor
    img[r0:hz] = np.where(sky_mask[..., None], hazed, img[r0:hz])


def _ground_materials(
    rng: np.random.Generator, cam: _Camera, road: dict, ground: _Ground, on_road: np.ndarray, s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grass / dirt, asphalt (road and cross road) and sidewalk with paving seams; sets ``road["colour"]``.

    Returns ``mat`` int [h, W] (0 grass, 1 asphalt, 2 sidewalk), ``tex`` [h, W] (grey texture
    added to every channel) and ``palette`` float32 [3 materials, RGB]."""
    W = cam.W
    Zr, X, Zc = ground.Zr, ground.X, ground.Zc
    hg = cam.H - ground.g0
    rw, sw = road["width"], road["sidewalk"]
    cross = road["cross"]
    if cross is not None:
        on_cross = ((Zc >= cross[0]) & (Zc <= cross[1])) & (X < 0)
    else:
        on_cross = np.zeros_like(on_road)
    sidewalk = (((X >= -sw) & (X < 0)) | ((X > rw) & (X <= rw + sw))) & ~on_cross
    # materials: 0 grass / dirt, 1 asphalt, 2 sidewalk; colour from a palette + a grey texture
    grass = np.array([75, 105, 55], np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    asphalt = float(rng.uniform(80, 135))
    road_c = asphalt * np.array([1.0, 1.0, 1.02], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    road["colour"] = road_c
    walk_c = np.array([165, 160, 150], np.float32) * np.float32(rng.uniform(0.9, 1.1))
    mat = np.where(on_road | on_cross, 1, np.where(sidewalk, 2, 0))
    grass_tex = 18 * _smooth_noise(rng, hg, W, 10 * s) + 9 * _white_noise(rng, (hg, W))
    road_tex = 6 * _smooth_noise(rng, hg, W, 14 * s) + 3.5 * _white_noise(rng, (hg, W))
    seam_w = np.minimum(Zr**2 / (cam.f * cam.h), 0.5)[:, None]  # one pixel row in metres
    road_tex -= 40 * ((np.mod(Zc, 1.6) < seam_w) & sidewalk)  # paving seams
    tex = np.where(mat == 0, grass_tex, road_tex)
    palette = np.stack([grass, road_c, walk_c])  # [material, RGB]
    return mat, tex, palette


def _lane_markings(
    cam: _Camera, road: dict, light: dict, ground: _Ground, on_road: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Paint coverage [h, W] in 0..1 of the road markings, hazed with depth: a 0.15 m line at
    ``X = k * lane_w``, dashed between lanes, solid at the centre and edges, and a crosswalk with
    stop line before a cross road. Also returns ``centre`` [h, W] bool (the yellow centre line)."""
    Zr, X, Zc = ground.Zr, ground.X, ground.Zc
    rw, cross = road["width"], road["cross"]
    px_per_m = cam.f / Zr[:, None]  # [h, 1]
    lane_w = road["lane_w"]
    k = np.clip(np.round(X / lane_w), 1, road["n_lanes"] - 1)
    half = 0.075 * px_per_m

    def coverage(d_px: np.ndarray) -> np.ndarray:  # overlap of a 1-px cell with the line, box filter
        return np.clip(np.minimum(d_px + 0.5, half) - np.maximum(d_px - 0.5, -half), 0, 1)

    cov_dash = coverage(np.abs(X - k * lane_w) * px_per_m)
    dashed = np.mod(Zc + 3.0, 12.0) < 4.0
    centre = np.abs(k - road["n_lanes"] / 2) < 0.5
    cov = cov_dash * (dashed | centre) * on_road
    for xe in (0.25, rw - 0.25):  # solid edge lines
        cov = np.maximum(cov, coverage(np.abs(X - xe) * px_per_m) * on_road)
    if cross is not None:  # crosswalk + stop line
        zebra = ((Zc > cross[0] - 4.5) & (Zc < cross[0] - 1.0)) & on_road & (np.mod(X, 1.2) < 0.6)
        cov = np.maximum(cov, zebra.astype(np.float32))
    cov = cov * np.clip(1.5 * np.exp(-Zr / light["haze"]), 0, 1)[:, None]
    return cov, centre


def _tree_shadows(rng: np.random.Generator, road: dict, light: dict, ground: _Ground, s: float) -> np.ndarray:
    """Shade factor [h, W] in ``shadow_k..1`` of soft tree-shadow blobs from the roadside, in ground
    coordinates (all ones without ``light["tree_shadows"]``; the rng is then not drawn from)."""
    Zr, X = ground.Zr, ground.X
    hg, W = X.shape
    rw, sw = road["width"], road["sidewalk"]
    shade = np.ones((hg, W), np.float32)
    if not light["tree_shadows"]:
        return shade
    for _ in range(int(rng.integers(2, 7))):
        side = rng.random() < 0.5
        xs_m = -sw - rng.uniform(0.5, 3) if side else rw + sw + rng.uniform(0.5, 3)
        xs_m += -light["sun_side"] * rng.uniform(2, 5)
        zs = road["z_bottom"] * math.exp(rng.uniform(0, math.log(60.0 / road["z_bottom"])))
        rad = rng.uniform(2.0, 4.5)
        rows = (Zr > zs - 1.4 * rad) & (Zr < zs + 1.4 * rad)  # rows it can reach
        if not rows.any():
            continue
        ra, rb = int(np.argmax(rows)), len(rows) - int(np.argmax(rows[::-1]))
        dist = ((X[ra:rb] - xs_m) / rad) ** 2 + ((Zr[ra:rb, None] - zs) / (1.4 * rad)) ** 2
        np.minimum(shade[ra:rb], np.clip(0.5 + 2.5 * (dist - 1.0), light["shadow_k"], 1.0), out=shade[ra:rb])
    return np.clip(shade * (1.0 + 0.05 * _smooth_noise(rng, hg, W, 5 * s)), 0, 1)


def _finish(img: np.ndarray, rng: np.random.Generator, light: dict) -> np.ndarray:
    """Lighting, optics and sensor: gain, colour cast, gamma, vignette, blur, noise -> uint8."""
    H, W = img.shape[:2]
    img *= np.float32(light["gain"]) * light["cast"]
    lut = (255.0 * (np.arange(256, dtype=np.float32) / 255.0) ** light["gamma"]).astype(np.float32)
    img = lut[np.clip(img, 0, 255).astype(np.uint8)]
    if light["vignette"] > 0:
        yy = (np.arange(H, dtype=np.float32) + 0.5) / H - 0.5
        xx = (np.arange(W, dtype=np.float32) + 0.5) / W - 0.5
        img *= (1 - np.float32(2 * light["vignette"]) * (yy[:, None] ** 2 + xx[None, :] ** 2))[..., None]
    if light["blur"]:  # 3-tap [1 2 1] / 4 blur, separable
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = (p[:-2] + 2 * p[1:-1] + p[2:]) * np.float32(0.25)
        img = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) * np.float32(0.25)
    sigma = np.float32(light["noise"])
    img += sigma * _white_noise(rng, (H, W, 1))
    img += (0.35 * sigma) * _white_noise(rng, (H, W, 3))
    img += 0.5
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


# --------------------------------------------------------------------------- vehicles


def _bounds(cam: _Camera, x0: float, x1: float, y0: float, y1: float):
    c0, c1 = max(0, int(math.floor(x0))), min(cam.W, int(math.ceil(x1)))
    r0, r1 = max(0, int(math.floor(y0))), min(cam.H, int(math.ceil(y1)))
    if c1 <= c0 or r1 <= r0:
        return None
    px = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
    py = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
    return r0, r1, c0, c1, px, py


def _face_z(cam: _Camera, X0: float, X1: float, Y0: float, Y1: float, Z: float):
    """Face at depth Z (an image-axis-aligned rectangle). Returns bounds, mask, (X, Y) per pixel."""
    xa, xb, ya, yb = cam.x(X0, Z), cam.x(X1, Z), cam.y(Y1, Z), cam.y(Y0, Z)
    b = _bounds(cam, xa, xb, ya, yb)
    if b is None:
        return None
    r0, r1, c0, c1, px, py = b
    mask = (px >= xa) & (px < xb) & (py >= ya) & (py < yb)
    Xp = cam.xc + (px - cam.xv) * Z / cam.f
    Yp = cam.h - (py - cam.yh) * Z / cam.f
    return (r0, r1, c0, c1), mask, Xp, Yp, np.full_like(Xp, Z)


def _face_x(cam: _Camera, Xs: float, Z0: float, Z1: float, Y0: float, Y1: float):
    """Face at lateral X = Xs (vertical-edged trapezoid). Returns bounds, mask, (Z, Y) per pixel."""
    xa, xb = sorted((cam.x(Xs, Z0), cam.x(Xs, Z1)))
    b = _bounds(cam, xa, xb, cam.y(Y1, Z1), cam.y(Y0, Z0))  # Y1 < h: the far top edge is highest
    if b is None:
        return None
    r0, r1, c0, c1, px, py = b
    denom = px - cam.xv
    denom = np.where(np.abs(denom) < 1e-6, 1e-6, denom)
    Zp = cam.f * (Xs - cam.xc) / denom  # [1, w]
    yt, yb = cam.y(Y1, Zp), cam.y(Y0, Zp)
    mask = (px >= xa) & (px < xb) & (py >= yt) & (py < yb) & (Zp > 0)
    Yp = cam.h - (py - cam.yh) * Zp / cam.f
    return (r0, r1, c0, c1), mask, np.full_like(Yp, Xs), Yp, np.broadcast_to(Zp, Yp.shape)


def _face_y(cam: _Camera, X0: float, X1: float, Z0: float, Z1: float, Y: float):
    """Horizontal face at height Y < h (roof, or footprint for Y=0). Returns bounds, mask, (X, Z)."""
    ya, yb = cam.y(Y, Z1), cam.y(Y, Z0)
    xa = min(cam.x(X0, Z0), cam.x(X0, Z1))
    xb = max(cam.x(X1, Z0), cam.x(X1, Z1))
    b = _bounds(cam, xa, xb, ya, yb)
    if b is None:
        return None
    r0, r1, c0, c1, px, py = b
    Zp = cam.f * (cam.h - Y) / np.maximum(py - cam.yh, 1e-6)  # [h, 1]
    Xp = cam.xc + (px - cam.xv) * Zp / cam.f
    mask = (py >= ya) & (py < yb) & (Xp >= X0) & (Xp < X1)
    return (r0, r1, c0, c1), mask, Xp, np.full_like(Xp, Y), np.broadcast_to(Zp, Xp.shape)


def _paint_shadow(img: np.ndarray, cam: _Camera, v: _Vehicle, light: dict) -> None:
    """Darken the ground under and beside a vehicle (sun-offset footprint)."""
    off = light["shadow_len"] * v.height
    dx = -light["sun_side"] * off
    dz = (-1 if light["sun_front"] else 1) * 0.5 * off
    face = _face_y(
        cam,
        min(v.X0, v.X0 + dx) - 0.15,
        max(v.X1, v.X1 + dx) + 0.15,
        max(v.Z0 + min(dz, 0) - 0.15, 0.5),
        v.Z1 + max(dz, 0) + 0.15,
        0.0,
    )
    if face is None:
        return
    (r0, r1, c0, c1), mask = face[0], face[1]
    region = img[r0:r1, c0:c1]
    region[mask] *= light["shadow_k"]


def _parts(v: _Vehicle) -> list[tuple[str, float, float, float, float]]:
    """(kind, u0, u1, y0, y1): parts as spans of the length fraction u (rear 0 -> front 1) and height."""
    hgt = v.height
    if v.label == 0:
        return [("car_body", 0.0, 1.0, 0.0, 0.55 * hgt), ("car_cabin", 0.22, 0.78, 0.55 * hgt, hgt)]
    if v.label == 1:
        return [("container", 0.0, 0.74, 0.0, hgt), ("cab", 0.77, 1.0, 0.0, 0.78 * hgt)]
    if v.label == 2:
        return [("bus", 0.0, 1.0, 0.0, hgt)]
    return [("ped", 0.0, 1.0, 0.0, hgt)]


def _part_box(v: _Vehicle, u0: float, u1: float, inset: float) -> tuple[float, float, float, float]:
    """3-D footprint (X0, X1, Z0, Z1) of the part spanning u0..u1 of the vehicle's length."""
    if v.axis == "z":
        lo, L = v.Z0, v.Z1 - v.Z0
        a, b = (lo + u0 * L, lo + u1 * L) if v.front_high else (lo + (1 - u1) * L, lo + (1 - u0) * L)
        return v.X0 + inset, v.X1 - inset, a, b
    lo, L = v.X0, v.X1 - v.X0
    a, b = (lo + u0 * L, lo + u1 * L) if v.front_high else (lo + (1 - u1) * L, lo + (1 - u0) * L)
    return a, b, v.Z0 + inset, v.Z1 - inset


def _paint_vehicle(
    img: np.ndarray, cam: _Camera, v: _Vehicle, light: dict, road: dict, panel_noise: np.ndarray
) -> None:
    body = v.colour
    if body[0] < 0:  # flat panel in asphalt grey
        body = np.clip(road["colour"] * body[1], 0, 255).astype(np.float32)
    if v.box[2] - v.box[0] < 8 and v.box[3] - v.box[1] < 8:
        _paint_tiny(img, v, body, light)
        return
    parts = []
    for kind, u0, u1, y0, y1 in _parts(v):
        inset = 0.06 * (v.X1 - v.X0) if kind == "car_cabin" else 0.0
        X0, X1, Z0, Z1 = _part_box(v, u0, u1, inset)
        d = math.hypot(0.5 * (X0 + X1) - cam.xc, 0.5 * (Z0 + Z1), cam.h - 0.5 * (y0 + y1))
        parts.append((d, kind, X0, X1, Z0, Z1, y0, y1))
    parts.sort(key=lambda p: -p[0])
    lit_side = light["sun_side"]
    for _, kind, X0, X1, Z0, Z1, y0, y1 in parts:
        colour = v.colour2 if kind == "cab" else body
        faces = []
        if y1 < cam.h:
            faces.append(("top", 1.12, _face_y(cam, X0, X1, Z0, Z1, y1)))
        if X0 > cam.xc:  # camera sees the face at X0 (normal -X)
            faces.append(("x", 1.0 if lit_side < 0 else 0.74, _face_x(cam, X0, Z0, Z1, y0, y1)))
        elif X1 < cam.xc:
            faces.append(("x", 1.0 if lit_side > 0 else 0.74, _face_x(cam, X1, Z0, Z1, y0, y1)))
        faces.append(("z", 0.97 if light["sun_front"] else 0.82, _face_z(cam, X0, X1, y0, y1, Z0)))
        for which, shade, face in faces:
            if face is None:
                continue
            (r0, r1, c0, c1), mask, Xp, Yp, Zp = face
            if not mask.any():
                continue
            C = np.empty(mask.shape + (3,), np.float32)
            C[...] = colour * shade
            if which != "top":
                _apply_pattern(C, v, kind, which, Xp, Yp, Zp, colour)
            fh, fw = mask.shape
            if fh >= 5 and fw >= 5:  # panel texture and distinct outlines on visible panels
                C += panel_noise[r0:r1, c0:c1]
                # outline: face pixels with a 4-neighbour outside the face (the image border is no edge)
                p = np.pad(mask, 1, mode="edge")
                if r0 > 0:
                    p[0] = False
                if r1 < cam.H:
                    p[-1] = False
                if c0 > 0:
                    p[:, 0] = False
                if c1 < cam.W:
                    p[:, -1] = False
                inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
                C[mask & ~inner] *= 0.55
            region = img[r0:r1, c0:c1]
            region[mask] = C[mask]


def _paint_tiny(img: np.ndarray, v: _Vehicle, body: np.ndarray, light: dict) -> None:
    """A vehicle under 8 px: its box, lit body with a glass band and a dark underside (the 3-D
    faces would cover the same few pixels at several times the cost)."""
    x0, y0, x1, y1 = v.box
    c0, c1 = int(math.floor(x0 + 0.5)), int(math.ceil(x1 - 0.5))
    r0, r1 = int(math.floor(y0 + 0.5)), int(math.ceil(y1 - 0.5))
    if c1 <= c0 or r1 <= r0:
        return
    vv = (y1 - (np.arange(r0, r1) + 0.5)) / (y1 - y0)  # 0 bottom -> 1 top
    C = np.empty((r1 - r0, 3), np.float32)
    C[:] = body * (0.97 if light["sun_front"] else 0.85)
    if v.label == 0:
        C[(vv > 0.55) & (vv < 0.9)] = _GLASS
    elif v.label == 2:
        C[(vv > 0.5) & (vv < 0.88)] = _GLASS
    elif v.label == 3:
        C[vv < 0.47] = v.colour2
        C[vv >= 0.85] = _SKIN
    C[vv > 0.9] = np.minimum(body * 1.12, 255)  # roof catches light
    if v.label != 3:
        C[vv < 0.15] = _DARK
    img[r0:r1, c0:c1] = C[:, None, :]


def _apply_pattern(
    C: np.ndarray,
    v: _Vehicle,
    kind: str,
    which: str,
    Xp: np.ndarray,
    Yp: np.ndarray,
    Zp: np.ndarray,
    colour: np.ndarray,
) -> None:
    """Windows, wheels, lights, plates, seams on a side or end face. C: [h, w, 3] modified in place."""
    vv = np.broadcast_to(Yp / v.height, C.shape[:2])
    along = (v.axis == "z") == (which == "x")  # this face runs along the vehicle's length
    if v.axis == "z":
        coord, lo, hi, across_lo, across_hi = Zp, v.Z0, v.Z1, v.X0, v.X1
        acr = Xp
    else:
        coord, lo, hi, across_lo, across_hi = Xp, v.X0, v.X1, v.Z0, v.Z1
        acr = Zp
    L = hi - lo
    if along:  # side face: u along the length, rear 0 -> front 1
        u = np.broadcast_to((coord - lo) / L if v.front_high else (hi - coord) / L, C.shape[:2])

        def put(m: np.ndarray, c: np.ndarray) -> None:
            C[m] = c

        if kind == "car_body":
            put((vv < 0.1), _DARK)
            put((vv < 0.3) & ((np.abs(u - 0.17) < 0.09) | (np.abs(u - 0.83) < 0.09)), _TIRE)
        elif kind == "car_cabin":
            uc = (u - 0.22) / 0.56
            put((vv > 0.6) & (vv < 0.95) & (uc > 0.06) & (uc < 0.94) & (np.abs(uc - 0.5) > 0.04), _GLASS)
        elif kind == "container":
            put((vv < 0.14), _DARK)
            put(
                (vv < 0.14) & ((np.abs(u - 0.08) < 0.045) | (np.abs(u - 0.2) < 0.045) | (np.abs(u - 0.62) < 0.045)),
                _TIRE,
            )
        elif kind == "cab":
            put((vv < 0.14), _DARK)
            put((vv < 0.16) & (np.abs(u - 0.89) < 0.05), _TIRE)
            put((vv > 0.47) & (vv < 0.72) & (u > 0.84) & (u < 0.97), _GLASS)
        elif kind == "bus":
            put((vv < 0.07), _DARK)
            pillar = np.mod(u * 9.0, 1.0) < 0.07
            put((vv > 0.5) & (vv < 0.88) & (u > 0.03) & (u < 0.97) & ~pillar, _GLASS)
            put((vv > 0.07) & (vv < 0.88) & (u > 0.86) & (u < 0.92), _GLASS)
            put((vv < 0.17) & ((np.abs(u - 0.17) < 0.055) | (np.abs(u - 0.78) < 0.055)), _TIRE)
        elif kind == "ped":
            _paint_ped(C, v, vv, np.abs(u - 0.5) * 2)
        return
    # end face: a across the width, front or rear by where the face sits
    a = np.broadcast_to((acr - across_lo) / max(across_hi - across_lo, 1e-6), C.shape[:2])
    c_mid = float(np.mean(coord))
    u_face = (c_mid - lo) / L if v.front_high else (hi - c_mid) / L
    front, rear = u_face > 0.95, u_face < 0.05

    if kind == "ped":
        _paint_ped(C, v, vv, np.abs(a - 0.5) * 2)
        return
    end = "front" if front else "rear" if rear else "middle"
    for when in ("any", end, "after"):
        for decal in _END_DECALS.get((kind, when), ()):
            _paint_decal(C, vv, a, colour, *decal)


#: What an end face (front or rear) of each body part shows, painted in order, as
#: ``(shape, v0, v1, a0, a1, colour)``: ``v`` is the height fraction on the face and ``a`` the
#: fraction across its width; ``"below"`` paints ``v < v1``, ``"window"`` ``v0 < v < v1`` and
#: ``a0 < a < a1``, ``"lamps"`` ``v0 < v < v1`` and (``a < a0`` or ``a > a1``), ``"seam"``
#: ``v > v0`` and ``|a - 0.5| < a0``. A colour of ``None`` is the body colour darkened (x 0.55).
#: Keys: ``(kind, "any")`` always, then ``(kind, "front")`` / ``(kind, "rear")`` on that end, then
#: ``(kind, "after")`` always.
_END_DECALS: dict[tuple[str, str], tuple[tuple, ...]] = {
    ("car_body", "any"): (("below", 0, 0.12, 0, 0, _DARK),),
    ("car_body", "front"): (("window", 0.14, 0.32, 0.25, 0.75, _GRILLE), ("lamps", 0.3, 0.44, 0.17, 0.83, _HEAD)),
    ("car_body", "rear"): (("lamps", 0.3, 0.44, 0.17, 0.83, _RED),),
    ("car_body", "after"): (("window", 0.15, 0.26, 0.38, 0.62, _PLATE),),
    ("car_cabin", "any"): (("window", 0.6, 0.95, 0.07, 0.93, _GLASS),),
    ("container", "any"): (("below", 0, 0.14, 0, 0, _DARK),),
    ("container", "rear"): (("lamps", 0.14, 0.2, 0.1, 0.9, _RED), ("seam", 0.14, 0, 0.012, 0, None)),
    ("cab", "any"): (("below", 0, 0.14, 0, 0, _DARK),),
    ("cab", "front"): (
        ("window", 0.45, 0.72, 0.06, 0.94, _GLASS),
        ("window", 0.16, 0.34, 0.25, 0.75, _GRILLE),
        ("lamps", 0.18, 0.27, 0.14, 0.86, _HEAD),
    ),
    ("bus", "any"): (("below", 0, 0.08, 0, 0, _DARK),),
    ("bus", "front"): (
        ("window", 0.45, 0.86, 0.05, 0.95, _GLASS),
        ("window", 0.87, 0.95, 0.2, 0.8, _SIGN),
        ("lamps", 0.1, 0.18, 0.15, 0.85, _HEAD),
    ),
    ("bus", "rear"): (("window", 0.62, 0.9, 0.1, 0.9, _GLASS), ("lamps", 0.12, 0.22, 0.12, 0.88, _RED)),
}


def _paint_decal(
    C: np.ndarray,
    vv: np.ndarray,
    a: np.ndarray,
    body: np.ndarray,
    shape: str,
    v0: float,
    v1: float,
    a0: float,
    a1: float,
    colour: np.ndarray | None,
) -> None:
    """One ``_END_DECALS`` entry onto an end face. C: [h, w, 3]; vv, a: [h, w] (modified: C)."""
    if shape == "below":
        mask = vv < v1
    elif shape == "window":
        mask = (vv > v0) & (vv < v1) & (a > a0) & (a < a1)
    elif shape == "lamps":
        mask = (vv > v0) & (vv < v1) & ((a < a0) | (a > a1))
    else:  # seam
        mask = (vv > v0) & (np.abs(a - 0.5) < a0)
    C[mask] = body * 0.55 if colour is None else colour


def _paint_ped(C: np.ndarray, v: _Vehicle, vv: np.ndarray, r: np.ndarray) -> None:
    C[vv < 0.47] = v.colour2
    C[(vv >= 0.47) & (vv < 0.85)] = v.colour
    C[vv >= 0.85] = np.where(r[vv >= 0.85][:, None] < 0.6, _SKIN, _DARK * 2)


__all__ = [
    "SceneConfig",
    "generate_scene",
    "SyntheticRoadside",
    "write_synthetic_dataset",
    "split_seed",
    "field_of_boxes",
    "check_image_size",
    "CLASSES",
    "ALL_CLASSES",
    "DEFAULT_IMAGE_SIZE",
]
