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
from cass_deploy.model.interface import (
    DEPLOYED_LAYOUT,
    DEPLOYED_REQUIRED,
    HEAD_OUTPUTS,
    INPUT_NAME,
    final_keep_mask,
)
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


#: the keys a manifest needs before a candidate can be run and compared
CANDIDATE_KEYS = ("image_size", "precision", "parts", "pruner_mode")


def check_layout(output_names: Sequence[str], where: str) -> None:
    """Refuse a full model whose outputs are neither SPEC §6b's (``num_dets``, ``det_boxes``,
    ``det_scores``, ``det_classes`` + ``keep_mask``) nor this project's raw head maps (``--raw-head``),
    naming what is missing and the layout expected."""
    names = set(output_names)
    if final_keep_mask(output_names):  # keep_mask, or keep_mask_S of a multi-stage model (SPEC 6c)
        names.add("keep_mask")
    if set(DEPLOYED_REQUIRED) <= names or (set(HEAD_OUTPUTS) | {"keep_mask"}) <= names:
        return
    missing = [n for n in DEPLOYED_REQUIRED if n not in names]
    raise InputError(
        f"{where} lacks the output(s) {', '.join(missing)} (it has {', '.join(sorted(names)) or 'none'}); "
        f"expected the deployed layout of SPEC 6b: {DEPLOYED_LAYOUT}"
    )


def foreign_manifest(path: str | Path, grid: Sequence[int] | None = None) -> Manifest:
    """The manifest of an ONNX file exported by another toolchain, from its graph: input size and
    batch from the ``images`` input ``[B, 3, H, W]``, the outputs, and the patch grid from its
    metadata (``grid``) or ``grid`` (``--grid HP WP``). Checked against SPEC §6b's layout."""
    path = Path(path)
    meta = Manifest.from_onnx(path).to_dict()
    proto = load_onnx(path)
    init = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in init]

    def dims(v) -> list:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]

    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(dims(inputs[0])) != 4:
        found = ", ".join(f"{v.name}{dims(v)}" for v in inputs) or "none"
        raise InputError(f"{path}: expected one input {INPUT_NAME!r} [B, 3, H, W] float32, found {found}")
    b, c, h, w = dims(inputs[0])
    if c != 3 or not isinstance(h, int) or not isinstance(w, int) or h < 1 or w < 1:
        raise InputError(f"{path}: input {INPUT_NAME!r} must be [B, 3, H, W] with fixed H and W, got {dims(inputs[0])}")
    outputs = [o.name for o in proto.graph.output]
    check_layout(outputs, str(path))
    found_grid = grid if grid is not None else meta.get("grid")
    if found_grid is None:
        raise InputError(
            f"{path} has no cass-deploy metadata and no 'grid' in its ONNX metadata: pass --grid HP WP "
            "(the patch grid of keep_mask)"
        )
    hp, wp = (int(v) for v in found_grid)
    keep = next(o for o in proto.graph.output if o.name == final_keep_mask(outputs))
    p = dims(keep)[-1] if dims(keep) else None
    if isinstance(p, int) and p != hp * wp:
        raise InputError(f"{path}: keep_mask has {p} patches but the grid {hp}x{wp} has {hp * wp}")
    meta.update(
        image_size=[h, w],
        grid=[hp, wp],
        parts=meta.get("parts") or "full",
        precision=meta.get("precision") or "fp32",
        pruner_mode=meta.get("pruner_mode") or ("global" if "keep_idx" in outputs else "threshold"),
        batch=meta.get("batch") or ({"dynamic": False, "size": b} if isinstance(b, int) else {"dynamic": False}),
        outputs=meta.get("outputs") or [{"name": n} for n in outputs],
    )
    meta.setdefault("extra", {})
    meta["extra"].setdefault("foreign", True)
    return Manifest(meta)


def resolve_candidates(
    paths: Sequence[str],
    providers: Sequence[str] = ("cpu",),
    notes: list[str] | None = None,
    grid: Sequence[int] | None = None,
) -> list[Candidate]:
    """Export dirs, ``.onnx`` files and ``.engine``/``.plan`` files -> candidates with their metadata.

    A ``.onnx`` without cass-deploy metadata (another toolchain's) is described from its graph
    (:func:`foreign_manifest`; ``grid``: the patch grid when its metadata has none)."""

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
            meta = Manifest.from_onnx(model)
            if grid is not None or any(getattr(meta, key) is None for key in CANDIDATE_KEYS):
                meta = foreign_manifest(p, grid)
            out.append(Candidate(p, "onnx", meta))
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
        for key in CANDIDATE_KEYS:
            if getattr(c.meta, key) is None:
                raise InputError(f"candidate {c.path}: its metadata lacks {key!r}; was it exported by cass-deploy?")
        if c.kind == "onnx":
            check_declared_outputs(c)
    return out


def check_declared_outputs(c: Candidate) -> None:
    """Refuse an ONNX whose graph outputs are not the ones its manifest declares (a file replaced
    after export, e.g. used with ``--no-verify-hash``), naming the missing and the undeclared ones."""
    declared = [o.get("name") for o in c.meta.outputs]
    if not declared:
        return
    graph = [o.name for o in load_onnx(c.path).graph.output]
    missing = [n for n in declared if n not in graph]
    extra = [n for n in graph if n not in declared]
    if missing or extra:
        what = [f"declared but missing: {', '.join(missing)}"] if missing else []
        what += [f"not declared: {', '.join(extra)}"] if extra else []
        raise InputError(
            f"{c.path}: its outputs differ from what its manifest declares ({'; '.join(what)}); "
            "re-export it or use the export's own file"
        )


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
