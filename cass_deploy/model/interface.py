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

Multi-stage pruning (SPEC §6c): a model that prunes at several depths declares ``stages`` (a
list of :class:`Stage`) in place of a single ``k``; its tuples then carry one ``scores_s``,
``keep_idx_s``, ``keep_mask_s`` per stage ``s = 1..S`` (:func:`stage_output_names`), every
``keep_mask_s`` ``[B, P]`` over the original patch grid and nested. Its top-level ``k`` /
``pruner_mode`` / ``keep_ratio`` are those of the last stage (the tokens the last blocks see).
``with_pruner(keep_ratio=(r_1, ..., r_S))`` takes a per-stage keep schedule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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


def output_names_for(
    part: str, pruner_mode: str, raw_head: bool = False, stages: Sequence[Stage] | None = None
) -> list[str]:
    """Output names of ``part`` (``"predictor"`` or ``"full"``) for a pruner mode (or ``stages``,
    SPEC §6c): the full part starts with :data:`DET_OUTPUTS` (SPEC §6b), or ends in the raw
    ``heatmap``, ``box`` maps."""
    if part not in PARTS:
        raise ConfigError(f"part must be one of {list(PARTS)}, got {part!r}")
    names = (
        stage_output_names(len(stages), [st.pruner_mode for st in stages])
        if stages
        else stage_output_names(1, pruner_mode)
    )
    if part == "predictor":
        return names
    return names + list(HEAD_OUTPUTS) if raw_head else list(DET_OUTPUTS) + names


@dataclass(frozen=True)
class Stage:
    """One pruning stage (SPEC §6c): ``k`` tokens kept of the ``grid`` it scores, by
    ``pruner_mode``; ``keep_ratio`` is the share of the *previous* stage's tokens kept (the
    original grid's for stage 1), ``k = ceil(keep_ratio * tokens in)``."""

    k: int | None
    pruner_mode: str
    grid: tuple[int, int]
    keep_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "pruner_mode": self.pruner_mode, "grid": list(self.grid), "keep_ratio": self.keep_ratio}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stage:
        return cls(d.get("k"), str(d["pruner_mode"]), tuple(int(v) for v in d["grid"]), d.get("keep_ratio"))


def model_stages(model: Any) -> list[Stage]:
    """A model's stages: its ``stages`` when it declares them, else its one ``k`` as a single stage."""
    stages = getattr(model, "stages", None)
    if stages:
        return list(stages)
    return [Stage(model.k, model.pruner_mode, tuple(model.grid), getattr(model, "keep_ratio", None))]


def stages_record(model: Any) -> dict[str, Any]:
    """``{"stages": [Stage.to_dict(), ...]}`` for a manifest's extra of a multi-stage model, ``{}``
    for a single-stage one (its manifest stays as it was)."""
    stages = getattr(model, "stages", None)
    return {"stages": [st.to_dict() for st in stages]} if stages and len(stages) > 1 else {}


def stage_output_names(num_stages: int, pruner_modes: Sequence[str] | str = "global") -> list[str]:
    """The pruner outputs of an ``num_stages``-stage model: today's unsuffixed ``scores``,
    ``keep_idx``, ``keep_mask`` for one stage, else ``scores_1, keep_idx_1, keep_mask_1, ...``
    (no ``keep_idx`` for a threshold stage)."""
    modes = [pruner_modes] * num_stages if isinstance(pruner_modes, str) else list(pruner_modes)
    out = []
    for s, mode in enumerate(modes, start=1):
        suffix = "" if num_stages == 1 else f"_{s}"
        out += [n + suffix for n in PREDICTOR_OUTPUTS if not (n == "keep_idx" and mode == "threshold")]
    return out


_STAGE_NAME = re.compile(r"^(scores|keep_idx|keep_mask)_([1-9][0-9]*)$")


def stage_names_in(names: Sequence[str]) -> list[dict[str, str]]:
    """Per stage, the pruner output names found among ``names``: ``[{"scores": "scores_1",
    "keep_mask": "keep_mask_1", ...}, ...]`` for a multi-stage graph, ``[{"scores": "scores",
    ...}]`` for a single-stage one, ``[]`` when there is neither."""
    found: dict[int, dict[str, str]] = {}
    for n in names:
        m = _STAGE_NAME.match(n)
        if m:
            found.setdefault(int(m.group(2)), {})[m.group(1)] = n
    if found:
        return [found[s] for s in sorted(found)]
    single = {n: n for n in PREDICTOR_OUTPUTS if n in names}
    return [single] if single else []


def final_keep_mask(names: Sequence[str]) -> str | None:
    """The keep mask of the last stage among output ``names`` (``keep_mask`` or ``keep_mask_S``)."""
    stages = stage_names_in(names)
    return stages[-1].get("keep_mask") if stages else None


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
