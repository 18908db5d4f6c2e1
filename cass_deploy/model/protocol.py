"""The adapter protocol checks (SPEC §6a / §7c): is this object a usable ``PrunableModel``?

:func:`check_protocol` is the one place that answers it, for ``load_model`` (every command that
takes ``--model``) and for ``cass-deploy check``. It never calls a module method on the adapter
itself (SPEC §6a: the adapter need not be an ``nn.Module``), only on the modules
``predictor_module()`` / ``full_module()`` return.

Static checks (no forward pass):

- every member of :data:`~cass_deploy.model.interface.REQUIRED_MEMBERS` plus ``state_dict`` /
  ``load_state_dict`` is present;
- ``image_size`` / ``grid`` are pairs of positive ints, ``patch_size`` a positive int,
  ``pruner_mode`` one of :data:`PRUNER_MODES`, ``class_names`` a non-empty list of strings;
- ``k`` is a positive int (``None`` only in threshold mode) and, when the adapter declares
  ``keep_ratio`` (global / band pruners), ``k == ceil(keep_ratio * P)`` with ``P = Hp * Wp``;
- ``output_names('predictor')`` holds ``scores``, ``keep_idx`` (not in threshold mode) and
  ``keep_mask``; ``output_names('full')`` the detections of SPEC §6b (or the raw ``heatmap`` /
  ``box``) and ``keep_mask``; no name twice.

Probe checks (``probe=True``: a seeded ``[2, 3, H, W]`` input in [0, 1], CPU, eval mode, no grad):

- both parts are ``nn.Module`` s that run on it and return one tensor per output name;
- shapes and dtypes: ``scores [B, P]`` float32, ``keep_idx [B, k]`` int64, ``keep_mask [B, P]``
  bool, ``num_dets [B, 1]`` int32, ``det_boxes [B, N, 4]`` float32, ``det_scores [B, N]`` float32,
  ``det_classes [B, N]`` int32 (one ``N``), raw ``heatmap [B, C, h, w]`` / ``box [B, 4, h, w]``
  float32 with ``C = len(class_names)``;
- values: ``keep_idx`` in ``[0, P)`` and marked in ``keep_mask``, ``k`` patches kept per image,
  ``num_dets`` in ``[0, N]``, valid ``det_classes`` in ``[0, len(class_names))``;
- the predictor is deterministic in eval mode: two runs on the same images give the same scores.

Every problem is one clause naming the member and what was found; :meth:`ProtocolReport.raise_if_bad`
joins them into one line (an :class:`~cass_deploy.errors.InputError`, exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cass_deploy.errors import InputError
from cass_deploy.model.interface import (
    DET_OUTPUTS,
    HEAD_OUTPUTS,
    compute_k,
    final_keep_mask,
    missing_members,
    model_stages,
    stage_output_names,
)

PRUNER_MODES = ("global", "band", "threshold", "none")
#: the probe's batch (2, so a batch axis is told apart from a singleton one)
PROBE_BATCH = 2
#: largest |a - b| / (1 + max |a|) between two eval-mode predictor runs still called deterministic
DETERMINISM_TOL = 1e-6
_DTYPES = {
    "scores": torch.float32,
    "keep_idx": torch.int64,
    "keep_mask": torch.bool,
    "num_dets": torch.int32,
    "det_boxes": torch.float32,
    "det_scores": torch.float32,
    "det_classes": torch.int32,
    "heatmap": torch.float32,
    "box": torch.float32,
}


@dataclass
class ProtocolReport:
    """What :func:`check_protocol` found. ``problems``: one clause each (empty: conforming);
    ``kind``: ``"nn.Module"`` or ``"plain object"``; ``outputs``: part -> name -> ``(shape, dtype)``
    seen by the probe (shapes at batch :data:`PROBE_BATCH`)."""

    where: str
    kind: str
    problems: list[str] = field(default_factory=list)
    outputs: dict[str, dict[str, tuple[list[int], str]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self) -> str:
        return f"{self.where}: the {self.kind} does not follow the PrunableModel protocol: " + "; ".join(self.problems)

    def raise_if_bad(self) -> None:
        """InputError (exit 2) with every problem on one line; nothing when conforming."""
        if self.problems:
            raise InputError(self.message())

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "kind": self.kind,
            "ok": self.ok,
            "problems": list(self.problems),
            "outputs": {p: {n: {"shape": s, "dtype": d} for n, (s, d) in o.items()} for p, o in self.outputs.items()},
        }


def check_protocol(obj: Any, where: str, *, probe: bool = True) -> ProtocolReport:
    """Check ``obj`` against the PrunableModel protocol (the module docstring lists every check).

    ``where`` names the model in messages (e.g. ``"--model file.py:build"``); ``probe=False``
    skips the forward passes (the static checks only: before the weights are loaded). Returns a
    :class:`ProtocolReport`; never raises for a non-conforming object (call ``raise_if_bad``)."""
    kind = "nn.Module" if isinstance(obj, nn.Module) else "plain object"
    report = ProtocolReport(where, f"{type(obj).__name__} ({kind})")
    missing = missing_members(obj)
    if missing:
        report.problems.append(f"it lacks {', '.join(missing)} (see cass_deploy/model/interface.py PrunableModel)")
        return report
    report.problems += _static_problems(obj)
    if probe and not report.problems:
        _probe(obj, report)
    return report


def require_protocol(obj: Any, where: str, *, probe: bool = True) -> None:
    """:func:`check_protocol` and raise its one-line InputError (exit 2) when ``obj`` does not conform."""
    check_protocol(obj, where, probe=probe).raise_if_bad()


# --------------------------------------------------------------------------- static


def _static_problems(obj: Any) -> list[str]:
    bad = []
    try:
        size, grid, patch, mode, k, names = (
            obj.image_size,
            obj.grid,
            obj.patch_size,
            obj.pruner_mode,
            obj.k,
            obj.class_names,
        )
    except Exception as exc:  # a property that raises
        return [f"reading its attributes raised {type(exc).__name__}: {exc}"]
    if not _int_pair(size):
        bad.append(f"image_size must be (H, W) positive ints, got {size!r}")
    if not _int_pair(grid):
        bad.append(f"grid must be (Hp, Wp) positive ints, got {grid!r}")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        bad.append(f"patch_size must be a positive int, got {patch!r}")
    if mode not in PRUNER_MODES:
        bad.append(f"pruner_mode must be one of {list(PRUNER_MODES)}, got {mode!r}")
    if mode != "threshold" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        bad.append(f"k must be a positive int (None only in threshold mode), got {k!r}")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        bad.append(f"class_names must be a non-empty list of strings, got {names!r}")
    if bad:
        return bad
    bad += _k_problems(obj, grid, mode, k)
    return bad + _name_problems(obj, mode)


def _k_problems(obj: Any, grid: Sequence[int], mode: str, k: int) -> list[str]:
    if len(model_stages(obj)) > 1:  # a multi-stage model's k per stage: its keep schedule (SPEC 6c)
        return []
    P = grid[0] * grid[1]
    if mode in ("global", "band") and k > P:
        return [f"k={k} exceeds the {P} patches of its {grid[0]}x{grid[1]} grid"]
    ratio = getattr(obj, "keep_ratio", None)
    if mode not in ("global", "band") or ratio is None:
        return []
    try:
        want = compute_k(ratio, P)
    except Exception:
        return [f"keep_ratio must be in (0, 1], got {ratio!r}"]
    if k != want:
        return [f"k={k} does not match keep_ratio {ratio:g} of P={P} patches (ceil({ratio:g} * {P}) = {want})"]
    return []


def _name_problems(obj: Any, mode: str) -> list[str]:
    bad = []
    try:
        pred, full = list(obj.output_names("predictor")), list(obj.output_names("full"))
    except Exception as exc:
        return [f"output_names() raised {type(exc).__name__}: {exc}"]
    stages = model_stages(obj)  # SPEC 6c: one set of pruner outputs per stage (unsuffixed for one)
    need = stage_output_names(len(stages), [st.pruner_mode for st in stages])
    if [n for n in need if n not in pred]:
        bad.append(f"output_names('predictor') must hold {need}, got {pred}")
    mask = need[-1]
    if not (set(DET_OUTPUTS) <= set(full) or set(HEAD_OUTPUTS) <= set(full)) or final_keep_mask(full) != mask:
        bad.append(f"output_names('full') must hold {list(DET_OUTPUTS)} and {mask}, got {full}")
    for part, names in (("predictor", pred), ("full", full)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            bad.append(f"output_names('{part}') names {', '.join(twice)} more than once")
    return bad


def _int_pair(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
    )


# --------------------------------------------------------------------------- probe


def _probe(obj: Any, report: ProtocolReport) -> None:
    H, W = obj.image_size
    x = torch.rand(PROBE_BATCH, 3, H, W, generator=torch.Generator().manual_seed(0))
    first = None
    for part in ("predictor", "full"):
        outs = _run_part(obj, part, x, report)
        if outs is None:
            continue
        report.outputs[part] = {n: (list(t.shape), _dt(t.dtype)) for n, t in outs.items()}
        report.problems += _output_problems(obj, part, outs)
        if part == "predictor":
            first = outs
    if first is not None and "scores" in first and not report.problems:
        again = _run_part(obj, "predictor", x, report)
        if again is not None:
            a, b = first["scores"].double(), again["scores"].double()
            diff = float((a - b).abs().max()) if a.shape == b.shape else float("inf")
            if not diff <= DETERMINISM_TOL * (1.0 + float(a.abs().max())):
                report.problems.append(
                    f"predictor_module() is not deterministic in eval mode: scores differ by up to {diff:.3g} "
                    "between two runs on the same images (dropout or sampling left on?)"
                )


def _run_part(obj: Any, part: str, x: torch.Tensor, report: ProtocolReport) -> dict[str, torch.Tensor] | None:
    """Run one part on ``x`` -> name -> tensor, or None after appending the problem."""
    getter = f"{part}_module()"
    try:
        module = obj.predictor_module() if part == "predictor" else obj.full_module()
    except Exception as exc:
        report.problems.append(f"{getter} raised {type(exc).__name__}: {exc}")
        return None
    if not isinstance(module, nn.Module):
        report.problems.append(f"{getter} returned a {type(module).__name__}, not a torch nn.Module")
        return None
    names = list(obj.output_names(part))
    try:
        with torch.no_grad():
            outs = module.eval()(x)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        report.problems.append(f"{getter} failed on a {list(x.shape)} input: {type(exc).__name__}: {first}")
        return None
    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    if not isinstance(outs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in outs):
        report.problems.append(f"{getter} must return a tuple of tensors, got {type(outs).__name__}")
        return None
    if len(outs) != len(names):
        report.problems.append(
            f"{getter} returned {len(outs)} tensors but output_names('{part}') names {len(names)}: {names}"
        )
        return None
    return dict(zip(names, outs))


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _expected_shapes(obj: Any, outs: dict[str, torch.Tensor]) -> dict[str, list[int | str]]:
    """name -> expected shape (``"N"`` / ``"h"`` / ``"w"``: any size, but one across outputs)."""
    P, B = obj.grid[0] * obj.grid[1], PROBE_BATCH
    shapes: dict[str, list[int | str]] = {
        "scores": [B, P],
        "keep_idx": [B, obj.k],
        "keep_mask": [B, P],
        "num_dets": [B, 1],
        "det_boxes": [B, "N", 4],
        "det_scores": [B, "N"],
        "det_classes": [B, "N"],
        "heatmap": [B, len(obj.class_names), "h", "w"],
        "box": [B, 4, "h", "w"],
    }
    return {n: shapes[n] for n in outs if n in shapes}


def _output_problems(obj: Any, part: str, outs: dict[str, torch.Tensor]) -> list[str]:
    bad, sizes = [], {}
    for name, want in _expected_shapes(obj, outs).items():
        t = outs[name]
        got = list(t.shape)
        fits = len(got) == len(want) and all(
            g == w if isinstance(w, int) else sizes.setdefault(w, g) == g for g, w in zip(got, want)
        )
        if not fits:
            shown = ", ".join(["B"] + [str(w) for w in want[1:]])
            bad.append(f"{part} output {name} has shape {got} on a batch of {PROBE_BATCH}, expected [{shown}]")
        if t.dtype != _DTYPES[name]:
            bad.append(f"{part} output {name} is {_dt(t.dtype)}, expected {_dt(_DTYPES[name])}")
    return bad or _value_problems(obj, part, outs)


def _value_problems(obj: Any, part: str, outs: dict[str, torch.Tensor]) -> list[str]:
    """Values the shapes cannot show (vectorised over the probe batch)."""
    bad, P = [], obj.grid[0] * obj.grid[1]
    mask = outs.get("keep_mask")
    idx = outs.get("keep_idx")
    if idx is not None and bool(((idx < 0) | (idx >= P)).any()):
        bad.append(f"{part} output keep_idx holds indices outside [0, {P})")
    elif idx is not None and mask is not None and not bool(torch.gather(mask, 1, idx).all()):
        bad.append(f"{part} output keep_mask does not mark every patch of keep_idx")
    if mask is not None and obj.pruner_mode in ("global", "band"):
        kept = mask.sum(dim=1)
        if bool((kept != obj.k).any()):
            bad.append(f"{part} output keep_mask keeps {kept.tolist()} patches per image, but k={obj.k}")
    if "num_dets" in outs and "det_classes" in outs:
        n, cls = outs["num_dets"].reshape(-1).long(), outs["det_classes"].long()
        N, C = cls.shape[1], len(obj.class_names)
        if bool(((n < 0) | (n > N)).any()):
            bad.append(f"{part} output num_dets {n.tolist()} is outside [0, {N}]")
        else:
            valid = torch.arange(N).unsqueeze(0) < n.unsqueeze(1)  # [B, N]
            if bool((valid & ((cls < 0) | (cls >= C))).any()):
                bad.append(f"{part} output det_classes holds classes outside [0, {C}) (class_names has {C})")
    return bad


__all__ = ["ProtocolReport", "check_protocol", "require_protocol", "PRUNER_MODES", "PROBE_BATCH"]
