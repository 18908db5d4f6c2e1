"""Token pruner: which patches the late blocks see (SPEC §6).

Modes
-----
- ``global``: top-k of the importance scores over the whole grid.
- ``band``: the grid is split into horizontal bands (row ranges); each band keeps its own
  quota, so near rows can never be starved by a crowded horizon and every TopK stays small.
- ``threshold``: keep patches with ``sigmoid(score) >= threshold`` (data-dependent count; a
  mask, no gather).
- ``none``: dense model, every patch kept.

``k = ceil(keep_ratio * P)`` is a Python int fixed when the pruner is built (never derived from
a tensor), so exported graphs have static shapes. Kept indices are sorted by patch index.
Everything here is export-friendly: ``torch.topk`` + ``torch.sort`` + ``torch.scatter`` only.
The pruner knows no deployment target: whether its TopK sizes (:attr:`Pruner.topk_sizes`) fit
one is checked by ``backends.limits.check_request`` before export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from cass_deploy.errors import ConfigError, InputError
from cass_deploy.model.interface import compute_k

PRUNER_MODES = ("global", "band", "threshold", "none")
BAND_QUOTA_MODES = ("equal", "proportional")
_SUM_TOL = 1e-3  # tolerance on "sums to 1" for hand-written quota fractions


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fractions(name: str, value: object, bands: int) -> tuple[float, ...]:
    """Validate a tuple of ``bands`` non-negative numbers summing to 1 (± 1e-3); renormalised."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"pruner.{name} must be a list of {bands} numbers, got {value!r}")
    if len(value) != bands:
        raise ConfigError(f"pruner.{name} needs one value per band ({bands}), got {list(value)!r}")
    if not all(_is_number(v) and v >= 0 for v in value):
        raise ConfigError(f"pruner.{name} values must be finite numbers >= 0, got {list(value)!r}")
    total = float(sum(value))
    if abs(total - 1.0) > _SUM_TOL:
        raise ConfigError(f"pruner.{name} must sum to 1, got {list(value)!r} (sum {total:.6g})")
    return tuple(float(v) / total for v in value)


@dataclass
class PrunerConfig:
    """Pruner settings.

    ``band_rows``: row boundaries of the bands on the patch grid, either the ``bands - 1``
    interior boundaries (``(5, 10)``) or the full list ``(0, 5, 10, Hp)``; ``None`` splits the
    rows equally (``floor(i * Hp / bands)``, the nearest band takes the remainder).
    ``band_quotas``: ``"equal"``, ``"proportional"`` (to ``band_positive_share``, each band's
    share of positive CASS-target patches in the training set, see :func:`band_positive_share`)
    or explicit fractions per band summing to 1. Bands are ordered top (far) to bottom (near).
    ``threshold``: probability τ of the ``threshold`` mode.
    """

    mode: Literal["global", "band", "threshold", "none"] = "global"
    keep_ratio: float = 0.5
    bands: int = 3
    band_rows: tuple[int, ...] | None = None
    band_quotas: str | tuple[float, ...] = "equal"
    band_positive_share: tuple[float, ...] | None = None
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in PRUNER_MODES:
            raise ConfigError(f"pruner.mode must be one of {list(PRUNER_MODES)}, got {self.mode!r}")
        if not _is_number(self.keep_ratio) or not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"pruner.keep_ratio must be a number in (0, 1], got {self.keep_ratio!r}")
        self.keep_ratio = float(self.keep_ratio)
        if not _is_number(self.threshold) or not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"pruner.threshold must be a probability in (0, 1), got {self.threshold!r}")
        self.threshold = float(self.threshold)
        if isinstance(self.bands, bool) or not isinstance(self.bands, int) or self.bands < 1:
            raise ConfigError(f"pruner.bands must be an integer >= 1, got {self.bands!r}")
        if self.band_rows is not None:
            rows = self.band_rows
            if not isinstance(rows, (list, tuple)) or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in rows
            ):
                raise ConfigError(f"pruner.band_rows must be a list of integers, got {rows!r}")
            if len(rows) not in (self.bands - 1, self.bands + 1):
                raise ConfigError(
                    f"pruner.band_rows {list(rows)!r} does not match pruner.bands={self.bands}: give "
                    f"{self.bands - 1} interior boundaries or {self.bands + 1} boundaries from 0 to Hp"
                )
            if any(b <= a for a, b in zip(rows, rows[1:])) or (rows and rows[0] < 0):
                raise ConfigError(f"pruner.band_rows must be strictly increasing and >= 0, got {list(rows)!r}")
            self.band_rows = tuple(rows)
        if isinstance(self.band_quotas, str):
            if self.band_quotas not in BAND_QUOTA_MODES:
                raise ConfigError(
                    f"pruner.band_quotas must be one of {list(BAND_QUOTA_MODES)} or a "
                    f"list of fractions, got {self.band_quotas!r}"
                )
        else:
            self.band_quotas = _fractions("band_quotas", self.band_quotas, self.bands)
        if self.band_positive_share is not None:
            self.band_positive_share = _fractions("band_positive_share", self.band_positive_share, self.bands)


# --------------------------------------------------------------------------- geometry (pure)


def band_boundaries(grid_rows: int, bands: int, band_rows: Sequence[int] | None = None) -> tuple[int, ...]:
    """Row boundaries ``(0, r1, ..., grid_rows)`` of ``bands`` horizontal bands (far → near)."""
    if bands < 1 or bands > grid_rows:
        raise ConfigError(f"pruner.bands={bands} must be between 1 and the grid's {grid_rows} rows")
    if band_rows is None:
        return tuple((i * grid_rows) // bands for i in range(bands)) + (grid_rows,)
    rows = tuple(band_rows)
    full = rows if len(rows) == bands + 1 else (0,) + rows + (grid_rows,)
    if len(full) != bands + 1 or full[0] != 0 or full[-1] != grid_rows or any(b <= a for a, b in zip(full, full[1:])):
        raise ConfigError(
            f"pruner.band_rows {list(rows)!r} must split the grid's rows 0..{grid_rows} into {bands} non-empty bands"
        )
    return full


def allocate_quotas(total: int, weights: Sequence[float], caps: Sequence[int]) -> tuple[int, ...]:
    """Split ``total`` into integer quotas proportional to ``weights``, each ``<= caps[i]``.

    Largest-remainder rounding (ties go to the later, i.e. nearer, band); what a capped band
    cannot take is redistributed over the others by weight (by free room where the remaining
    weights are all zero). The quotas sum exactly to ``total``.
    """
    n = len(weights)
    if n != len(caps) or n == 0:
        raise ConfigError(f"need one weight per band: weights={list(weights)!r}, caps={list(caps)!r}")
    if total < 0 or total > sum(caps):
        raise ConfigError(f"cannot keep {total} patches in bands of sizes {list(caps)}")
    quotas = [0] * n
    remaining = total
    while remaining > 0:
        open_ = [i for i in range(n) if quotas[i] < caps[i]]
        w = [float(weights[i]) for i in open_]
        if sum(w) <= 0:
            w = [float(caps[i] - quotas[i]) for i in open_]
        s = sum(w)
        exact = [remaining * wi / s for wi in w]
        base = [math.floor(e) for e in exact]
        order = sorted(range(len(open_)), key=lambda j: (-(exact[j] - base[j]), -open_[j]))
        for j in order[: remaining - sum(base)]:
            base[j] += 1
        for j, i in enumerate(open_):
            add = min(base[j], caps[i] - quotas[i])
            quotas[i] += add
            remaining -= add
    return tuple(quotas)


def band_positive_share(
    targets: Tensor, grid: tuple[int, int], bands: int | Sequence[int] = 3, positive_threshold: float = 0.5
) -> tuple[float, ...]:
    """Each band's share of the positive target patches (``target > positive_threshold``).

    targets: ``[N, P]`` soft CASS targets (``P = Hp * Wp``, row-major), e.g. the whole training
    set. ``bands``: number of equal bands or row boundaries as in ``PrunerConfig.band_rows``
    (interior or full). Returns fractions summing to 1, far band first — the value to store as
    ``PrunerConfig.band_positive_share`` for ``band_quotas="proportional"``.
    """
    hp, wp = grid
    if targets.dim() != 2 or targets.shape[1] != hp * wp:
        raise InputError(f"targets must be [N, {hp * wp}] for grid {grid}, got {list(targets.shape)}")
    if isinstance(bands, int):
        bounds = band_boundaries(hp, bands)
    else:
        rows = tuple(bands)
        nb = len(rows) - 1 if rows and rows[0] == 0 and rows[-1] == hp else len(rows) + 1
        bounds = band_boundaries(hp, nb, rows)
    per_row = (targets.detach() > positive_threshold).reshape(-1, hp, wp).sum(dim=(0, 2)).double()
    counts = torch.stack([per_row[a:b].sum() for a, b in zip(bounds, bounds[1:])])
    total = float(counts.sum())
    if total <= 0:
        raise InputError("targets hold no positive patches; cannot derive proportional band quotas")
    return tuple(float(c) / total for c in counts)


# --------------------------------------------------------------------------- tensor ops (pure)


def mask_from_indices(keep_idx: Tensor, num_patches: int) -> Tensor:
    """keep_idx ``[B, k]`` int64 → keep_mask ``[B, P]`` bool (scatter; export-friendly)."""
    zeros = torch.zeros(keep_idx.shape[0], num_patches, dtype=torch.float32, device=keep_idx.device)
    ones = torch.ones(keep_idx.shape, dtype=torch.float32, device=keep_idx.device)
    return torch.scatter(zeros, 1, keep_idx, ones) > 0.5


def topk_global(scores: Tensor, k: int) -> Tensor:
    """scores ``[B, P]`` → the ``k`` best patch indices ``[B, k]`` int64, ascending by index."""
    idx = torch.topk(scores, k, dim=1, largest=True, sorted=True).indices
    return torch.sort(idx, dim=1).values


def topk_bands(scores: Tensor, starts: Sequence[int], quotas: Sequence[int]) -> Tensor:
    """Per-band top-k. ``starts``: patch-index boundaries ``(0, s1, ..., P)`` of the row bands
    (contiguous in row-major order); ``quotas[i]`` patches kept in band i. Returns ``[B, sum(q)]``
    int64 ascending (bands are in index order and each band's indices are sorted)."""
    parts = []
    for (a, b), q in zip(zip(starts, starts[1:]), quotas):
        if q == 0:
            continue
        local = torch.topk(scores[:, a:b], q, dim=1, largest=True, sorted=True).indices
        parts.append(torch.sort(local, dim=1).values + a)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def threshold_mask(scores: Tensor, threshold: float) -> Tensor:
    """scores ``[B, P]`` logits → keep_mask ``[B, P]`` bool, ``sigmoid(score) >= threshold``."""
    return torch.sigmoid(scores) >= threshold


# --------------------------------------------------------------------------- module


class Pruner(nn.Module):
    """Holds the static pruning plan for one grid; ``forward(scores) -> (keep_idx, keep_mask)``.

    Attributes: ``mode``, ``grid``, ``num_patches``, ``k`` (Python int; ``None`` in threshold
    mode), ``band_bounds`` (row boundaries), ``quotas`` (per band, band mode), ``topk_sizes``
    (the k of every TopK the exported graph will hold).
    """

    def __init__(self, cfg: PrunerConfig, grid: tuple[int, int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.mode = cfg.mode
        self.grid = (int(grid[0]), int(grid[1]))
        hp, wp = self.grid
        self.num_patches = hp * wp
        self.threshold = cfg.threshold
        self.band_bounds: tuple[int, ...] = ()
        self.quotas: tuple[int, ...] = ()
        if cfg.mode == "threshold":
            self.k: int | None = None
        elif cfg.mode == "none":
            self.k = self.num_patches
        else:
            self.k = compute_k(cfg.keep_ratio, self.num_patches)
        if cfg.mode == "band":
            self.band_bounds = band_boundaries(hp, cfg.bands, cfg.band_rows)
            sizes = [(b - a) * wp for a, b in zip(self.band_bounds, self.band_bounds[1:])]
            self.quotas = allocate_quotas(self.k, self._band_weights(cfg), sizes)
        self._starts = tuple(r * wp for r in self.band_bounds)

    @staticmethod
    def _band_weights(cfg: PrunerConfig) -> tuple[float, ...]:
        if cfg.band_quotas == "equal":
            return (1.0,) * cfg.bands
        if cfg.band_quotas == "proportional":
            if cfg.band_positive_share is None:
                raise ConfigError(
                    "pruner.band_quotas='proportional' needs pruner.band_positive_share "
                    "(measure it on the training set with band_positive_share())"
                )
            return cfg.band_positive_share
        return tuple(cfg.band_quotas)

    @property
    def topk_sizes(self) -> tuple[int, ...]:
        if self.mode == "global":
            return (self.k,)
        if self.mode == "band":
            return tuple(q for q in self.quotas if q > 0)
        return ()

    def forward(self, scores: Tensor) -> tuple[Tensor | None, Tensor]:
        """scores ``[B, P]`` → (keep_idx ``[B, k]`` int64 ascending or ``None``, keep_mask ``[B, P]`` bool)."""
        if scores.dim() != 2 or scores.shape[1] != self.num_patches:
            raise InputError(f"scores must be [B, {self.num_patches}], got {list(scores.shape)}")
        if self.mode == "threshold":
            return None, threshold_mask(scores, self.threshold)
        if self.mode == "none":
            idx = torch.arange(self.num_patches, device=scores.device).unsqueeze(0)
            idx = idx.expand(scores.shape[0], self.num_patches)
            return idx, torch.ones_like(scores, dtype=torch.bool)
        if self.mode == "global":
            idx = topk_global(scores, self.k)
        else:
            idx = topk_bands(scores, self._starts, self.quotas)
        return idx, mask_from_indices(idx, self.num_patches)

    def tie_groups(self) -> tuple[np.ndarray | None, float | None]:
        """How ``verify`` finds ties: (band index per patch ``[P]`` int64 for the band pruner, else
        None; the threshold as a logit for the threshold pruner, else None)."""
        groups = None
        if self.mode == "band":
            hp, wp = self.grid
            rows = np.searchsorted(np.asarray(self.band_bounds[1:]), np.arange(hp), side="right")
            groups = np.repeat(rows, wp).astype(np.int64)
        logit = math.log(self.threshold / (1 - self.threshold)) if self.mode == "threshold" else None
        return groups, logit

    def extra_repr(self) -> str:
        extra = f", quotas={self.quotas}" if self.quotas else ""
        return f"mode={self.mode}, grid={self.grid}, k={self.k}{extra}"
