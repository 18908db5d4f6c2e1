"""Soft target masks and patch ownership for CASS (SPEC §2 and §4), as pure tensor functions.

Geometry: the network input is ``(H, W)`` pixels, the patch grid ``(Hp, Wp)``; patch
``p = i * Wp + j`` (row-major) has centre ``cx = (j + 0.5) * W / Wp``, ``cy = (i + 0.5) * H / Hp``.
Boxes are pixel ``x1, y1, x2, y2`` of the network input, one ``[M_b, 4]`` tensor per image.

Everything is vectorised over all boxes of the batch at once. Instead of a dense ``[N, P]``
box-by-patch matrix, each box enumerates only the patches of its expanded rectangle (a ragged
range built with ``repeat_interleave``), so the work is proportional to the area the boxes
cover, not to ``N * P``. The resulting ``(box, patch)`` pairs feed the merged target (max over
boxes), ownership, and the object, area and seed-object normalisations in ``losses.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cass_deploy.backends.limits import check_image_size
from cass_deploy.errors import InputError

BoxList = Sequence[Tensor]


@dataclass(frozen=True)
class FlatBoxes:
    """All boxes of a batch in one tensor.

    boxes: [N, 4] clipped to the image, compute dtype; batch: [N] int64 image of each box;
    num_images: B; image_size: (H, W).
    """

    boxes: Tensor
    batch: Tensor
    num_images: int
    image_size: tuple[int, int]

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    def area_fraction(self) -> Tensor:
        """[N] box area as a fraction of the image area."""
        H, W = self.image_size
        b = self.boxes
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / float(H * W)

    def area_pixels(self) -> Tensor:
        """[N] box area in pixels."""
        b = self.boxes
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


@dataclass(frozen=True)
class BoxPatchPairs:
    """Sparse (box, patch) pairs covering each box's expanded rectangle.

    box: [T] int64 flat box index; patch: [T] int64 patch index within its image (0..P-1);
    flat: [T] int64 ``batch * P + patch``; value: [T] single-box soft target value;
    core: [T] bool patch centre inside the box, or the ensured centre patch of a tiny box;
    covered: [T] bool inside the box grown by the expansion ratio (core or context ring).
    """

    box: Tensor
    patch: Tensor
    flat: Tensor
    value: Tensor
    core: Tensor
    covered: Tensor


@dataclass(frozen=True)
class ObjectPatches:
    """The patches of each object: centres inside the box, plus the ensured centre patch.

    box: [T] int64 flat box index; patch: [T] int64 flat ``b * P + p``; batch: [N] int64;
    num_patches: [N] int64 patches per box; num_boxes: N.
    """

    box: Tensor
    patch: Tensor
    batch: Tensor
    num_patches: Tensor
    num_boxes: int


# --------------------------------------------------------------------------- validation


def check_geometry(grid: Sequence[int], image_size: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate ``grid = (Hp, Wp)`` and ``image_size = (H, W)`` as positive integers."""
    try:
        Hp, Wp = (int(v) for v in grid)
        H, W = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise InputError(
            f"grid and image_size must be pairs of integers, got grid={grid!r}, image_size={image_size!r}"
        ) from None
    if min(Hp, Wp, H, W) <= 0:
        raise InputError(f"grid and image_size must be positive, got grid={(Hp, Wp)}, image_size={(H, W)}")
    return (Hp, Wp), (H, W)


def flatten_boxes(
    boxes: BoxList,
    image_size: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> FlatBoxes:
    """Validate, clip and concatenate per-image boxes.

    boxes: list of B tensors (or array-likes) ``[M_b, 4]`` in pixel xyxy; an image without boxes
    may be ``[0, 4]`` or ``[0]``. Raises InputError naming the image and box for non-finite
    coordinates, ``x2 <= x1`` or ``y2 <= y1``, or a box lying entirely outside the image.
    Partially outside boxes are clipped to the image.
    """
    H, W = (int(v) for v in image_size)
    if isinstance(boxes, Tensor) and boxes.dim() == 3:
        boxes = list(boxes)
    if not isinstance(boxes, (list, tuple)):
        raise InputError(f"boxes must be a list with one [M, 4] tensor per image, got {type(boxes).__name__}")
    parts, batch = [], []
    for b, bx in enumerate(boxes):
        t = torch.as_tensor(bx)
        if t.numel() == 0:
            continue
        if t.dim() != 2 or t.shape[1] != 4:
            raise InputError(f"boxes of image {b} must have shape [M, 4], got {list(t.shape)}")
        if t.dtype == torch.bool or t.is_complex():
            raise InputError(f"boxes of image {b} must be real numbers, got dtype {t.dtype}")
        parts.append(t.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32))
        batch.append(torch.full((t.shape[0],), b, dtype=torch.int64, device=device))
    if not parts:
        empty = torch.zeros((0, 4), dtype=dtype, device=device)
        return FlatBoxes(empty, torch.zeros(0, dtype=torch.int64, device=device), len(boxes), (H, W))
    flat = torch.cat(parts)
    bidx = torch.cat(batch)

    def fail(mask: Tensor, what: str) -> None:
        n = int(mask.nonzero()[0, 0])
        img = int(bidx[n])
        local = n - int((bidx[:n] == img).sum())
        raise InputError(f"image {img}, box {local}: {what}, got {flat[n].tolist()}")

    bad = ~torch.isfinite(flat).all(dim=1)
    if bad.any():
        fail(bad, "coordinates must be finite")
    bad = (flat[:, 2] <= flat[:, 0]) | (flat[:, 3] <= flat[:, 1])
    if bad.any():
        fail(bad, "needs x2 > x1 and y2 > y1 (pixel x1, y1, x2, y2)")
    lo = flat.new_zeros(4)
    hi = flat.new_tensor([W, H, W, H])
    clipped = torch.minimum(torch.maximum(flat, lo), hi)
    bad = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if bad.any():
        fail(bad, f"lies entirely outside the {W}x{H} image")
    return FlatBoxes(clipped.to(dtype), bidx, len(boxes), (H, W))


# --------------------------------------------------------------------------- pairs


def patch_centers(
    grid: Sequence[int], image_size: Sequence[int], *, device=None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Patch centre coordinates: cx [Wp] = (j + 0.5) * W / Wp, cy [Hp] = (i + 0.5) * H / Hp."""
    (Hp, Wp), (H, W) = check_geometry(grid, image_size)
    cx = (torch.arange(Wp, device=device, dtype=dtype) + 0.5) * W / Wp
    cy = (torch.arange(Hp, device=device, dtype=dtype) + 0.5) * H / Hp
    return cx, cy


def box_patch_pairs(
    flat: FlatBoxes,
    grid: Sequence[int],
    *,
    expansion_ratio: float = 0.5,
    context_peak: float = 0.5,
    decay: str = "linear",
    ensure_center_patch: bool = True,
) -> BoxPatchPairs:
    """Enumerate each box's expanded rectangle and give each (box, patch) its soft value.

    Value (SPEC §2): 1 in the core (centre inside the box, inclusive); in the context ring
    ``context_peak * max(0, 1 - d / expand_dist)`` (linear) or
    ``context_peak * exp(-d^2 / (2 (expand_dist / 2)^2))`` (gaussian), with ``d`` the distance
    from the patch centre to the box and ``expand_dist = sqrt(ew^2 + eh^2)``; 0 elsewhere.
    With ``ensure_center_patch`` a box that contains no patch centre gets 1 at the patch
    containing its centre.
    """
    if decay not in ("linear", "gaussian"):
        raise InputError(f"decay must be 'linear' or 'gaussian', got {decay!r}")
    (Hp, Wp), (H, W) = check_geometry(grid, flat.image_size)
    P = Hp * Wp
    b = flat.boxes
    dev, dt = b.device, b.dtype
    x1, y1, x2, y2 = b.unbind(1)
    ew = (x2 - x1) * expansion_ratio
    eh = (y2 - y1) * expansion_ratio
    sx, sy = Wp / W, Hp / H
    # A superset (by <= 1 patch each side) of the columns/rows whose centre can lie in the
    # expanded box; exact membership is decided below by comparing centres. The range always
    # contains the patch holding the box centre (floor(c) <= ceil(c - 0.5)).
    j0 = torch.floor((x1 - ew) * sx - 0.5).clamp(0, Wp - 1).long()
    j1 = torch.ceil((x2 + ew) * sx - 0.5).clamp(0, Wp - 1).long()
    i0 = torch.floor((y1 - eh) * sy - 0.5).clamp(0, Hp - 1).long()
    i1 = torch.ceil((y2 + eh) * sy - 0.5).clamp(0, Hp - 1).long()
    nw = j1 - j0 + 1
    counts = (i1 - i0 + 1) * nw
    total = int(counts.sum())
    box = torch.repeat_interleave(torch.arange(flat.num_boxes, device=dev), counts, output_size=total)
    start = torch.cumsum(counts, 0) - counts
    # one gather per dtype instead of one advanced-indexing call per box attribute
    ints = torch.stack([start, nw, i0, j0], 1).index_select(0, box)
    fl = torch.stack([x1, y1, x2, y2, ew, eh], 1).index_select(0, box)
    local = torch.arange(total, device=dev) - ints[:, 0]
    li = torch.div(local, ints[:, 1], rounding_mode="floor")
    i = ints[:, 2] + li
    j = ints[:, 3] + (local - li * ints[:, 1])

    cx_t, cy_t = patch_centers((Hp, Wp), (H, W), device=dev, dtype=dt)
    cx, cy = cx_t.index_select(0, j), cy_t.index_select(0, i)
    bx1, by1, bx2, by2, bew, beh = fl.unbind(1)
    in_x, in_y = (cx >= bx1) & (cx <= bx2), (cy >= by1) & (cy <= by2)
    core = in_x & in_y
    covered = (cx >= bx1 - bew) & (cx <= bx2 + bew) & (cy >= by1 - beh) & (cy <= by2 + beh)
    dx = torch.clamp(torch.maximum(bx1 - cx, cx - bx2), min=0)
    dy = torch.clamp(torch.maximum(by1 - cy, cy - by2), min=0)
    dist2 = dx * dx + dy * dy
    expand2 = bew * bew + beh * beh
    if decay == "linear":
        ctx = context_peak * torch.clamp(1 - torch.sqrt(dist2 / expand2.clamp_min(1e-12)), min=0)
    else:
        ctx = context_peak * torch.exp(-dist2 / (2 * (expand2 / 4).clamp_min(1e-12)))
    value = torch.where(core, torch.ones_like(ctx), torch.where(covered, ctx, torch.zeros_like(ctx)))

    if ensure_center_patch and total:
        core_count = torch.zeros(flat.num_boxes, device=dev, dtype=torch.int64).index_add_(0, box, core.long())
        ic = torch.floor((y1 + y2) * 0.5 * sy).clamp(0, Hp - 1).long()
        jc = torch.floor((x1 + x2) * 0.5 * sx).clamp(0, Wp - 1).long()
        # flat patch index of each tiny box's centre patch, -1 for boxes that have a core
        centre_patch = torch.where(core_count == 0, ic * Wp + jc, torch.full_like(ic, -1))
        centre = (i * Wp + j) == centre_patch.index_select(0, box)
        value = torch.where(centre, torch.ones_like(value), value)
        core = core | centre
        covered = covered | centre

    patch = i * Wp + j
    return BoxPatchPairs(
        box=box, patch=patch, flat=flat.batch.index_select(0, box) * P + patch, value=value, core=core, covered=covered
    )


# --------------------------------------------------------------------------- merged target, ownership


def merge_max(pairs: BoxPatchPairs, num_images: int, num_patches: int) -> Tensor:
    """Merged target: element-wise max over the boxes of each image -> [B, P]."""
    out = pairs.value.new_zeros(num_images * num_patches)
    out.scatter_reduce_(0, pairs.flat, pairs.value, reduce="amax", include_self=True)
    return out.view(num_images, num_patches)


def owner_from_pairs(pairs: BoxPatchPairs, flat: FlatBoxes, target: Tensor) -> Tensor:
    """Owner of each patch -> [B, P] int64 flat box index, -1 for background (target 0).

    The owner is the box giving the largest value at the patch; ties go to the smaller box
    (pixel area), then to the lower box index.
    """
    B, P = target.shape
    N = flat.num_boxes
    dev = target.device
    owner = torch.full((B * P,), -1, dtype=torch.int64, device=dev)
    if N == 0:
        return owner.view(B, P)
    # rank of each box in (area, index) order; lower rank wins ties. All pairs at one flat
    # patch come from one image, so ranks only ever compete within an image.
    order = torch.argsort(flat.area_pixels(), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(N, device=dev)
    winner = (pairs.value > 0) & (pairs.value == target.reshape(-1).index_select(0, pairs.flat))
    cand = torch.where(winner, rank.index_select(0, pairs.box), torch.full_like(pairs.box, N))
    best = torch.full((B * P,), N, dtype=torch.int64, device=dev)
    best.scatter_reduce_(0, pairs.flat, cand, reduce="amin", include_self=True)
    owner = torch.where(best < N, order.index_select(0, best.clamp(max=N - 1)), owner)
    return owner.view(B, P)


def soft_target_mask(
    boxes: BoxList,
    grid: Sequence[int],
    image_size: Sequence[int],
    *,
    expansion_ratio: float = 0.5,
    context_peak: float = 0.5,
    decay: str = "linear",
    ensure_center_patch: bool = True,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Soft target mask -> [B, P] (SPEC §2), boxes of one image merged by max."""
    (Hp, Wp), _ = check_geometry(grid, image_size)
    flat = flatten_boxes(boxes, image_size, device=device, dtype=dtype)
    pairs = box_patch_pairs(
        flat,
        (Hp, Wp),
        expansion_ratio=expansion_ratio,
        context_peak=context_peak,
        decay=decay,
        ensure_center_patch=ensure_center_patch,
    )
    return merge_max(pairs, flat.num_images, Hp * Wp)


def patch_owner(boxes: BoxList, grid: Sequence[int], image_size: Sequence[int], **kwargs) -> Tensor:
    """Owner of each patch -> [B, P] int64 flat box index (boxes of image 0 first), -1 = background."""
    (Hp, Wp), _ = check_geometry(grid, image_size)
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", torch.float32)
    flat = flatten_boxes(boxes, image_size, device=device, dtype=dtype)
    pairs = box_patch_pairs(flat, (Hp, Wp), **kwargs)
    target = merge_max(pairs, flat.num_images, Hp * Wp)
    return owner_from_pairs(pairs, flat, target)


def object_patches(
    boxes: BoxList, grid: Sequence[int], image_size: Sequence[int], *, ensure_center: bool = True, device=None
) -> ObjectPatches:
    """The patches of every object: centre inside the box (inclusive), plus the patch holding
    the box centre for a box that contains no patch centre (when ``ensure_center``)."""
    (Hp, Wp), _ = check_geometry(grid, image_size)
    flat = flatten_boxes(boxes, image_size, device=device)
    pairs = box_patch_pairs(flat, (Hp, Wp), expansion_ratio=0.0, ensure_center_patch=ensure_center)
    keep = pairs.core
    box, patch = pairs.box[keep], pairs.flat[keep]
    count = torch.bincount(box, minlength=flat.num_boxes)
    return ObjectPatches(box=box, patch=patch, batch=flat.batch, num_patches=count, num_boxes=flat.num_boxes)


def grid_for(image_size: Sequence[int], patch_size: int) -> tuple[int, int]:
    """Patch grid of an image size that is a multiple of ``patch_size`` (positive, checked by
    :func:`cass_deploy.backends.limits.check_image_size`)."""
    H, W = check_image_size(tuple(image_size), patch_size)
    return H // patch_size, W // patch_size
