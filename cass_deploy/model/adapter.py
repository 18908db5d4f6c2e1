"""Bring your own model (SPEC §6a): ``--model SPEC --weights FILE [--model-args FILE|JSON]``.

One entry point, :func:`load_model`, turns a :class:`ModelSource` — this project's checkpoint or a
user's factory + weights — into a :class:`LoadedModel` whose ``model`` implements
:class:`~cass_deploy.model.interface.PrunableModel`. Every command that takes a checkpoint loads
through it, so nothing downstream of loading knows which kind it got.

- ``SPEC`` is ``package.module:factory`` or ``path/to/file.py:factory``; the factory is called
  with the model args as keyword arguments.
- ``--weights``: a state dict saved by ``torch.save`` (loaded with ``weights_only=True``), or a
  ``.safetensors`` file, loaded strictly with the object's own ``load_state_dict``.
- Errors are :class:`~cass_deploy.errors.InputError` (exit 2) naming the import error, the missing
  members, or the missing / unexpected / mis-shaped keys (first few of each).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import InputError
from cass_deploy.io_utils import sha256_file
from cass_deploy.model.checkpoint import load_checkpoint, read_checkpoint
from cass_deploy.model.interface import model_stages
from cass_deploy.model.protocol import PRUNER_MODES, require_protocol

safetensors = lazy_import("safetensors")
safetensors_torch = lazy_import("safetensors.torch")

#: how many keys of each kind a weight-mismatch message lists
SHOW_KEYS = 5


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``checkpoint`` (this project's file) or ``spec`` + ``weights``
    (+ ``args``, the factory's keyword arguments)."""

    checkpoint: Path | None = None
    spec: str | None = None
    weights: Path | None = None
    args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.spec is None):
            raise InputError("give either a checkpoint or --model SPEC --weights FILE (not both, not neither)")
        if self.spec is not None and self.weights is None:
            raise InputError(f"--model {self.spec} needs --weights FILE (a torch state dict or .safetensors)")
        if self.spec is None and (self.weights is not None or self.args):
            raise InputError("--weights and --model-args go with --model SPEC")
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))

    @property
    def path(self) -> Path:
        """The file holding the weights (checkpoint or ``--weights``)."""
        return self.checkpoint if self.checkpoint is not None else self.weights  # type: ignore[return-value]

    def describe(self) -> str:
        return str(self.checkpoint) if self.checkpoint is not None else f"{self.spec} with {self.weights}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form recorded in a manifest (paths absolute) so a reference can be rebuilt."""
        if self.checkpoint is not None:
            return {"kind": "checkpoint", "path": str(self.checkpoint.resolve())}
        spec = self.spec or ""
        file, _, name = spec.rpartition(":")
        if file.endswith(".py"):
            spec = f"{Path(file).resolve()}:{name}"
        return {"kind": "adapter", "spec": spec, "weights": str(self.weights.resolve()), "args": dict(self.args)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSource:
        if not isinstance(data, Mapping) or data.get("kind") not in ("checkpoint", "adapter"):
            raise InputError(f"not a model source record: {data!r}")
        if data["kind"] == "checkpoint":
            return cls(checkpoint=Path(data["path"]))
        return cls(spec=str(data["spec"]), weights=Path(data["weights"]), args=dict(data.get("args") or {}))


@dataclass
class LoadedModel:
    """A ready model (eval mode): ``model`` implements PrunableModel; ``sha256`` hashes the weights
    file; ``trained_image_size`` is the size it was built for before any override."""

    source: ModelSource
    model: Any
    sha256: str
    trained_image_size: tuple[int, int]

    @property
    def path(self) -> Path:
        return self.source.path


# --------------------------------------------------------------------------- parsing


def parse_model_args(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--model-args``: a JSON object inline (``'{"depth": 2}'``) or a JSON / YAML file -> dict."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    raw = str(text).strip()
    if raw.startswith("{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"--model-args {raw!r} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    else:
        p = Path(raw)
        if not p.is_file():
            raise InputError(f"--model-args {raw!r}: neither a JSON object nor an existing JSON / YAML file")
        try:
            value = yaml.safe_load(p.read_text())  # YAML is a superset of JSON
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputError(f"--model-args file {p} cannot be read: {str(exc).splitlines()[0]}") from None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InputError(f"--model-args must be a mapping of argument name -> value, got {value!r}")
    return dict(value)


def source_from(
    checkpoint: str | Path | None = None,
    model: str | None = None,
    weights: str | Path | None = None,
    model_args: str | Mapping[str, Any] | None = None,
) -> ModelSource:
    """A :class:`ModelSource` from the CLI's ``checkpoint`` / ``--model`` / ``--weights`` / ``--model-args``."""
    return ModelSource(
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        spec=model,
        weights=Path(weights) if weights is not None else None,
        args=parse_model_args(model_args) if model is not None else {},
    )


# --------------------------------------------------------------------------- the factory


def import_factory(spec: str):
    """``package.module:factory`` or ``path/to/file.py:factory`` -> the callable."""
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise InputError(f"--model {spec!r} must be 'package.module:factory' or 'path/to/file.py:factory'")
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise InputError(f"--model {spec!r} must be 'package.module:factory' or 'path/to/file.py:factory'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise InputError(f"--model {spec}: file {path} not found")
        mod_name = "cass_deploy_user_model_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        try:
            mod_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
            sys.modules[mod_name] = module
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise InputError(f"--model {spec}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise InputError(f"--model {spec}: cannot import module {target!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, name, None)
    if factory is None:
        raise InputError(f"--model {spec}: {target} has no attribute {name!r}")
    if not callable(factory):
        raise InputError(f"--model {spec}: {target}.{name} is a {type(factory).__name__}, not a callable factory")
    return factory


def check_adapter(obj: Any, spec: str) -> None:
    """Refuse an object that does not implement PrunableModel, naming every missing member and
    every member with a value the tools cannot use (the static half of
    :func:`cass_deploy.model.protocol.check_protocol`; no forward pass)."""
    require_protocol(obj, f"--model {spec}", probe=False)


# --------------------------------------------------------------------------- weights


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``; a
    cass-deploy checkpoint or ``{"state_dict": ...}`` gives its state dict)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--weights {path} not found")
    if path.suffix == ".safetensors":
        try:
            return dict(safetensors_torch.load_file(str(path), device="cpu"))
        except (safetensors.SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"--weights {path} is not a readable .safetensors file: {exc}") from None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--weights {path} is not a readable torch state dict (weights_only=True): {first}") from None
    if isinstance(raw, Mapping) and "format" in raw and "state_dict" in raw:
        raw = read_checkpoint(path)["state_dict"]
    elif isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise InputError(f"--weights {path} must hold a state dict (parameter name -> tensor)")
    return dict(raw)


def load_weights_strict(obj: Any, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``obj.load_state_dict(state)`` strictly, after listing missing / unexpected / mis-shaped keys."""
    expected = obj.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: weights {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - SHOW_KEYS} more)" if len(items) > SHOW_KEYS else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:SHOW_KEYS])}{more}")
    if problems:
        raise InputError(f"{where}: the weights do not fit the model: " + "; ".join(problems))
    try:
        obj.load_state_dict(dict(state), strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: load_state_dict failed: {str(exc).strip().splitlines()[0]}") from None


# --------------------------------------------------------------------------- loading


def load_model(
    source: ModelSource,
    *,
    pruner_mode: str | None = None,
    keep_ratio: float | None = None,
    image_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """Load ``source`` in eval mode, optionally with another pruner / keep ratio / input size.

    A checkpoint supports every override (the position embedding is resampled for another size).
    An adapter model takes a pruner change through its ``with_pruner`` when it has one; another
    input size must come through its factory (``--model-args``), so asking for one is an error.
    """
    if isinstance(keep_ratio, (tuple, list)) and source.checkpoint is not None:
        raise InputError(f"keep schedule {list(keep_ratio)} is per stage (SPEC 6c); {source.checkpoint} prunes once")
    if source.checkpoint is not None:
        ck = load_checkpoint(source.checkpoint, pruner_mode=pruner_mode, keep_ratio=keep_ratio, image_size=image_size)
        trained = tuple(int(v) for v in ck.raw["model_config"]["image_size"])
        return LoadedModel(source, ck.model, ck.sha256, trained)  # type: ignore[arg-type]
    spec = str(source.spec)
    factory = import_factory(spec)
    try:
        obj = factory(**dict(source.args))
    except TypeError as exc:
        raise InputError(f"--model {spec}: calling {factory.__name__}(**model_args) failed: {exc}") from None
    except Exception as exc:
        raise InputError(f"--model {spec}: the factory raised {type(exc).__name__}: {exc}") from None
    check_adapter(obj, spec)
    load_weights_strict(obj, read_weights(source.weights), f"--model {spec} --weights {source.weights}")
    trained = tuple(int(v) for v in obj.image_size)
    if image_size is not None and tuple(image_size) != trained:
        raise InputError(
            f"--model {spec} builds a {trained[0]}x{trained[1]} model; another input size "
            f"({image_size[0]}x{image_size[1]}) must come from the factory: pass it in --model-args"
        )
    obj = _with_pruner(obj, spec, pruner_mode, keep_ratio)
    if isinstance(obj, torch.nn.Module):  # a plain adapter's parts are put in eval mode where they run
        obj.eval()
    require_protocol(obj, f"--model {spec}")  # the probe: shapes, dtypes, determinism (SPEC 6a)
    return LoadedModel(source, obj, sha256_file(source.weights), trained)  # type: ignore[arg-type]


def _with_pruner(obj: Any, spec: str, pruner_mode: str | None, keep_ratio: float | None) -> Any:
    same_mode = pruner_mode is None or pruner_mode == obj.pruner_mode
    same_ratio = keep_ratio is None or getattr(obj, "keep_ratio", None) == keep_ratio
    if same_mode and same_ratio:
        return obj
    if isinstance(keep_ratio, (tuple, list)) and len(keep_ratio) != len(model_stages(obj)):
        raise InputError(
            f"--model {spec}: keep schedule {list(keep_ratio)} has {len(keep_ratio)} ratios but the model has "
            f"{len(model_stages(obj))} pruning stage(s)"
        )
    if not hasattr(obj, "with_pruner"):
        raise InputError(
            f"--model {spec}: its model has no with_pruner(), so pruner {pruner_mode or obj.pruner_mode} "
            f"at keep ratio {keep_ratio} cannot be set here; build it so through --model-args"
        )
    return obj.with_pruner(mode=pruner_mode, keep_ratio=keep_ratio)


def model_source_of(manifest: Any, fallback_checkpoint: str | Path | None = None) -> ModelSource | None:
    """The :class:`ModelSource` an export recorded (``extra.model_source``), else its source
    checkpoint when that file exists; None when neither is there."""
    record = (getattr(manifest, "extra", None) or {}).get("model_source")
    if record:
        src = ModelSource.from_dict(record)
        return src if src.path.is_file() else None
    if fallback_checkpoint and Path(fallback_checkpoint).is_file():
        return ModelSource(checkpoint=Path(fallback_checkpoint))
    return None


__all__ = [
    "ModelSource",
    "LoadedModel",
    "load_model",
    "source_from",
    "parse_model_args",
    "import_factory",
    "check_adapter",
    "PRUNER_MODES",
    "read_weights",
    "load_weights_strict",
    "model_source_of",
]
