"""``cass-deploy accept``: the on-target acceptance of one export, one report, one verdict.

What the workstation leaves beside the export (see ``export/README.md``):

- ``REF.json``: the ``validate --json`` output of the export on the workstation (its ``result``
  is the export's recall and retention there, its ``reference`` the dense model's);
- the saved reference outputs (``verify --save-polygraphy DIR``, by default ``reference-outputs/``
  beside ``REF.json``): the inputs and the torch outputs of the trained checkpoint.

On the target, :func:`run_accept`

1. **builds** the TensorRT engine when the export has none (:func:`engine_from_export` into
   ``EXPORT-engine/`` beside it, with a timing cache beside the export), or takes the ONNX with
   ONNX Runtime where TensorRT is not installed (``--backend``); a mismatched engine sidecar is
   refused before deserialising (exit 2);
2. **checks** the candidate against the saved reference outputs: tie-aware keep sets and the
   detection outputs (:func:`cass_deploy.evaluation.verify.compare_outputs`, thresholds per precision);
3. **profiles** it (:func:`cass_deploy.profiling.latency.profile_artefact`): latency, and on a
   Jetson the power mode, whether the clocks are locked (unlocked clocks fail the check unless
   allowed) and power / energy per frame;
4. **validates** it on ``--data`` (:func:`cass_deploy.evaluation.validate.run_validate`) against the
   workstation's result in ``REF.json`` with the gates (by default a recall drop of at most 2
   points per field);

and writes ``accept.json`` + ``verify.json`` + ``profile.json`` + ``validate.json`` +
``report.html`` into ``--out``, atomically. The verdict passes when every check passes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.backends.probe import is_available
from cass_deploy.config import FieldConfig
from cass_deploy.errors import InputError
from cass_deploy.evaluation.gates import Gates
from cass_deploy.evaluation.reference_outputs import load_reference_outputs
from cass_deploy.evaluation.validate import run_validate
from cass_deploy.evaluation.verify import VerifyReport, compare_outputs, thresholds_for
from cass_deploy.export.device_engine import engine_from_export
from cass_deploy.io_utils import atomic_dir, check_writable, sha256_file, write_json
from cass_deploy.profiling.latency import environment, profile_artefact, profile_record
from cass_deploy.reporting.report import build_report
from cass_deploy.runtime.artefacts import Candidate, make_runner
from cass_deploy.runtime.manifest import MANIFEST_NAME, Manifest

BACKENDS = ("auto", "tensorrt", "onnxruntime")
REFERENCE_OUTPUTS_DIR = "reference-outputs"


@dataclass(frozen=True)
class AcceptOptions:
    """What ``accept`` is asked. ``reference_outputs`` None: ``reference-outputs/`` beside ``reference``;
    ``images`` None: as many as ``reference`` measured; ``timing_cache`` None: ``EXPORT.timing.cache``;
    ``engine_dir`` None: ``EXPORT-engine`` beside the export; ``out`` None: ``EXPORT-accept``
    beside the export."""

    data: str
    reference: Path
    out: Path | None
    reference_outputs: Path | None = None
    backend: str = "auto"
    images: int | None = None
    gates: Gates = field(default_factory=lambda: Gates(max_recall_drop=0.02))
    fields: FieldConfig = field(default_factory=FieldConfig)
    iou_thr: float = 0.5
    score_thr: float = 0.3
    warmup: int = 20
    iters: int = 200
    max_p50_ms: float | None = None
    allow_unlocked_clocks: bool = False
    timing_cache: Path | None = None
    engine_dir: Path | None = None
    workspace_mib: int | None = None
    providers: tuple[str, ...] = ("cpu",)
    resize: bool = False
    seed: int = 0
    force: bool = False
    class_map: Mapping[str, str | None] | None = None  # --class-map: model class -> dataset class


@dataclass
class Check:
    """One line of the verdict."""

    stage: str
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "passed": self.passed, "message": self.message}


@dataclass
class AcceptResult:
    export: str
    candidate: str
    backend: str
    checks: list[Check]
    notes: list[str]
    out: Path

    def __bool__(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "export": self.export,
            "candidate": self.candidate,
            "backend": self.backend,
            "verdict": "pass" if self else "fail",
            "checks": [c.to_dict() for c in self.checks],
            "notes": list(self.notes),
        }


def choose_backend(requested: str) -> str:
    """``tensorrt`` or ``onnxruntime``; ``auto`` takes TensorRT when it and pycuda are installed."""
    if requested not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "tensorrt" if is_available("tensorrt") and is_available("pycuda") else "onnxruntime"


def _candidate(export: Path, opts: AcceptOptions, backend: str, notes: list[str], log) -> Candidate:
    """The export's engine, else the engine in ``engine_dir`` (built there when absent), or the ONNX.

    The engine is built into a new directory beside the export (the export directory, which may
    hold ``REF.json`` and the reference outputs, is never rewritten); one found there must come
    from this export's ONNX.
    """
    man = Manifest.read(export / MANIFEST_NAME)
    if backend == "onnxruntime":
        if backend != opts.backend:
            notes.append("TensorRT / pycuda are not installed here: the candidate is the ONNX on ONNX Runtime")
        return Candidate(man.artefact_path("onnx", export), "onnx", man)
    if "engine" in man.artefact_roles:
        return Candidate(man.artefact_path("engine", export), "engine", man)
    engine_dir = opts.engine_dir or export.parent / f"{export.name}-engine"
    onnx_sha = sha256_file(man.artefact_path("onnx", export))
    if (engine_dir / MANIFEST_NAME).is_file():
        built = Manifest.read(engine_dir / MANIFEST_NAME)
        if "engine" in built.artefact_roles:
            if sha256_file(built.artefact_path("onnx", engine_dir)) != onnx_sha:
                raise InputError(
                    f"{engine_dir} holds an engine built from another ONNX than {export}; "
                    "remove it or give another --engine-dir"
                )
            notes.append(f"engine found in {engine_dir} (built from this export's ONNX)")
            return Candidate(built.artefact_path("engine", engine_dir), "engine", built)
    cache = opts.timing_cache or export.parent / f"{export.name}.timing.cache"
    log(f"{export} has no engine: building it into {engine_dir} (timing cache {cache})")
    built = engine_from_export(export, engine_dir, workspace_mib=opts.workspace_mib, timing_cache=cache, log=log)
    notes.append(
        f"built {engine_dir}/{built.artefact_file('engine')} with TensorRT {built.trt_version} (cache {cache})"
    )
    return Candidate(built.artefact_path("engine", engine_dir), "engine", built)


def _fidelity(candidate: Candidate, ref_dir: Path, opts: AcceptOptions) -> tuple[VerifyReport, list[str]]:
    """The candidate on the saved reference inputs vs the saved torch outputs (tie-aware)."""
    feeds, outputs, index = load_reference_outputs(ref_dir)
    notes = []
    onnx_sha = (index.get("source") or {}).get("onnx_sha256")
    onnx_file = candidate.meta.artefact_path("onnx", Path(candidate.path).parent)
    if onnx_sha and onnx_file.is_file() and sha256_file(onnx_file) != onnx_sha:
        raise InputError(
            f"the reference outputs in {ref_dir} were saved for another ONNX (sha256 {onnx_sha[:12]}…) than "
            f"{onnx_file}; save them for this export (cass-deploy verify ... --save-polygraphy)"
        )
    precision = candidate.meta.precision
    if index.get("precision") != precision:
        notes.append(f"reference outputs saved for {index.get('precision')}, candidate is {precision}")
    cand: dict[str, list[np.ndarray]] = {}
    with make_runner(candidate, opts.providers) as runner:
        for feed in feeds:
            for k, v in runner.infer(feed).items():
                cand.setdefault(k, []).append(v)
    ref = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    got = {k: np.concatenate(v) for k, v in cand.items()}
    groups = None if index.get("groups") is None else np.asarray(index["groups"], dtype=np.int64)
    name = f"{candidate.kind}:{candidate.path}"
    report = compare_outputs(name, precision, ref, got, thresholds_for(precision), groups, index.get("threshold_logit"))
    images = int(sum(len(next(iter(f.values()))) for f in feeds))
    return VerifyReport(reference=str(ref_dir), images=images, candidates=[report]), notes


def clock_check(env: dict[str, Any], allow_unlocked: bool) -> Check:
    """Locked clocks on a Jetson (``jetson_clocks``); unknown or off a Jetson is said, not failed."""
    jetson = env.get("jetson")
    if not jetson:
        return Check("profile", True, "not a Jetson: clock locking not checked (latency on this machine as it is)")
    locked = jetson.get("clocks_locked")
    mode = jetson.get("nvpmodel")
    if locked is None:
        return Check("profile", True, f"power mode {mode}; clock state unknown (jetson_clocks --show needs root)")
    if locked:
        return Check("profile", True, f"power mode {mode}, clocks locked")
    return Check(
        "profile",
        allow_unlocked,
        f"power mode {mode}, clocks NOT locked: run `sudo jetson_clocks` (export/lock_clocks.sh) for repeatable latency"
        + (" (allowed by --allow-unlocked-clocks)" if allow_unlocked else ""),
    )


def run_accept(export_dir: str | Path, opts: AcceptOptions, log: Callable[[str], None] = print) -> AcceptResult:
    """Build (if absent), check against the saved reference outputs, profile, validate: one verdict."""
    export = Path(export_dir)
    if not (export / MANIFEST_NAME).is_file():
        raise InputError(
            f"{export} is not an export directory (no {MANIFEST_NAME}); give the `cass-deploy export` output"
        )
    if opts.out is None:
        opts = dataclasses.replace(opts, out=export.parent / f"{export.name}-accept")
    check_writable(opts.out, opts.force)
    reference = Path(opts.reference)
    if not reference.is_file():
        raise InputError(f"--reference {reference} does not exist (the workstation's `validate --json` output)")
    ref_dir = Path(opts.reference_outputs) if opts.reference_outputs else reference.parent / REFERENCE_OUTPUTS_DIR
    try:
        ref_images = int(json.loads(reference.read_text())["result"]["n_images"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"--reference {reference} is not a `validate --json` output (no result.n_images)") from None
    images = opts.images or ref_images
    backend = choose_backend(opts.backend)
    notes: list[str] = []
    checks: list[Check] = []

    candidate = _candidate(export, opts, backend, notes, log)
    log(f"checking {candidate.path} against the reference outputs in {ref_dir}")
    verify_report, more = _fidelity(candidate, ref_dir, opts)
    notes += more
    checks.append(_fidelity_check(verify_report))
    measurement, env = _profile(candidate, opts, checks, notes, log)
    log(f"validating on {opts.data} ({images} images) against {reference}")
    run = run_validate(
        str(candidate.path),
        data=opts.data,
        images=images,
        reference=str(reference),
        reference_section="result",
        fields=opts.fields,
        iou_thr=opts.iou_thr,
        score_thr=opts.score_thr,
        gates=opts.gates,
        providers=opts.providers,
        resize=opts.resize,
        seed=opts.seed,
        class_map=opts.class_map,
    )
    notes += run.notes
    checks += [Check("validate", c.passed, c.message) for c in run.checks]
    if not run.checks:
        notes.append("validate: no gate asked; recall and retention reported only")

    result = AcceptResult(str(export), str(candidate.path), backend, checks, notes, Path(opts.out))
    with atomic_dir(opts.out, force=opts.force) as tmp:
        write_json(tmp / "verify.json", {**verify_report.to_dict(), "notes": notes})
        write_json(tmp / "profile.json", profile_record(candidate.path, env, [measurement]))
        write_json(tmp / "validate.json", run.to_dict())
        write_json(tmp / "accept.json", {**result.to_dict(), "environment": env})
        build_report(tmp)
    return result


def _fidelity_check(verify_report: VerifyReport) -> Check:
    """The verdict line of the candidate's fidelity to the saved reference outputs."""
    fid = verify_report.candidates[0]
    return Check(
        "fidelity",
        bool(fid),
        f"tie-aware keep IoU mean {fid.keep_iou_mean:.4f} / min {fid.keep_iou_min:.4f}, score max error "
        f"{fid.score_max_abs:.2e} on {verify_report.images} saved images"
        + ("" if fid else ": " + "; ".join(fid.failures)),
    )


def _profile(
    candidate: Candidate, opts: AcceptOptions, checks: list[Check], notes: list[str], log: Callable[[str], None]
) -> tuple[Any, dict[str, Any]]:
    """Profile the candidate -> (measurement, environment); adds the clock check, and the latency
    check when ``--max-p50-ms`` is given (else the latency as a note)."""
    log(f"profiling {candidate.path} ({opts.warmup} warm-up + {opts.iters} timed runs)")
    measurement = profile_artefact(str(candidate.path), warmup=opts.warmup, iters=opts.iters, providers=opts.providers)
    env = environment("cuda" if candidate.kind == "engine" else "cpu")
    checks.append(clock_check(env, opts.allow_unlocked_clocks))
    lat = measurement.latency
    power = measurement.power or {}
    energy = power.get("energy_per_frame_mj")
    perf = f"p50 {lat.p50:.3f} ms, p99 {lat.p99:.3f} ms, batch {measurement.batch}"
    perf += (
        f", energy {energy:.1f} mJ/frame" if energy is not None else ", energy not measured (not a Jetson or no rails)"
    )
    if opts.max_p50_ms is not None:
        ok = lat.p50 <= opts.max_p50_ms
        checks.append(Check("latency", ok, perf + (" <= " if ok else " > ") + f"{opts.max_p50_ms:g} ms"))
    else:
        notes.append("latency: " + perf)
    return measurement, env


def verdict_lines(result: AcceptResult) -> Sequence[str]:
    """One line per check, then the verdict."""
    lines = [f"{'PASS' if c.passed else 'FAIL'} {c.stage}: {c.message}" for c in result.checks]
    lines += [f"note: {n}" for n in result.notes]
    lines.append(
        f"verdict: {'ACCEPTED' if result else 'REJECTED'} ({result.candidate}, {result.backend}); {result.out}"
    )
    return lines
