"""What the exporter, verifier and profiler need from a pruning model (SPEC §6: user models plug
in through a small interface). torch-free at import time.

A conforming model exposes its geometry and two sub-modules with fixed output order:

- ``predictor_module()``: images ``[B, 3, H, W]`` → ``(scores [B, P], keep_idx [B, k] int64,
  keep_mask [B, P] bool)`` — only what precedes and includes the pruner.
- ``full_module()``: images → ``(scores, keep_idx, keep_mask, heatmap, box)``.

In ``threshold`` mode the count is data-dependent, so there is no ``keep_idx``: ``k`` is
``None`` and the tuples simply omit it. ``output_names(part)`` always matches the tuple.
The graph input is named :data:`INPUT_NAME`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cass_deploy.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

INPUT_NAME = "images"
PARTS = ("predictor", "full")
PREDICTOR_OUTPUTS = ("scores", "keep_idx", "keep_mask")
HEAD_OUTPUTS = ("heatmap", "box")


def output_names_for(part: str, pruner_mode: str) -> list[str]:
    """Output names of ``part`` (``"predictor"`` or ``"full"``) for a pruner mode."""
    if part not in PARTS:
        raise ConfigError(f"part must be one of {list(PARTS)}, got {part!r}")
    names = [n for n in PREDICTOR_OUTPUTS if not (n == "keep_idx" and pruner_mode == "threshold")]
    return names + list(HEAD_OUTPUTS) if part == "full" else names


def compute_k(keep_ratio: float, num_patches: int) -> int:
    """``ceil(keep_ratio * P)`` as a Python int (rounded to 9 decimals first so ``0.3 * 10``,
    which is ``3.0000000000000004`` in floating point, gives 3, not 4)."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0.0 < keep_ratio <= 1.0:
        raise ConfigError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    return max(1, min(num_patches, math.ceil(round(keep_ratio * num_patches, 9))))


@runtime_checkable
class PrunableModel(Protocol):
    """Structural type checked with ``isinstance(model, PrunableModel)``."""

    image_size: tuple[int, int]  # (H, W) of the network input
    patch_size: int
    grid: tuple[int, int]  # (Hp, Wp); P = Hp * Wp, patch p = i * Wp + j
    k: int | None  # kept patches (None in threshold mode)
    pruner_mode: str  # "global" | "band" | "threshold" | "none"

    def predictor_module(self) -> nn.Module: ...

    def full_module(self) -> nn.Module: ...

    def output_names(self, part: str) -> list[str]: ...
