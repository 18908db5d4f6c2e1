"""Reference pruning-aware detector (SPEC §6).

images ``[B, 3, H, W]`` (float, RGB in [0, 1]) → patch embedding (stride ``patch_size``) +
position embedding → early blocks → importance predictor → pruner → late blocks on the kept
tokens only (gather → blocks → scatter back; non-kept tokens keep their early features) →
LayerNorm → dense CenterNet head at ``head_stride``.

The predictor is trained only by CASS: the kept set is chosen by ``topk`` / a comparison,
neither of which carries gradient, and nothing else uses ``scores``, so the detection loss
never reaches the predictor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cass_deploy.config import from_dict
from cass_deploy.data.classes import ALL_CLASSES
from cass_deploy.errors import ConfigError, InputError
from cass_deploy.model.blocks import Block, PatchEmbed, sincos_pos_embed
from cass_deploy.model.head import (
    DECODES,
    DEFAULT_DET_SCORE_THRESH,
    DEFAULT_MAX_DETS,
    DEFAULT_NMS_CANDIDATES,
    DEFAULT_NMS_IOU,
    DenseHead,
    decode,
    deployed_detections,
    detection_loss,
)
from cass_deploy.model.interface import INPUT_NAME, output_names_for
from cass_deploy.model.predictor import ImportancePredictor
from cass_deploy.model.pruner import Pruner, PrunerConfig, band_boundaries

# images are expected in [0, 1]; the model standardises them itself so exported graphs take
# the same input as the torch model
PIXEL_MEAN = 0.45
PIXEL_STD = 0.25
STEMS = ("conv", "patch")
#: fields a checkpoint written before the v2 head (issue 22) lacks, with the values it was trained
#: with: such a checkpoint loads as the v1 model it is (``model.checkpoint``)
V1_MODEL_DEFAULTS = {
    "head_context": 0,
    "head_separable": False,
    "head_skip": False,
    "decode": "peak",
    "layer_scale": 0.0,
}


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"model.{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass
class ModelConfig:
    """Architecture of :class:`PrunedDetector`. ``head_stride`` must divide ``patch_size``.

    v2 proportions (SPEC §6 "Proportions"): one early block, then the predictor, then six late
    blocks on the kept tokens — most multiply-accumulates run after the pruner — and a lean head
    (separable context convolutions, a stride-8 map, Fast-NMS decode of the noisy-OR vehicle map).
    ``head_stride=4, head_skip=True`` (the stem's stride-4 features through a 1×1 skip) resolves
    crowded far-field cars better (reference: far recall 0.66 against 0.50) at a fixed cost the
    pruner cannot shrink (ONNX Runtime, keep 0.5: 1.49x against 1.57x on 2 threads); the bias
    ablation ran on it (docs/detector.md, "The head's stride").
    """

    image_size: tuple[int, int] = (256, 448)
    patch_size: int = 16
    stem: Literal["conv", "patch"] = "conv"
    embed_dim: int = 96
    early_depth: int = 1
    late_depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 2.0
    num_classes: int = 3
    head_stride: int = 8
    head_channels: int = 24
    head_context: int = 3
    head_separable: bool = True
    head_skip: bool = False
    decode: Literal["peak", "nms", "vehicle"] = "vehicle"
    nms_candidates: int = DEFAULT_NMS_CANDIDATES
    nms_iou: float = DEFAULT_NMS_IOU
    predictor_hidden: int = 48
    layer_scale: float = 0.1
    detach_predictor_input: bool = False
    pruner: PrunerConfig = field(default_factory=PrunerConfig)

    def __post_init__(self) -> None:
        size = self.image_size
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ConfigError(f"model.image_size must be [H, W], got {size!r}")
        self.image_size = (_positive_int("image_size[0]", size[0]), _positive_int("image_size[1]", size[1]))
        _positive_int("patch_size", self.patch_size)
        if self.image_size[0] % self.patch_size or self.image_size[1] % self.patch_size:
            raise ConfigError(
                f"model.image_size {list(self.image_size)} must be a multiple of "
                f"model.patch_size {self.patch_size} in both dimensions"
            )
        if self.stem not in STEMS:
            raise ConfigError(f"model.stem must be one of {list(STEMS)}, got {self.stem!r}")
        if self.stem == "conv" and self.patch_size % 4:
            raise ConfigError(f"model.stem='conv' needs model.patch_size divisible by 4, got {self.patch_size}")
        _positive_int("embed_dim", self.embed_dim)
        _positive_int("num_heads", self.num_heads)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim {self.embed_dim} must be divisible by model.num_heads {self.num_heads}")
        if self.embed_dim % 4:
            raise ConfigError(
                f"model.embed_dim {self.embed_dim} must be divisible by 4 (2-D sin-cos position embedding)"
            )
        _positive_int("early_depth", self.early_depth, 0)
        _positive_int("late_depth", self.late_depth, 0)
        _positive_int("num_classes", self.num_classes)
        _positive_int("head_stride", self.head_stride)
        _positive_int("head_channels", self.head_channels)
        _positive_int("head_context", self.head_context, 0)
        _positive_int("predictor_hidden", self.predictor_hidden)
        if self.patch_size % self.head_stride:
            raise ConfigError(f"model.head_stride {self.head_stride} must divide model.patch_size {self.patch_size}")
        self._check_head()
        ratio = self.mlp_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
            raise ConfigError(f"model.mlp_ratio must be a number > 0, got {ratio!r}")
        if not isinstance(self.detach_predictor_input, bool):
            raise ConfigError(
                f"model.detach_predictor_input must be true or false, got {self.detach_predictor_input!r}"
            )
        if isinstance(self.pruner, Mapping):
            self.pruner = from_dict(PrunerConfig, self.pruner, prefix="model.pruner.")
        if not isinstance(self.pruner, PrunerConfig):
            raise ConfigError(f"model.pruner must be a PrunerConfig, got {type(self.pruner).__name__}")
        if self.pruner.mode == "band":
            band_boundaries(self.grid[0], self.pruner.bands, self.pruner.band_rows)

    def _check_head(self) -> None:
        for name in ("head_separable", "head_skip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model.{name} must be true or false, got {getattr(self, name)!r}")
        if self.head_skip and (self.stem != "conv" or self.head_stride != self.patch_size // 4):
            raise ConfigError(
                f"model.head_skip needs the conv stem and model.head_stride = patch_size / 4 "
                f"({self.patch_size // 4}), got stem {self.stem!r}, head_stride {self.head_stride}"
            )
        if self.decode not in DECODES:
            raise ConfigError(f"model.decode must be one of {list(DECODES)}, got {self.decode!r}")
        _positive_int("nms_candidates", self.nms_candidates)
        ls = self.layer_scale
        if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0.0 <= ls <= 1.0:
            raise ConfigError(f"model.layer_scale must be a number in [0, 1] (0: off), got {ls!r}")
        iou = self.nms_iou
        if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0.0 < iou <= 1.0:
            raise ConfigError(f"model.nms_iou must be a number in (0, 1], got {iou!r}")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def head_size(self) -> tuple[int, int]:
        return (self.image_size[0] // self.head_stride, self.image_size[1] // self.head_stride)


class PrunedDetector(nn.Module):
    """The reference model; implements :class:`cass_deploy.model.interface.PrunableModel`.

    ``forward(images [B, 3, H, W])`` → dict
      ``scores [B, P]`` float logits, ``keep_idx [B, k]`` int64 ascending (absent in threshold
      mode; ``arange(P)`` in ``none`` mode), ``keep_mask [B, P]`` bool,
      ``heatmap [B, C, Hh, Wh]`` logits, ``box [B, 4, Hh, Wh]`` ltrb px (see ``head.py``).
    """

    def __init__(self, cfg: ModelConfig, *, _share: PrunedDetector | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ConfigError(f"PrunedDetector needs a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.image_size: tuple[int, int] = cfg.image_size
        self.patch_size: int = cfg.patch_size
        self.grid: tuple[int, int] = cfg.grid
        self.num_patches = cfg.num_patches
        self.head_stride = cfg.head_stride
        self.pruner = Pruner(cfg.pruner, self.grid)
        # what full_module() ends in (SPEC §6b): deployment settings, not weights (see set_outputs)
        self.max_dets, self.raw_head, self.det_score_thresh = DEFAULT_MAX_DETS, False, DEFAULT_DET_SCORE_THRESH
        if _share is not None:  # with_pruner(): same parameter objects, new pruner
            for name in ("patch_embed", "early", "predictor", "late", "norm", "head"):
                setattr(self, name, getattr(_share, name))
            self.pos_embed = _share.pos_embed
            return
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, d, stem=cfg.stem)
        self.pos_embed = nn.Parameter(sincos_pos_embed(self.grid, d).unsqueeze(0) * 0.5)
        self.early = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.early_depth))
        self.predictor = ImportancePredictor(d, cfg.predictor_hidden)
        self.late = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.layer_scale) for _ in range(cfg.late_depth)
        )
        self.norm = nn.LayerNorm(d)
        self.head = DenseHead(
            d,
            cfg.num_classes,
            cfg.patch_size // cfg.head_stride,
            cfg.head_stride,
            cfg.head_channels,
            cfg.head_context,
            separable=cfg.head_separable,
            skip_channels=self.patch_embed.skip_channels if cfg.head_skip else 0,
        )
        self.apply(_init_weights)

    # ------------------------------------------------------------------ interface attributes
    @property
    def k(self) -> int | None:
        return self.pruner.k

    @property
    def pruner_mode(self) -> str:
        return self.pruner.mode

    @property
    def keep_ratio(self) -> float:
        return self.cfg.pruner.keep_ratio

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the ``det_classes`` indices: the fixed label order of ``data.classes``."""
        n = self.cfg.num_classes
        return ALL_CLASSES[:n] if n <= len(ALL_CLASSES) else ALL_CLASSES + tuple(f"class{i}" for i in range(4, n))

    def tie_groups(self):
        """See :meth:`Pruner.tie_groups` (band per patch, threshold logit) for ``verify``."""
        return self.pruner.tie_groups()

    def set_outputs(
        self, max_dets: int | None = None, raw_head: bool | None = None, score_thresh: float | None = None
    ) -> PrunedDetector:
        """Choose what :meth:`full_module` ends in: the §6b detections (``max_dets`` rows, rows
        scoring below ``score_thresh`` zero) or, with ``raw_head``, the heatmap / box maps. In place."""
        if max_dets is not None:
            if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
                raise ConfigError(f"max_dets must be an integer >= 1, got {max_dets!r}")
            self.max_dets = max_dets
        if raw_head is not None:
            self.raw_head = bool(raw_head)
        if score_thresh is not None:
            if not isinstance(score_thresh, (int, float)) or not 0.0 <= score_thresh < 1.0:
                raise ConfigError(f"det score threshold must be in [0, 1), got {score_thresh!r}")
            self.det_score_thresh = float(score_thresh)
        return self

    @property
    def topk_sizes(self) -> tuple[int, ...]:
        """k of every TopK over scores in the exported graph (for backend limit checks)."""
        return self.pruner.topk_sizes

    def predictor_parameters(self) -> list[nn.Parameter]:
        return list(self.predictor.parameters())

    # ------------------------------------------------------------------ forward pieces
    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.image_size:
            raise InputError(
                f"images must be [B, 3, {self.image_size[0]}, {self.image_size[1]}], got {list(images.shape)}"
            )

    def embed(self, images: Tensor) -> Tensor:
        """images ``[B, 3, H, W]`` → early tokens ``[B, P, D]`` (embedding + early blocks)."""
        return self._embed(images)[0]

    def _embed(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """images → (early tokens ``[B, P, D]``, the stem's stride-4 features ``[B, S, H/4, W/4]``
        when the head takes them, else None)."""
        self._check_images(images)
        x, skip = self.patch_embed.forward_with_skip((images - PIXEL_MEAN) / PIXEL_STD)
        x = x + self.pos_embed
        for blk in self.early:
            x = blk(x)
        return x, (skip if self.cfg.head_skip else None)

    def score(self, tokens: Tensor) -> Tensor:
        """early tokens ``[B, P, D]`` → scores ``[B, P]``."""
        return self.predictor(tokens.detach() if self.cfg.detach_predictor_input else tokens)

    def run_late(self, tokens: Tensor, keep_idx: Tensor | None, keep_mask: Tensor) -> Tensor:
        """Late blocks on the kept tokens only; non-kept tokens are returned unchanged. ``[B, P, D]``."""
        if self.pruner.mode == "none":
            x = tokens
            for blk in self.late:
                x = blk(x)
            return x
        if self.pruner.mode == "threshold":
            x = tokens
            m = keep_mask.unsqueeze(-1)
            for blk in self.late:
                x = torch.where(m, blk(x, keep_mask), x)
            return x
        idx = keep_idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])  # [B, k, D]
        kept = torch.gather(tokens, 1, idx)
        for blk in self.late:
            kept = blk(kept)
        return torch.scatter(tokens, 1, idx, kept)

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        """Everything up to the head: ``early`` and ``tokens`` ``[B, P, D]``, scores, keep set."""
        early, skip = self._embed(images)
        scores = self.score(early)
        keep_idx, keep_mask = self.pruner(scores)
        tokens = self.run_late(early, keep_idx, keep_mask)
        out = {"early": early, "tokens": tokens, "scores": scores, "keep_mask": keep_mask, "skip": skip}
        if keep_idx is not None:
            out["keep_idx"] = keep_idx
        return out

    def forward_head(self, tokens: Tensor, skip: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tokens ``[B, P, D]`` (+ the stem's stride-4 features with ``head_skip``) → (heatmap
        ``[B, C, Hh, Wh]``, box ``[B, 4, Hh, Wh]``)."""
        hp, wp = self.grid
        x = self.norm(tokens).transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], hp, wp)
        return self.head(x, skip)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        f = self.forward_features(images)
        heatmap, box = self.forward_head(f["tokens"], f["skip"])
        out = {"scores": f["scores"]}
        if "keep_idx" in f:
            out["keep_idx"] = f["keep_idx"]
        out.update(keep_mask=f["keep_mask"], heatmap=heatmap, box=box)
        return out

    def predict(self, images: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """Predictor + pruner only: images → (keep_idx or None, keep_mask, scores)."""
        scores = self.score(self.embed(images))
        keep_idx, keep_mask = self.pruner(scores)
        return keep_idx, keep_mask, scores

    # ------------------------------------------------------------------ training helpers
    def loss(
        self, outputs: Mapping[str, Tensor], boxes: Sequence[Tensor], labels: Sequence[Tensor], **kwargs: Any
    ) -> dict[str, Tensor]:
        """:func:`head.detection_loss` with this model's image size."""
        return detection_loss(outputs, boxes, labels, self.image_size, **kwargs)

    def decode(
        self, outputs: Mapping[str, Tensor], score_thresh: float = 0.05, max_dets: int = 100
    ) -> list[dict[str, Tensor]]:
        """:func:`head.decode` with this model's image size and decode settings."""
        return decode(outputs, self.image_size, score_thresh, max_dets, **self.decode_settings)

    @property
    def decode_settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`head.decode` / :func:`head.deployed_detections` for this model."""
        return {"method": self.cfg.decode, "candidates": self.cfg.nms_candidates, "iou": self.cfg.nms_iou}

    # ------------------------------------------------------------------ interface methods
    def predictor_module(self) -> nn.Module:
        """images → ``(scores, keep_idx, keep_mask)`` (``(scores, keep_mask)`` in threshold mode)."""
        return _PredictorPart(self)

    def full_module(self) -> nn.Module:
        """images → ``(num_dets, det_boxes, det_scores, det_classes, scores, keep_idx, keep_mask)``
        (SPEC §6b; the heat-map peaks decoded in the graph), or with ``raw_head`` ``(scores,
        keep_idx, keep_mask, heatmap, box)``; no keep_idx in threshold mode."""
        return _FullPart(self)

    def output_names(self, part: str) -> list[str]:
        return output_names_for(part, self.pruner.mode, raw_head=self.raw_head)

    input_name = INPUT_NAME

    def with_pruner(
        self, mode: str | None = None, keep_ratio: float | None = None, **pruner_overrides: Any
    ) -> PrunedDetector:
        """A detector sharing these very parameters with another pruner (dense vs pruned,
        keep-ratio sweeps). Other ``PrunerConfig`` fields can be overridden by keyword."""
        changes = dict(pruner_overrides)
        if mode is not None:
            changes["mode"] = mode
        if keep_ratio is not None:
            changes["keep_ratio"] = keep_ratio
        try:
            pcfg = dataclasses.replace(self.cfg.pruner, **changes)
        except TypeError as exc:
            raise ConfigError(f"bad pruner override {sorted(changes)}: {exc}") from None
        cfg = dataclasses.replace(self.cfg, pruner=pcfg)
        other = PrunedDetector(cfg, _share=self)
        other.set_outputs(self.max_dets, self.raw_head, self.det_score_thresh)
        other.train(self.training)
        return other

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, grid={self.grid}, k={self.k}"


class _PredictorPart(nn.Module):
    def __init__(self, det: PrunedDetector) -> None:
        super().__init__()
        self.det = det

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        keep_idx, keep_mask, scores = self.det.predict(images)
        if keep_idx is None:
            return scores, keep_mask
        return scores, keep_idx, keep_mask


class _FullPart(nn.Module):
    def __init__(self, det: PrunedDetector) -> None:
        super().__init__()
        self.det = det

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.det(images)
        if not self.det.raw_head:
            det = self.det
            dets = deployed_detections(
                out["heatmap"], out["box"], det.image_size, det.max_dets, det.det_score_thresh, **det.decode_settings
            )
            out.update(zip(("num_dets", "det_boxes", "det_scores", "det_classes"), dets))
        return tuple(out[name] for name in self.det.output_names("full"))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
