"""What the exporter, verifier and profiler need from a pruning model (SPEC §6: user models plug
in through a small interface). torch-free at import time.

A conforming model exposes its geometry and two sub-modules with fixed output order:

- ``predictor_module()``: images ``[B, 3, H, W]`` → ``(scores [B, P], keep_idx [B, k] int64,
  keep_mask [B, P] bool)`` — only what precedes and includes the pruner.
- ``full_module()``: images → the deployed outputs of SPEC §6b, ``(num_dets [B, 1] int32,
  det_boxes [B, N, 4] float32 x1 y1 x2 y2 input pixels, det_scores [B, N] float32 descending,
  det_classes [B, N] int32, scores, keep_idx, keep_mask)`` — TensorRT EfficientNMS's layout,
  padded rows zero. The reference detector can instead end in its raw head maps
  (``--raw-head``: ``(scores, keep_idx, keep_mask, heatmap, box)``).

In ``threshold`` mode the count is data-dependent, so there is no ``keep_idx``: ``k`` is
``None`` and the tuples simply omit it. ``output_names(part)`` always matches the tuple.
The graph input is named :data:`INPUT_NAME`.

Optional members the tools use when present (a model without them still exports, verifies,
profiles and validates): ``keep_ratio`` (float), ``topk_sizes`` (every TopK over scores, for
backend limits), ``predictor_parameters()`` (kept fp32 in fp16/int8 exports), ``tie_groups()``
(band index per patch and threshold logit, for tie-aware verification), ``with_pruner(mode=,
keep_ratio=)`` (the dense reference and keep-ratio sweeps), ``set_outputs(max_dets=,
raw_head=, score_thresh=)`` (``--max-dets`` / ``--raw-head`` at export).
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
#: SPEC §6b: the detections a deployed application reads (TensorRT EfficientNMS's outputs)
DET_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
#: what a file needs for ``validate`` (recall and retention): the detections and the keep mask
DEPLOYED_REQUIRED = DET_OUTPUTS + ("keep_mask",)
DEPLOYED_LAYOUT = (
    "num_dets [B,1] int32, det_boxes [B,N,4] float32 (x1 y1 x2 y2 input pixels), det_scores [B,N] "
    "float32, det_classes [B,N] int32 (TensorRT EfficientNMS layout) and keep_mask [B,P] bool with its "
    "patch grid (manifest, ONNX metadata 'grid' or --grid HP WP)"
)
#: the members every PrunableModel has (checked by name when a --model factory returns an object)
REQUIRED_MEMBERS = (
    "image_size",
    "patch_size",
    "grid",
    "k",
    "pruner_mode",
    "class_names",
    "predictor_module",
    "full_module",
    "output_names",
)


def output_names_for(part: str, pruner_mode: str, raw_head: bool = False) -> list[str]:
    """Output names of ``part`` (``"predictor"`` or ``"full"``) for a pruner mode: the full part
    ends in :data:`DET_OUTPUTS` first (SPEC §6b), or in the raw ``heatmap``, ``box`` maps."""
    if part not in PARTS:
        raise ConfigError(f"part must be one of {list(PARTS)}, got {part!r}")
    names = [n for n in PREDICTOR_OUTPUTS if not (n == "keep_idx" and pruner_mode == "threshold")]
    if part == "predictor":
        return names
    return names + list(HEAD_OUTPUTS) if raw_head else list(DET_OUTPUTS) + names


def missing_members(obj: object) -> list[str]:
    """The :data:`REQUIRED_MEMBERS` (and ``state_dict`` / ``load_state_dict``) ``obj`` lacks."""
    wanted = REQUIRED_MEMBERS + ("state_dict", "load_state_dict")
    return [name for name in wanted if not hasattr(obj, name)]


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
    class_names: tuple[str, ...]  # det_classes index -> name

    def predictor_module(self) -> nn.Module: ...

    def full_module(self) -> nn.Module: ...

    def output_names(self, part: str) -> list[str]: ...
