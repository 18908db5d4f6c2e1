"""Reference inputs and outputs in Polygraphy's JSON format: NVIDIA's tool as an independent judge.

``cass-deploy verify --save-polygraphy DIR`` writes, from the torch reference it runs anyway:

- ``inputs.json``: the input batches, a list of feed dicts (``polygraphy.json.save_json``), read by
  ``polygraphy run ... --load-inputs``;
- ``outputs.json``: a ``polygraphy.pcomparator.RunResults`` (runner ``torch-reference``, one
  iteration per batch) holding every output that carries values: ``scores`` (the predictor,
  before any selection), the raw ``heatmap`` / ``box`` maps or the SPEC 6b detections
  (``num_dets``, ``det_boxes``, ``det_scores``, ``det_classes``);
- ``keep.json``: the same RunResults with the **index outputs** (``keep_idx``, ``keep_mask``).
  Equal scores are ordered differently by torch, ONNX Runtime and TensorRT, so these are not given
  to Polygraphy; ``accept`` compares them tie-aware;
- ``cass_deploy_judge.py``: the comparison Polygraphy runs (``--compare-func-script``, a copy of
  :mod:`cass_deploy.evaluation.polygraphy_judge`): element-wise tolerances for ``scores`` (largest
  error), ``det_scores`` and the maps (median), and the detections **matched** (class, IoU, corner
  error in pixels), so a wrong box fails while rows swapped by a tie do not;
- ``index.json``: SHA-256 of the four files, precision, tolerances (``judge``: what the script
  reads), band groups, and the exact Polygraphy commands (for the engine on the device, and for
  the ONNX with ONNX Runtime).

Polygraphy compares only the outputs present in the loaded file, so the engine's index outputs
are left out of its comparison. Imports no torch; Polygraphy is imported when used.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import BackendUnavailable, InputError
from cass_deploy.evaluation import polygraphy_judge
from cass_deploy.io_utils import atomic_dir, sha256_file

pjson = lazy_import("polygraphy.json")
pcomparator = lazy_import("polygraphy.comparator")
plogger = lazy_import("polygraphy.logger")

INPUTS_FILE, OUTPUTS_FILE, KEEP_FILE, INDEX_FILE = "inputs.json", "outputs.json", "keep.json", "index.json"
JUDGE_FILE = "cass_deploy_judge.py"
RUNNER_NAME = "torch-reference"
#: outputs whose values move with the order of equal scores: compared tie-aware, never element-wise
INDEX_OUTPUTS = ("keep_idx", "keep_mask")
#: per precision: (atol, rtol, error statistic) for ``scores`` and for the detection outputs
TOLERANCES: dict[str, dict[str, tuple[float, float, str]]] = {
    "fp32": {"scores": (1e-4, 1e-3, "max"), "detections": (1e-3, 1e-3, "median")},
    "fp16": {"scores": (5e-3, 1e-2, "max"), "detections": (2e-2, 2e-2, "median")},
    "int8": {"scores": (5e-2, 5e-2, "max"), "detections": (1e-1, 1e-1, "median")},
}
#: per precision: matched detections (IoU to match, best rows' share, share matched, corner error px)
BOX_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"iou": 0.5, "top_share": 0.5, "min_match": 0.99, "atol_px": 0.25},
    "fp16": {"iou": 0.5, "top_share": 0.5, "min_match": 0.95, "atol_px": 1.0},
    "int8": {"iou": 0.5, "top_share": 0.5, "min_match": 0.9, "atol_px": 4.0},
}


def _require_polygraphy() -> Any:
    """Polygraphy's logger, quiet below warnings (its "Saving / Loading ..." lines), or BackendUnavailable."""
    if importlib.util.find_spec("polygraphy") is None:
        raise BackendUnavailable(
            "Polygraphy is not installed; pip install polygraphy (it comes with cass-deploy[dev], [trt] and [jetson])"
        )
    return plogger.G_LOGGER.verbosity(plogger.G_LOGGER.WARNING)


def split_outputs(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(compared, index)`` output names: what Polygraphy's judge compares (element-wise, or the
    detections by matching) and what is compared tie-aware."""
    index = [n for n in names if n in INDEX_OUTPUTS]
    return [n for n in names if n not in INDEX_OUTPUTS], index


def polygraphy_args(precision: str, compared: Sequence[str]) -> list[str]:
    """``--atol/--rtol/--check-error-stat`` per output for ``precision`` (see :data:`TOLERANCES`)."""
    if precision not in TOLERANCES:
        raise InputError(f"unknown precision {precision!r}; expected one of {sorted(TOLERANCES)}")
    atol, rtol, stat = [], [], []
    for name in compared:
        a, r, s = TOLERANCES[precision]["scores" if name == "scores" else "detections"]
        atol.append(f"{name}:{a:g}")
        rtol.append(f"{name}:{r:g}")
        stat.append(f"{name}:{s}")
    return ["--atol", *atol, "--rtol", *rtol, "--check-error-stat", *stat]


def judge_settings(precision: str, compared: Sequence[str]) -> dict[str, Any]:
    """The ``judge`` entry of ``index.json`` that ``cass_deploy_judge.py`` reads: element-wise
    ``[atol, rtol, stat]`` per output, and the matched-detection settings (:data:`BOX_TOLERANCES`)."""
    if precision not in TOLERANCES:
        raise InputError(f"unknown precision {precision!r}; expected one of {sorted(TOLERANCES)}")
    elementwise = [n for n in compared if n not in ("num_dets", "det_boxes", "det_classes")]
    return {
        "elementwise": {
            n: list(TOLERANCES[precision]["scores" if n == "scores" else "detections"]) for n in elementwise
        },
        "boxes": dict(BOX_TOLERANCES[precision]),
    }


def polygraphy_command(model: str, directory: str, precision: str, compared: Sequence[str]) -> list[str]:
    """``polygraphy run MODEL --trt|--onnxrt --load-inputs DIR/inputs.json --load-outputs DIR/outputs.json
    --compare-func-script DIR/cass_deploy_judge.py`` (the judge reads its tolerances from ``DIR/index.json``)."""
    backend = ["--onnxrt"] if str(model).endswith(".onnx") else ["--model-type", "engine", "--trt"]
    return [
        "polygraphy",
        "run",
        str(model),
        *backend,
        "--load-inputs",
        f"{directory}/{INPUTS_FILE}",
        "--load-outputs",
        f"{directory}/{OUTPUTS_FILE}",
        "--compare-func-script",
        f"{directory}/{JUDGE_FILE}",
    ]


def save_reference_outputs(
    directory: str | Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    outputs: Sequence[Mapping[str, np.ndarray]],
    *,
    precision: str,
    source: Mapping[str, Any],
    groups: np.ndarray | None = None,
    threshold_logit: float | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the reference files (see the module docstring) atomically; returns ``index.json``.

    ``feeds`` / ``outputs``: one dict per batch (the export's batch), numpy arrays. ``source``
    names what produced them (checkpoint and its SHA-256, the export's ONNX hash).
    """
    quiet = _require_polygraphy()
    if not feeds or len(feeds) != len(outputs):
        raise InputError(f"need one output dict per input batch, got {len(feeds)} inputs and {len(outputs)} outputs")
    compared, index_names = split_outputs(list(outputs[0]))
    judge = judge_settings(precision, compared)
    directory = Path(directory)
    with quiet, atomic_dir(directory, force=force) as tmp:
        pjson.save_json([{k: np.ascontiguousarray(v) for k, v in f.items()} for f in feeds], str(tmp / INPUTS_FILE))
        for file, names in ((OUTPUTS_FILE, compared), (KEEP_FILE, index_names)):
            results = pcomparator.RunResults()
            results.add([{n: np.asarray(o[n]) for n in names} for o in outputs], runner_name=RUNNER_NAME)
            results.save(str(tmp / file))
        shutil.copyfile(Path(polygraphy_judge.__file__), tmp / JUDGE_FILE)
        index = {
            "format": "polygraphy",
            "precision": precision,
            "batches": len(feeds),
            "inputs": sorted(feeds[0]),
            "compared_outputs": compared,
            "index_outputs": index_names,
            "judge": judge,
            "tolerances": {n: polygraphy_args(precision, [n]) for n in judge["elementwise"]},
            "groups": None if groups is None else np.asarray(groups).astype(int).tolist(),
            "threshold_logit": threshold_logit,
            "source": dict(source),
            "files": {f: sha256_file(tmp / f) for f in (INPUTS_FILE, OUTPUTS_FILE, KEEP_FILE, JUDGE_FILE)},
            "commands": {
                "engine": shlex.join(polygraphy_command("model.engine", str(directory), precision, compared)),
                "onnx": shlex.join(polygraphy_command("model.onnx", str(directory), precision, compared)),
            },
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return index


def load_reference_outputs(
    directory: str | Path,
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], dict[str, Any]]:
    """``(feeds, outputs, index)`` saved by :func:`save_reference_outputs`; every file is checked
    against its SHA-256 in ``index.json`` (a mismatch or a missing file is an InputError)."""
    directory = Path(directory)
    index_file = directory / INDEX_FILE
    if not index_file.is_file():
        raise InputError(
            f"{directory} holds no saved reference outputs ({INDEX_FILE} missing); write them on the workstation "
            "with `cass-deploy verify --reference CKPT --candidate EXPORT --save-polygraphy DIR`"
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {index_file}: {exc}") from None
    for name, digest in (index.get("files") or {}).items():
        file = directory / name
        if not file.is_file():
            raise InputError(f"{file} is missing (listed in {index_file})")
        actual = sha256_file(file)
        if actual != digest:
            raise InputError(f"{file} does not match its SHA-256 in {index_file} ({actual[:12]}… != {digest[:12]}…)")
    with _require_polygraphy():
        feeds = [{k: np.asarray(v) for k, v in f.items()} for f in pjson.load_json(str(directory / INPUTS_FILE))]
        outputs: list[dict[str, np.ndarray]] = [{} for _ in feeds]
        for file in (OUTPUTS_FILE, KEEP_FILE):
            results = pcomparator.RunResults.load(str(directory / file))
            for i, iteration in enumerate(results[RUNNER_NAME]):
                outputs[i].update({k: np.asarray(v) for k, v in iteration.items()})
    return feeds, outputs, index
