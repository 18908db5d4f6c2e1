"""From a path to a runner: export directories, ``.onnx`` and ``.engine`` files as candidates.

Every command that reads a deployed artefact (verify, validate, profile, and what calls their
functions) resolves it here, so the manifest is read one way, the runner is picked one way and
the SHA-256 of every file is checked against its manifest before it is used
(:meth:`Manifest.check_artefacts`; ``--no-verify-hash`` turns a mismatch into a warning):

* an export directory: the files of the roles used (``model.onnx``, ``model.engine`` when it runs);
* a ``.onnx`` or ``.engine`` with a ``manifest.json`` beside it: it must be a file that manifest
  lists (an unrelated ONNX dropped into an export directory is refused), with the listed hash;
* a bare ``.onnx`` without a manifest: the graph hash in its own metadata (``check_onnx_graph``);
* an engine needs its manifest (shapes, versions and hash live there).
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
from cass_deploy.runtime.manifest import MANIFEST_NAME, Manifest, check_onnx_graph, load_onnx
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


#: file suffixes read as TensorRT engines
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


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
            runnable = [r for r in roles if r == "onnx"]
            if "engine" in roles:
                if is_available("tensorrt") and is_available("pycuda"):
                    runnable.append("engine")
                else:
                    notes.append(f"{man.artefact_path('engine', p)}: not run, TensorRT/pycuda are not installed here")
            man.check_artefacts(p, runnable)
            out += [Candidate(man.artefact_path(role, p), role, man) for role in runnable]
        elif p.suffix == ".onnx":
            if not p.is_file():
                raise InputError(f"candidate {p} does not exist")
            beside = _listed_in_manifest(p, "onnx")
            if beside is not None:
                out.append(Candidate(p, "onnx", beside))
                continue
            model = load_onnx(p)
            if not check_onnx_graph(p, model):
                notes.append(f"{p}: no manifest beside it and no graph hash in its metadata: not checked")
            out.append(Candidate(p, "onnx", Manifest.from_onnx(model)))
        elif p.suffix in ENGINE_SUFFIXES:
            if not p.is_file():
                raise InputError(f"candidate {p} does not exist")
            man = _listed_in_manifest(p, "engine")
            if man is None:
                raise InputError(
                    f"engine {p} has no {MANIFEST_NAME} beside it; an engine is read with the manifest of its "
                    "export (shapes, versions and its SHA-256): keep the engine in its export directory"
                )
            out.append(Candidate(p, "engine", man))
        else:
            raise InputError(f"candidate {p}: expected an export directory, a .onnx file or a .engine file")
    if not out:
        raise InputError("no runnable candidate among " + ", ".join(paths))
    for c in out:
        for key in ("image_size", "precision", "parts", "pruner_mode"):
            if getattr(c.meta, key) is None:
                raise InputError(f"candidate {c.path}: its metadata lacks {key!r}; was it exported by cass-deploy?")
    return out


def _listed_in_manifest(p: Path, kind: str) -> Manifest | None:
    """The manifest beside ``p`` (None when there is none), after checking that it lists ``p`` as a
    ``kind`` file and that ``p`` has the listed SHA-256."""
    beside = p.parent / MANIFEST_NAME
    if not beside.is_file():
        return None
    man = Manifest.read(beside)
    role = man.role_of(p.name)
    if role is None or role != kind:
        listed = ", ".join(f"{r}: {man.artefact_file(r)}" for r in man.artefact_roles) or "nothing"
        raise InputError(
            f"{p} is not the {kind} file of the export beside it ({beside} lists {listed}): a file "
            "dropped into an export directory is not run; pass the export directory or a file it lists"
        )
    man.check_artefacts(p.parent, [role], manifest_file=beside)
    return man


def make_runner(c: Candidate, providers: Sequence[str] = ("cpu",)):
    if c.kind == "onnx":
        return OrtRunner(c.path, providers=providers)

    return TrtRunner(c.path)
