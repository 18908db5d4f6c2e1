"""The adapter protocol test kit (SPEC §6a): conforming adapters of both kinds and adapters that
break the protocol the ways a user's might. Every factory here is a ``--model`` target
(``tests/protocol_kit.py:NAME``), so the suite and ``tools/failure_sweep.py`` drive them through
the real CLI.

Conforming (two models this project did not write or that it wraps, in two kinds):

- ``reference`` / ``reference_plain``: the reference detector at the tiny test size, as the
  ``nn.Module`` itself and wrapped in :class:`Plain`, an object that is *not* an ``nn.Module``
  (no ``to``, ``eval``, ``parameters``, ...; only the protocol and ``state_dict`` /
  ``load_state_dict``), so any command calling a module method on the adapter fails.
- ``vit`` / ``vit_plain``: ``examples/vit_detector.py`` (a transformers ViT) both ways.

Broken (each a plain adapter around the reference with one fault; the value is the message part
a user must see): :data:`BROKEN`. Weights with missing / extra keys are made by :func:`bad_weights`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cass_deploy.model.detector import PrunedDetector

ROOT = Path(__file__).resolve().parents[1]
KIT = Path(__file__).resolve()
EXAMPLE = ROOT / "examples" / "vit_detector.py"


def spec(name: str) -> str:
    """The ``--model`` value of factory ``name`` of this kit."""
    return f"{KIT}:{name}"


# --------------------------------------------------------------------------- conforming


def _load(path: Path, name: str):
    mod_spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def reference(**kw) -> PrunedDetector:
    """The tiny reference detector (tests/fixtures/adapters/ref_adapter.py's factory), an nn.Module."""
    return _load(ROOT / "tests" / "fixtures" / "adapters" / "ref_adapter.py", "cass_kit_ref_adapter").build(**kw).eval()


def vit(**kw) -> nn.Module:
    """examples/vit_detector.py's model (an nn.Module adapter)."""
    return _load(EXAMPLE, "cass_kit_vit_example").build(**kw)


class Plain:
    """A conforming adapter that is not an ``nn.Module``: the protocol members and
    ``state_dict`` / ``load_state_dict`` over a model it keeps private, nothing else."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    image_size = property(lambda self: self._inner.image_size)
    patch_size = property(lambda self: self._inner.patch_size)
    grid = property(lambda self: self._inner.grid)
    k = property(lambda self: self._inner.k)
    pruner_mode = property(lambda self: self._inner.pruner_mode)
    class_names = property(lambda self: self._inner.class_names)
    keep_ratio = property(lambda self: self._inner.keep_ratio)
    topk_sizes = property(lambda self: self._inner.topk_sizes)

    def predictor_module(self) -> nn.Module:
        return self._inner.predictor_module()

    def full_module(self) -> nn.Module:
        return self._inner.full_module()

    def output_names(self, part: str) -> list[str]:
        return list(self._inner.output_names(part))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._inner.state_dict()

    def load_state_dict(self, state, strict: bool = True):
        return self._inner.load_state_dict(state, strict=strict)

    def tie_groups(self):
        return self._inner.tie_groups()

    def predictor_parameters(self) -> list[nn.Parameter]:
        return self._inner.predictor_parameters()

    def set_outputs(self, **kw) -> Plain:
        self._inner.set_outputs(**kw)
        return self

    def with_pruner(self, mode=None, keep_ratio=None) -> Plain:
        return type(self)(self._inner.with_pruner(mode=mode, keep_ratio=keep_ratio))


def reference_plain(**kw) -> Plain:
    return Plain(reference(**kw))


def vit_plain(**kw) -> Plain:
    return Plain(vit(**kw))


#: conforming factories: name -> "nn.Module" or "plain object"
CONFORMING = {
    "reference": "nn.Module",
    "reference_plain": "plain object",
    "vit": "nn.Module",
    "vit_plain": "plain object",
}


def save_weights(name: str, path: Path) -> Path:
    """The state dict of factory ``name`` (a fresh build, seeded) as ``torch.save`` file ``path``."""
    torch.manual_seed(0)
    state = {k: v.detach().contiguous() for k, v in globals()[name]().state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def bad_weights(good: Path, out_dir: Path) -> dict[str, tuple[Path, str]]:
    """Weights for ``reference`` with faults -> ``{fault: (file, message part)}``."""
    state = torch.load(good, weights_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = {k: v for k, v in state.items() if k != "head.cls.bias"}
    extra = {**state, "extra.weight": torch.zeros(1)}
    shape = {**state, "head.cls.bias": torch.zeros(7)}
    cases = {
        "missing key": (missing, "1 missing keys: head.cls.bias"),
        "extra key": (extra, "1 unexpected keys: extra.weight"),
        "wrong shape": (shape, "shape mismatches: head.cls.bias: weights [7]"),
    }
    out = {}
    for fault, (sd, message) in cases.items():
        path = out_dir / (fault.replace(" ", "_") + ".pt")
        torch.save(sd, path)
        out[fault] = (path, message)
    return out


# --------------------------------------------------------------------------- broken


class _Tamper(nn.Module):
    """A part module whose named outputs ``fn`` rewrites (``fn(dict) -> None``, in place)."""

    def __init__(self, part: nn.Module, names: list[str], fn: Callable[[dict], None]) -> None:
        super().__init__()
        self.part, self.names, self.fn = part, list(names), fn

    def forward(self, images: torch.Tensor):
        outs = dict(zip(self.names, self.part(images)))
        self.fn(outs)
        return tuple(outs[n] for n in self.names)


class _Tampered(Plain):
    """A plain adapter whose ``part`` outputs are rewritten by ``fn``."""

    def __init__(self, inner: Any, part: str = "full", fn: Callable[[dict], None] | None = None) -> None:
        super().__init__(inner)
        self._part, self._fn = part, fn

    def _wrap(self, part: str, module: nn.Module) -> nn.Module:
        if self._fn is None or part != self._part:
            return module
        return _Tamper(module, self.output_names(part), self._fn)

    def predictor_module(self) -> nn.Module:
        return self._wrap("predictor", super().predictor_module())

    def full_module(self) -> nn.Module:
        return self._wrap("full", super().full_module())

    def with_pruner(self, mode=None, keep_ratio=None) -> _Tampered:
        return _Tampered(self._inner.with_pruner(mode=mode, keep_ratio=keep_ratio), self._part, self._fn)


class _Without(Plain):
    """A plain adapter lacking ``class_names`` (a member users forget)."""

    def __getattribute__(self, name: str):
        if name == "class_names":
            raise AttributeError(name)
        return object.__getattribute__(self, name)


class _Renamed(Plain):
    """``output_names('full')`` says ``boxes`` where SPEC 6b says ``det_boxes``."""

    def output_names(self, part: str) -> list[str]:
        return [("boxes" if n == "det_boxes" else n) for n in super().output_names(part)]


class _WrongK(Plain):
    """Reports ``k`` for another keep ratio than its ``keep_ratio``."""

    k = property(lambda self: self._inner.k - 5)


def lacks_class_names() -> Plain:
    return _Without(reference())


def wrong_output_names() -> Plain:
    return _Renamed(reference())


def wrong_k() -> Plain:
    return _WrongK(reference())


def _grid_mask(outs: dict) -> None:
    outs["keep_mask"] = outs["keep_mask"].reshape(outs["keep_mask"].shape[0], 6, 10)


def wrong_shape() -> Plain:
    """keep_mask as the [B, Hp, Wp] grid instead of [B, P]."""
    return _Tampered(reference(), "full", _grid_mask)


def _int64_classes(outs: dict) -> None:
    outs["det_classes"] = outs["det_classes"].long()


def wrong_dtype() -> Plain:
    """det_classes int64 where EfficientNMS's layout has int32."""
    return _Tampered(reference(), "full", _int64_classes)


def _dropout_scores(outs: dict) -> None:
    outs["scores"] = nn.functional.dropout(outs["scores"], p=0.2, training=True)


def nondeterministic() -> Plain:
    """A predictor whose dropout stays on in eval mode."""
    return _Tampered(reference(), "predictor", _dropout_scores)


def not_a_module() -> Plain:
    """predictor_module() returns a plain function."""

    class _Fn(Plain):
        def predictor_module(self):
            return lambda images: images

    return _Fn(reference())


#: broken factory -> the part of its one-line message that names the fault
BROKEN = {
    "lacks_class_names": "lacks class_names",
    "wrong_output_names": "output_names('full') must hold ['num_dets', 'det_boxes', 'det_scores', 'det_classes']",
    "wrong_shape": "full output keep_mask has shape [2, 6, 10] on a batch of 2, expected [B, 60]",
    "wrong_dtype": "full output det_classes is int64, expected int32",
    "wrong_k": "k=25 does not match keep_ratio 0.5 of P=60 patches (ceil(0.5 * 60) = 30)",
    "nondeterministic": "predictor_module() is not deterministic in eval mode",
    "not_a_module": "predictor_module() returned a function, not a torch nn.Module",
}


class _OwnClassNames(Plain):
    """A conforming adapter whose classes are named the user's way (no dataset has them)."""

    class_names = ("vehicle", "lorry", "coach")


def own_class_names() -> Plain:
    return _OwnClassNames(reference())
