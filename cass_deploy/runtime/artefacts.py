"""From a path to a runner: export directories, ``.onnx`` and ``.engine`` files as candidates.

Every command that reads a deployed artefact (verify, validate, profile) resolves it here, so
the manifest is read one way and the runner is picked one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.backends.probe import is_available
from cass_deploy.errors import InputError
from cass_deploy.model.interface import INPUT_NAME
from cass_deploy.runtime.manifest import MANIFEST_NAME, Manifest
from cass_deploy.runtime.ort_runner import OrtRunner
from cass_deploy.runtime.trt_runner import TrtRunner


def run_batches(runner, images: np.ndarray, batch: int | None) -> dict[str, np.ndarray]:
    """Feed ``images`` [N, 3, H, W] through ``runner`` in batches; concatenate the outputs."""

    outs: dict[str, list[np.ndarray]] = {}
    step = batch or len(images)
    if len(images) % step:
        raise InputError(f"{len(images)} images do not split into batches of {step}; use a multiple of {step}")
    for i in range(0, len(images), step):
        res = runner.infer({INPUT_NAME: np.ascontiguousarray(images[i : i + step], dtype=np.float32)})
        for k, v in res.items():
            outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


@dataclass
class Candidate:
    """A deployed artefact to check: ``kind`` is ``onnx`` or ``engine``; ``meta`` its manifest
    (for a bare ``.onnx``, the one embedded in its metadata)."""

    path: Any
    kind: str
    meta: Manifest


def resolve_candidates(
    paths: Sequence[str], providers: Sequence[str] = ("cpu",), notes: list[str] | None = None
) -> list[Candidate]:
    """Export dirs, ``.onnx`` files and ``.engine``/``.plan`` files -> candidates with their metadata."""

    out: list[Candidate] = []
    notes = notes if notes is not None else []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            man = Manifest.read(p / MANIFEST_NAME)
            roles = man.artefact_roles
            if "onnx" in roles:
                out.append(Candidate(man.artefact_path("onnx", p), "onnx", man))
            if "engine" in roles:
                if is_available("tensorrt") and is_available("pycuda"):
                    out.append(Candidate(man.artefact_path("engine", p), "engine", man))
                else:
                    notes.append(f"{man.artefact_path('engine', p)}: not run, TensorRT/pycuda are not installed here")
        elif p.suffix == ".onnx":
            if not p.is_file():
                raise InputError(f"candidate {p} does not exist")
            out.append(Candidate(p, "onnx", Manifest.from_onnx(p)))
        elif p.suffix in (".engine", ".plan", ".trt"):
            if not p.is_file():
                raise InputError(f"candidate {p} does not exist")
            beside = p.parent / MANIFEST_NAME
            if not beside.is_file():
                raise InputError(f"engine {p} has no {MANIFEST_NAME} beside it; verify needs the export's manifest")
            out.append(Candidate(p, "engine", Manifest.read(beside)))
        else:
            raise InputError(f"candidate {p}: expected an export directory, a .onnx file or a .engine file")
    if not out:
        raise InputError("no runnable candidate among " + ", ".join(paths))
    for c in out:
        for key in ("image_size", "precision", "parts", "pruner_mode"):
            if getattr(c.meta, key) is None:
                raise InputError(f"candidate {c.path}: its metadata lacks {key!r}; was it exported by cass-deploy?")
    return out


def make_runner(c: Candidate, providers: Sequence[str] = ("cpu",)):
    if c.kind == "onnx":
        return OrtRunner(c.path, providers=providers)

    return TrtRunner(c.path)
