"""Checkpoints: one file with model config, weights, loss config, metrics and versions.

Saved with ``torch.save`` atomically (temp file + rename) and loaded with
``torch.load(weights_only=True)``: only tensors and plain containers, never arbitrary pickles.
A missing, truncated, corrupt or incompatible file is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cass_deploy import __version__
from cass_deploy.backends.limits import check_image_size
from cass_deploy.config import CassConfig, from_dict, to_dict
from cass_deploy.errors import CassDeployError, CheckpointError
from cass_deploy.io_utils import atomic_path, sha256_file
from cass_deploy.model.detector import V1_MODEL_DEFAULTS, ModelConfig, PrunedDetector

FORMAT = "cass-deploy-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` is a ready :class:`PrunedDetector` in eval mode."""

    path: Path
    sha256: str
    model: Any
    model_config: Any
    cass_config: CassConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    versions: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def versions() -> dict[str, str]:
    return {"cass_deploy": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def save_checkpoint(
    path: str | Path,
    model,
    cass_cfg: CassConfig,
    *,
    epoch: int = 0,
    metrics: dict | None = None,
    train_config: dict | None = None,
    optimizer_state: dict | None = None,
    scheduler_state: dict | None = None,
    force: bool = True,
) -> Path:
    """Write ``model`` (a PrunedDetector, DDP-unwrapped) and its configs to ``path`` atomically."""

    model = getattr(model, "module", model)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": to_dict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "cass_config": to_dict(cass_cfg),
        "train_config": train_config or {},
        "metrics": metrics or {},
        "epoch": int(epoch),
        "versions": versions(),
    }
    if optimizer_state is not None:
        payload["optimizer"] = optimizer_state
    if scheduler_state is not None:
        payload["scheduler"] = scheduler_state
    with atomic_path(path, force=force) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load the raw checkpoint dict with ``weights_only=True`` and check its format."""

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, non-torch file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {first}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cass-deploy checkpoint (missing format tag {FORMAT!r})")
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this cass-deploy "
            f"({__version__}) reads up to {FORMAT_VERSION}: upgrade cass-deploy"
        )
    for key in ("model_config", "state_dict", "cass_config"):
        if key not in raw:
            raise CheckpointError(f"{path} lacks the {key!r} section")
    return raw


def load_checkpoint(
    path: str | Path,
    *,
    pruner_mode: str | None = None,
    keep_ratio: float | None = None,
    image_size: tuple[int, int] | None = None,
) -> Checkpoint:
    """Load a checkpoint into a PrunedDetector (eval mode).

    Optionally swap the pruner, or change the input size: the position embedding is resampled
    (bicubic, as timm does for ViTs) to the new patch grid; every other weight is size-free.
    """

    path = Path(path)
    raw = read_checkpoint(path)
    try:
        # checkpoints written before the v2 head (issues 12, 22) lack its fields: they load as v1
        mcfg = from_dict(ModelConfig, {**V1_MODEL_DEFAULTS, **raw["model_config"]}, prefix="model.")
        ccfg = from_dict(CassConfig, raw["cass_config"], prefix="cass.")
    except CassDeployError as exc:
        raise CheckpointError(f"{path}: incompatible configuration: {exc}") from None
    state = dict(raw["state_dict"])
    if image_size is not None:
        image_size = check_image_size(image_size, mcfg.patch_size, "--image-size")
    if image_size is not None and tuple(image_size) != tuple(mcfg.image_size):
        old_grid = mcfg.grid
        mcfg = dataclasses.replace(mcfg, image_size=tuple(int(v) for v in image_size))
        if "pos_embed" in state:
            state["pos_embed"] = resample_pos_embed(state["pos_embed"], old_grid, mcfg.grid)
    model = PrunedDetector(mcfg)
    missing, unexpected = _state_mismatch(model.state_dict(), state)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model config: {str(exc).splitlines()[0]}") from None
    if pruner_mode is not None or keep_ratio is not None:
        model = model.with_pruner(mode=pruner_mode, keep_ratio=keep_ratio)
    model.eval()
    return Checkpoint(
        path=path,
        sha256=sha256_file(path),
        model=model,
        model_config=model.cfg,
        cass_config=ccfg,
        metrics=raw.get("metrics", {}),
        train_config=raw.get("train_config", {}),
        epoch=int(raw.get("epoch", 0)),
        versions=raw.get("versions", {}),
        raw=raw,
    )


def resample_pos_embed(pos, old_grid: tuple[int, int], new_grid: tuple[int, int]):
    """[1, Ho*Wo, D] position embedding -> [1, Hn*Wn, D] by bicubic interpolation on the grid."""

    (ho, wo), (hn, wn) = old_grid, new_grid
    d = pos.shape[-1]
    grid = pos.reshape(1, ho, wo, d).permute(0, 3, 1, 2).float()
    out = F.interpolate(grid, size=(hn, wn), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(1, hn * wn, d).to(pos.dtype)


def _state_mismatch(expected: dict, got: dict) -> tuple[list[str], list[str]]:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    return missing, unexpected
