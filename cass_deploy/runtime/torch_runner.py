"""Runner for a torch model part (the reference side of ``verify``, and a ``profile`` backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cass_deploy.errors import BackendUnavailable, InputError
from cass_deploy.model.interface import INPUT_NAME
from cass_deploy.runtime.base import Runner, TensorSpec


def resolve_device(device: str) -> str:
    """Check a torch device string (``cpu``, ``cuda``, ``cuda:1``) is valid and present here."""

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r} is not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"--device {device}: torch has no CUDA device here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise InputError(f"--device {device!r}: only cpu and cuda are supported")
    return str(dev)


class TorchRunner(Runner):
    """Run ``model.predictor_module()`` or ``model.full_module()`` in torch eager mode.

    model: a PrunableModel (e.g. ``load_checkpoint(path).model``); part: ``predictor`` or
    ``full``; device: ``cpu`` or ``cuda[:N]``. Outputs are numpy arrays keyed like the ONNX export.
    """

    def __init__(self, model: Any, part: str = "full", device: str = "cpu", name: str | None = None) -> None:
        super().__init__()
        if part not in ("predictor", "full"):
            raise InputError(f"part must be 'predictor' or 'full', got {part!r}")
        self.model = model
        self.part = part
        self.device = device
        self.name = name or f"torch[{device}]"
        self._module = None
        self._names = list(model.output_names(part))

    def _activate(self) -> None:
        self.device = resolve_device(self.device)
        # only the part's module moves (SPEC 6a: the adapter itself need not be an nn.Module)
        module = self.model.predictor_module() if self.part == "predictor" else self.model.full_module()
        self._module = module.to(self.device).eval()

    def _deactivate(self) -> None:
        self._module = None

    def _input_specs(self) -> Sequence[TensorSpec]:
        H, W = self.model.image_size
        return [TensorSpec(INPUT_NAME, ("batch", 3, H, W), np.float32)]

    def _output_specs(self) -> Sequence[TensorSpec]:
        P, k = self.model.grid[0] * self.model.grid[1], self.model.k
        shapes = {
            "scores": (("batch", P), np.float32),
            "keep_idx": (("batch", k), np.int64),
            "keep_mask": (("batch", P), np.bool_),
        }
        cfg = getattr(self.model, "cfg", None)
        if cfg is not None and hasattr(cfg, "head_size"):
            hh, wh = cfg.head_size
            shapes["heatmap"] = (("batch", cfg.num_classes, hh, wh), np.float32)
            shapes["box"] = (("batch", 4, hh, wh), np.float32)
        return [TensorSpec(n, *shapes[n]) if n in shapes else TensorSpec(n, (None,), np.float32) for n in self._names]

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(feed[INPUT_NAME])).to(self.device)
        with torch.no_grad():
            outs = self._module(x)
        return {n: o.detach().cpu().numpy() for n, o in zip(self._names, outs)}

    def forward_torch(self, images):
        """Raw torch call (for CUDA-event timing without host copies)."""

        with torch.no_grad():
            return self._module(images)
