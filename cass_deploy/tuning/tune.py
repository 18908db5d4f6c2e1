"""``cass-deploy tune`` (SPEC §7b): for one model, every keep ratio × precision on one backend —
export (reused when present), verify, validate with intervals against the dense reference,
profile interleaved — then a table, a Pareto plot (p50 latency vs near-field recall, pass / fail
marked) and the recommended configuration, the fastest one passing every gate, written as a
deployment profile YAML that ``cass-deploy export --profile`` accepts.

Layout of ``OUT`` (every file written atomically; a run that stops is resumed by running the same
command again, which reuses every finished step and refuses other settings):

    tune-state.json            the settings of this tune (the resume check)
    exports/keep0.5-fp32/      one export directory per configuration (model.onnx, manifest.json)
    configs/keep0.5-fp32.json  its verify and validate results and its verdict
    reference.json             the dense reference's validation result (same weights, no pruning)
    profile/profile.json       the interleaved timing of dense + every configuration (report reads it)
    tune.json, pareto.png      the table and the plot (``cass-deploy report OUT`` shows both)
    recommended.yaml           the deployment profile of the recommended configuration

Statistics (SPEC §7a): recall intervals are Wilson, drops against the dense reference paired
bootstrap over the same images, latency medians bootstrap over interleaved rounds; a ranking of
two configurations whose latency intervals overlap is reported as not supported.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cass_deploy.backends.limits import PRECISIONS
from cass_deploy.config import FieldConfig
from cass_deploy.errors import GateFailed, InputError, SweepFailed
from cass_deploy.evaluation import validate as vr
from cass_deploy.evaluation.gates import INCONCLUSIVE, Gates
from cass_deploy.evaluation.scoring import ValidationResult
from cass_deploy.evaluation.verify import run_verify
from cass_deploy.export.onnx_export import export_part
from cass_deploy.export.pipeline import run_export
from cass_deploy.export.profiles import ExportProfile, load_profile, profile_from_mapping
from cass_deploy.export.settings import apply_profile, request_from
from cass_deploy.io_utils import atomic_path, write_json
from cass_deploy.model.adapter import ModelSource, load_model
from cass_deploy.model.checkpoint import load_checkpoint
from cass_deploy.model.interface import INPUT_NAME
from cass_deploy.profiling.latency import (
    TimedConfig,
    environment,
    ort_config,
    profile_record,
    time_configs,
)
from cass_deploy.profiling.macs import count_macs
from cass_deploy.runtime.artefacts import make_runner, resolve_candidates
from cass_deploy.runtime.manifest import MANIFEST_NAME, ONNX_NAME, Manifest
from cass_deploy.runtime.torch_runner import TorchRunner
from cass_deploy.sweeps.executor import (
    Executor,
    SweepOptions,
    Unit,
    collect_files,
    niceness_note,
    place_files,
    scratch,
    wait_until_quiet,
    write_files,
)

BACKENDS = ("onnxruntime", "tensorrt")
STATE = "tune-state.json"
BUSY_BELOW = 0.15  # the timing unit on Ray starts once the other processes use less of the node's CPUs
PASS, FAIL = "pass", "fail"


# --------------------------------------------------------------------------- what to tune


@dataclass(frozen=True)
class TuneOptions:
    """What ``tune`` sweeps and how it decides. ``profile``: a deployment profile (name or YAML)
    giving the target, input size, batch and pruner; ``gates``: the release gates every
    configuration must pass (decided on the intervals, :mod:`cass_deploy.evaluation.gates`)."""

    keep_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    precisions: tuple[str, ...] = ("fp32",)
    backend: str = "onnxruntime"
    profile: str | None = None
    target: str | None = None
    pruner_mode: str | None = None
    data: str = "synthetic"
    images: int = 64
    verify_images: int = 8
    calib_images: int = 16
    gates: Gates = field(default_factory=lambda: Gates(max_recall_drop=0.05))
    fields: FieldConfig = field(default_factory=FieldConfig)
    warmup: int = 5
    rounds: int = 30
    order: str = "fixed"
    threads: int | None = None
    providers: tuple[str, ...] = ("cpu",)
    seed: int = 0
    resize: bool = False
    class_map: dict[str, str | None] | None = None  # --class-map: model class -> dataset class
    #: on Ray: seconds the timing unit waits at most for its node's CPUs to go idle (a just-started
    #: local Ray spends its first seconds starting its workers); 0: time at once
    quiet_wait: float = 20.0

    def __post_init__(self) -> None:
        if not self.keep_ratios:
            raise InputError("--keep needs at least one keep ratio, e.g. 0.25,0.5,0.75")
        for entry in self.keep_ratios:  # a keep ratio, or a per-stage schedule (SPEC 6c): a tuple of them
            for r in entry if isinstance(entry, (tuple, list)) else (entry,):
                if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
                    raise InputError(f"keep ratio must be in (0, 1], got {r!r} (in --keep {keep_text(entry)})")
        if len(set(self.keep_ratios)) != len(self.keep_ratios):
            raise InputError(f"--keep lists a keep ratio twice: {list(self.keep_ratios)}")
        if not self.precisions:
            raise InputError("--precision needs at least one of fp32, fp16, int8")
        for p in self.precisions:
            if p not in PRECISIONS:
                raise InputError(f"precision must be one of {list(PRECISIONS)}, got {p!r}")
        if self.backend not in BACKENDS:
            raise InputError(f"--backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        for name, minimum in (("images", 1), ("verify_images", 1), ("rounds", 2), ("warmup", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {v!r}")
        if isinstance(self.quiet_wait, bool) or not isinstance(self.quiet_wait, (int, float)) or self.quiet_wait < 0:
            raise InputError(f"--quiet-wait must be a number of seconds >= 0, got {self.quiet_wait!r}")
        if not self.gates.active():
            raise InputError(
                "tune needs at least one gate to decide what passes: --max-recall-drop and/or --min-near-recall"
            )

    def settings(self) -> dict[str, Any]:
        """The settings a resumed run must share (JSON-able)."""
        d = dataclasses.asdict(self)
        d["keep_ratios"] = list(self.keep_ratios)
        d["precisions"] = list(self.precisions)
        d["providers"] = list(self.providers)
        for k in ("warmup", "rounds", "order", "threads", "quiet_wait"):  # timing is redone freely
            d.pop(k)
        return json.loads(json.dumps(d))


def keep_text(keep: float | Sequence[float], sep: str = "/") -> str:
    """A keep ratio (``0.5``) or a per-stage keep schedule (``0.7/0.5/0.3``, SPEC 6c) as text."""
    return sep.join(f"{float(r):g}" for r in keep) if isinstance(keep, (tuple, list)) else f"{keep:g}"


@dataclass(frozen=True)
class TuneConfig:
    """One point of the sweep: a keep ratio, or a per-stage keep schedule (a tuple, one ratio per
    stage of a multi-stage model, SPEC 6c), and a precision."""

    keep_ratio: float | tuple[float, ...]
    precision: str

    @property
    def name(self) -> str:
        return f"keep{keep_text(self.keep_ratio, '_')}-{self.precision}"

    @property
    def label(self) -> str:
        return f"keep {keep_text(self.keep_ratio)} {self.precision}"


@dataclass
class TuneSource:
    """The model being tuned: where its weights are and what they are. ``model_source`` is the
    ``--model SPEC --weights`` adapter (SPEC 6a), None for this project's checkpoint."""

    checkpoint: Path
    sha256: str
    name: str
    image_size: tuple[int, int]
    pruner_mode: str
    model_source: ModelSource | None = None

    def export_fields(self) -> dict[str, Any]:
        """The ExportRequest fields that name the model."""
        if self.model_source is None:
            return {"checkpoint": self.checkpoint}
        src = self.model_source
        return {"checkpoint": None, "model": src.spec, "weights": src.weights, "model_args": dict(src.args)}

    def verify_reference(self) -> dict[str, Any]:
        """``run_verify``'s reference arguments: the checkpoint, or the adapter's ``source``."""
        if self.model_source is None:
            return {"reference": str(self.checkpoint)}
        return {"reference": None, "source": self.model_source}

    def dense_model(self, image_size: Sequence[int]):
        """The same weights without pruning (the reference and the latency baseline)."""
        if self.model_source is None:
            return load_checkpoint(self.checkpoint, pruner_mode="none", image_size=tuple(image_size)).model
        if tuple(image_size) != self.image_size:
            raise InputError(
                f"--model {self.model_source.spec} is built for {self.image_size[0]}x{self.image_size[1]}; "
                "another input size comes through its factory (--model-args), not a profile"
            )
        model = load_model(self.model_source).model
        if not hasattr(model, "with_pruner"):
            raise InputError(f"tune needs with_pruner(mode='none') on the --model {self.model_source.spec} object")
        return model.with_pruner(mode="none")


def open_source(model: str | Path | None, source: ModelSource | None = None) -> TuneSource:
    """The model to tune -> :class:`TuneSource`: a checkpoint path, or ``source`` (a ``--model``
    adapter). Every other step goes through what this returns."""
    if source is not None:
        loaded = load_model(source)
        m = loaded.model
        name = Path(str(source.spec).split(":")[0]).stem
        return TuneSource(
            Path(source.weights).resolve(), loaded.sha256, name, tuple(m.image_size), m.pruner_mode, source
        )
    ck = load_checkpoint(model)
    m = ck.model
    return TuneSource(Path(model).resolve(), ck.sha256, Path(model).stem, tuple(m.image_size), m.pruner_mode)


# --------------------------------------------------------------------------- results


@dataclass
class ConfigResult:
    """What ``tune`` measured for one configuration (``configs/<name>.json``)."""

    name: str
    keep_ratio: float | list[float]  # a list: a per-stage keep schedule (SPEC 6c)
    precision: str
    export: str
    pruner_mode: str
    verify: dict[str, Any]
    validation: dict[str, Any]
    status: str
    reasons: list[str]
    latency: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return TuneConfig(self.keep_ratio, self.precision).label

    @property
    def final_keep_ratio(self) -> float | None:
        """The share of the patches the last stage keeps (the keep ratio itself for one stage)."""
        if not isinstance(self.keep_ratio, (tuple, list)):
            return self.keep_ratio
        return Manifest.read(Path(self.export) / MANIFEST_NAME).keep_ratio

    def near(self) -> dict[str, Any]:
        return self.validation["result"]["by_field"]["near"]

    def near_drop(self) -> dict[str, Any] | None:
        return (self.validation.get("drops") or {}).get("near")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TuneResult:
    """The table, the recommendation and where everything was written."""

    out: Path
    configs: list[ConfigResult]
    recommended: ConfigResult | None
    profile_yaml: Path | None
    notes: list[str]
    reference: dict[str, Any]
    comparison: dict[str, Any] | None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "configs": [c.to_dict() for c in self.configs],
            "recommended": self.recommended.name if self.recommended else None,
            "profile_yaml": str(self.profile_yaml) if self.profile_yaml else None,
            "notes": list(self.notes),
            "reference": self.reference,
            "comparison": self.comparison,
            "seconds": self.seconds,
        }


# --------------------------------------------------------------------------- the run


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NullProgress()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _prepare_out(out: Path, state: dict[str, Any], force: bool, check_only: bool = False) -> bool:
    """Create ``out`` or check it holds a tune with the same settings -> True when resuming
    (``check_only``: refuse a wrong ``out`` but write nothing)."""
    if out.exists() and force:
        if not out.is_dir():
            raise InputError(f"--out {out} is a file, not a directory")
        if check_only:
            return False
        shutil.rmtree(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} is a file, not a directory")
        path = out / STATE
        if not path.is_file():
            raise InputError(f"{out} exists and is not a tune directory (no {STATE}); pass --force or another --out")
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}; pass --force to start again") from None
        diff = sorted(k for k in set(old) | set(state) if old.get(k) != state.get(k))
        if diff:
            raise InputError(
                f"{out} holds a tune with other settings ({', '.join(diff)} differ); "
                "pass --force to start again or choose another --out"
            )
        return True
    if not check_only:
        out.mkdir(parents=True)
        write_json(out / STATE, state)
    return False


def _export(
    source: TuneSource, cfg: TuneConfig, directory: Path, opts: TuneOptions, profile: ExportProfile | None, log
) -> None:
    """Export ``cfg`` into ``directory`` unless a finished export of the same weights and settings is there."""
    man_path = directory / MANIFEST_NAME
    if man_path.is_file():
        man = Manifest.read(man_path)
        same = man.source_checkpoint_sha256 == source.sha256 and man.precision == cfg.precision and _same_keep(man, cfg)
        check = man.verify(directory)
        if same and check.ok:
            log(f"{cfg.label}: reusing {directory}")
            return
        why = "other settings" if check.ok else f"hash mismatch: {check.summary()}"
        raise InputError(f"{directory} holds another export ({why}); pass --force to start again")
    values = {
        **source.export_fields(),
        "out": directory,
        "precision": cfg.precision,
        "keep_ratio": cfg.keep_ratio,
        "pruner_mode": opts.pruner_mode,
        "target": opts.target,
        "calib_images": opts.calib_images,
        "engine": True if opts.backend == "tensorrt" else None,
        "force": True,  # an unfinished export leaves nothing (atomic), so nothing is lost here
    }
    run_export(request_from(**apply_profile(values, profile)), log=log)


def _same_keep(man: Manifest, cfg: TuneConfig) -> bool:
    """Whether an export was made at ``cfg``'s keep ratio (or per-stage schedule: its manifest's stages)."""
    if isinstance(cfg.keep_ratio, (tuple, list)):
        got = [st.get("keep_ratio") for st in man.extra.get("stages") or []]
        return len(got) == len(cfg.keep_ratio) and all(
            g is not None and abs(g - r) < 1e-12 for g, r in zip(got, cfg.keep_ratio)
        )
    return man.keep_ratio is not None and abs(man.keep_ratio - cfg.keep_ratio) < 1e-12


def _status(verify: dict[str, Any], checks: list[dict[str, Any]]) -> tuple[str, list[str]]:
    reasons = []
    if not verify.get("passed"):
        reasons.append("verify: " + "; ".join(verify.get("failures") or ["failed"]))
    failed = [c for c in checks if not c["passed"]]
    reasons += [c["message"] for c in failed]
    if any(c["status"] == "fail" for c in failed) or not verify.get("passed"):
        return FAIL, reasons
    if failed:
        return INCONCLUSIVE, reasons
    allowed = [c["message"] for c in checks if c["status"] == INCONCLUSIVE]
    return PASS, [f"allowed inconclusive: {m}" for m in allowed]


def _timed_config(cfg: ConfigResult, stack: ExitStack, opts: TuneOptions, batch: int, size) -> TimedConfig:
    d = Path(cfg.export)
    if opts.backend == "onnxruntime":
        return ort_config(
            None,
            stack,
            label=cfg.label,
            pruner_mode=cfg.pruner_mode,
            keep_ratio=cfg.final_keep_ratio,
            image_size=size,
            batch=batch,
            providers=opts.providers,
            threads=opts.threads,
            path=d / ONNX_NAME,
        )
    cand = resolve_candidates([str(d)], opts.providers)[-1]
    runner = stack.enter_context(make_runner(cand, opts.providers))
    feed = {INPUT_NAME: np.random.default_rng(0).random((batch, 3, *size), dtype=np.float32)}
    macs = count_macs(d / ONNX_NAME, {"batch": batch})
    return TimedConfig(
        cfg.label, "tensorrt", "cuda", cfg.pruner_mode, cfg.final_keep_ratio, batch, lambda: runner.infer(feed), macs
    )


def run_tune(
    model: str | Path | None,
    out: str | Path,
    opts: TuneOptions,
    *,
    model_source: ModelSource | None = None,
    force: bool = False,
    progress: bool = True,
    sweep: SweepOptions | None = None,
    log: Callable[[str], None] = print,
) -> TuneResult:
    """``cass-deploy tune`` (module docstring). Returns the result; raises GateFailed (exit 1)
    after writing everything when no configuration passes every gate.

    ``sweep``: where the units run (:mod:`cass_deploy.sweeps.executor`; default: in this
    process): one unit per configuration (export -> verify -> validate, in a scratch directory of
    its node; the export's files and the record come back and are written to ``OUT`` as each
    arrives), then the timing of dense + every configuration, interleaved, as one exclusive unit
    (it holds the profile slot and every CPU of its node, so its figures compare with a plain
    ``profile`` run)."""
    t0 = time.perf_counter()
    if not out:
        raise InputError("tune needs --out DIR (where exports, results and the recommended profile go)")
    if model is None and model_source is None:
        raise InputError("tune needs a checkpoint or --model SPEC --weights FILE")
    out = Path(out)
    source = open_source(model, model_source)
    profile = load_profile(opts.profile) if opts.profile else None
    if profile is not None and profile.target != opts.backend:
        raise InputError(
            f"profile {profile.name!r} targets {profile.target} but --backend is {opts.backend}; "
            f"pass --backend {profile.target}"
        )
    size = tuple(profile.image_size) if profile is not None else source.image_size
    batch = profile.batch if profile is not None else 1
    state = {"source_sha256": source.sha256, "image_size": list(size), "batch": batch, **opts.settings()}
    grid = [TuneConfig(r, p) for r in opts.keep_ratios for p in opts.precisions]
    notes: list[str] = []
    _prepare_out(out, state, force, check_only=True)  # a wrong --out is refused before Ray starts
    with Executor(sweep or SweepOptions(), exclusive=True, log=log) as ex, _progress(progress) as bar:
        if _prepare_out(out, state, force):  # after the executor: a bad --address leaves nothing
            log(f"resuming the tune in {out}")
        task = bar.add_task("tune", total=3 * len(grid) + opts.rounds + 1)
        reference = _reference(source, opts, size, out / "reference.json", bar, task)
        results = _candidates(ex, source, grid, opts, profile, size, reference, out, bar, task, log)
        bar.update(task, description=f"profile {len(results) + 1} configurations interleaved")
        exports = {r.name: collect_files(Path(r.export)) for r in results}
        quiet = 0.0 if ex.opts.in_process else opts.quiet_wait  # in this process: nothing of ours runs beside it
        records = [r.to_dict() for r in results]
        unit = Unit("profile", _profile_unit, (source, opts, size, batch, records, exports, quiet))
        timed: dict[str, Any] = {}
        failed = ex.run([unit], lambda key, value: timed.update(value=value))
        if failed:
            raise SweepFailed(f"the timing unit failed: {failed[0].line()}; run the same command again to resume")
        measurements, env, tnotes = timed["value"]
        notes += tnotes
        bar.advance(task, opts.rounds)
    return _finish(model, out, source, opts, profile, size, batch, results, reference, measurements, env, notes, t0)


def _reference(source: TuneSource, opts: TuneOptions, size, ref_path: Path, bar, task) -> ValidationResult:
    """The dense reference's validation result (read back when a resumed tune has it)."""
    if ref_path.is_file():
        reference = ValidationResult.from_dict(json.loads(ref_path.read_text()))
    else:
        bar.update(task, description="validate dense reference")
        dense_model = source.dense_model(size)
        dense = vr.Deployed(
            "torch:dense",
            TorchRunner(dense_model, "full"),
            size,
            tuple(dense_model.grid),
            None,
            False,
            source.checkpoint,
            "none",
            None,
            len(dense_model.class_names),
            class_names=tuple(dense_model.class_names),
            class_map=opts.class_map,
        )
        vr.check_class_map(dense.class_names, opts.class_map, f"the model of {source.name}")
        batches = vr.load_batches(opts.data, size, opts.images, seed=opts.seed, resize=opts.resize)
        reference = vr.evaluate_deployed(dense, batches, fields=opts.fields)
        write_json(ref_path, reference.to_dict())
    bar.advance(task)
    return reference


def _candidates(ex, source, grid, opts, profile, size, reference, out: Path, bar, task, log) -> list[ConfigResult]:
    """Every configuration's export -> verify -> validate: read back when done earlier, else one
    unit each; each arriving one is written (its export directory, ``configs/<name>.json``) at
    once. -> the results in grid order."""
    done: dict[str, ConfigResult] = {}
    units = []
    for cfg in grid:
        rec_path = out / "configs" / f"{cfg.name}.json"
        if rec_path.is_file():
            done[cfg.name] = ConfigResult(**json.loads(rec_path.read_text()))
            log(f"{cfg.label}: done earlier ({done[cfg.name].status})")
            bar.advance(task, 3)
            continue
        earlier = out / "exports" / cfg.name  # an export of an interrupted run: sent along, reused if it fits
        files = collect_files(earlier) if (earlier / MANIFEST_NAME).is_file() else None
        args = (source, cfg, opts, profile, size, reference.to_dict(), files, str(earlier))
        units.append(Unit(cfg.name, _candidate_unit, args))

    def arrived(name: str, value: tuple[dict[str, Any], list[str], dict[str, bytes]]) -> None:
        record, lines, files = value
        for line in lines:
            log(line)
        directory = write_files(out / "exports" / name, files)
        rec = ConfigResult(**{**record, "export": str(directory)})
        rec.validation["model"] = str(directory)
        write_json(out / "configs" / f"{name}.json", rec.to_dict())
        done[name] = rec
        bar.advance(task, 3)

    if units:
        log(ex.describe(len(units), "configurations", None))
        failures = ex.run(units, arrived)
        if failures:
            raise SweepFailed(
                f"{len(failures)} of {len(units)} configurations failed ({'; '.join(f.line() for f in failures)}); "
                f"the others are in {out}; run the same command again to retry them"
            )
    return [done[cfg.name] for cfg in grid]


def _candidate_unit(
    source: TuneSource,
    cfg: TuneConfig,
    opts: TuneOptions,
    profile: ExportProfile | None,
    size: tuple[int, int],
    reference: dict[str, Any],
    earlier: dict[str, bytes] | None,
    shown: str,
) -> tuple[dict[str, Any], list[str], dict[str, bytes]]:
    """One configuration, wherever the executor runs it: export (reusing ``earlier``'s files when
    they are the same export), verify, validate against ``reference``, in a scratch directory
    -> (its ConfigResult as a dict, its log lines naming ``shown`` for the scratch directory, the
    export's files)."""
    lines: list[str] = []
    with scratch("cass-tune-") as tmp:
        directory = place_files(tmp / cfg.name, earlier) if earlier else tmp / cfg.name
        _export(source, cfg, directory, opts, profile, lines.append)
        report, _ = run_verify(
            candidates=[str(directory)],
            **source.verify_reference(),
            images=opts.verify_images,
            data=opts.data,
            providers=opts.providers,
            seed=opts.seed,
            resize=opts.resize,
        )
        verify = report.candidates[0].to_dict()
        verify["passed"] = bool(report.candidates[0])
        batches = vr.load_batches(opts.data, size, opts.images, seed=opts.seed, resize=opts.resize)
        deployed = vr.open_model(str(directory), opts.providers)
        deployed.class_map = opts.class_map
        vr.check_class_map(deployed.class_names, opts.class_map, deployed.name)
        lines += vr.class_notes(deployed.class_names, opts.class_map)
        result = vr.evaluate_deployed(deployed, batches, fields=opts.fields)
        ref = ValidationResult.from_dict(reference)
        drops, checks = vr.compare(result, ref, opts.gates)
        validation = vr.validation_record(directory, result, ref, checks, drops, opts.gates)
        status, reasons = _status(verify, validation["gates"])
        man = Manifest.read(directory / MANIFEST_NAME)
        args = (cfg.name, cfg.keep_ratio, cfg.precision, str(directory), man.pruner_mode, verify, validation)
        rec = ConfigResult(*args, status=status, reasons=reasons)
        lines.append(f"{cfg.label}: {status}" + (f" ({reasons[0]})" if reasons and status != PASS else ""))
        return rec.to_dict(), [line.replace(str(directory), shown) for line in lines], collect_files(directory)


def _profile_unit(
    source: TuneSource,
    opts: TuneOptions,
    size: tuple[int, int],
    batch: int,
    records: list[dict[str, Any]],
    exports: dict[str, dict[str, bytes]],
    quiet_wait: float = 0.0,
) -> tuple[list[Any], dict[str, Any], list[str]]:
    """The timing of dense + every configuration, interleaved in rounds, on the node that holds the
    profile slot (the exports placed in a scratch directory there) -> (measurements, that node's
    environment, notes)."""
    waited, busy = wait_until_quiet(BUSY_BELOW, quiet_wait) if quiet_wait > 0 else (0.0, None)
    notes = [] if busy is None or busy < BUSY_BELOW else [_busy_note(waited, busy)]
    notes += [n for n in (niceness_note(),) if n]
    with scratch("cass-tune-profile-") as tmp, ExitStack() as stack:
        placed = {name: place_files(tmp / name, files) for name, files in exports.items()}
        results = [ConfigResult(**{**r, "export": str(placed[r["name"]])}) for r in records]
        timed = []
        if opts.backend == "onnxruntime":
            timed.append(
                ort_config(
                    export_part(source.dense_model(size), "full", batch=batch, simplify=True),
                    stack,
                    label="dense",
                    pruner_mode="none",
                    keep_ratio=None,
                    image_size=size,
                    batch=batch,
                    providers=opts.providers,
                    threads=opts.threads,
                )
            )
        else:
            notes.append("tensorrt: no dense engine is built, so speed-ups are against the first configuration")
        timed += [_timed_config(r, stack, opts, batch, size) for r in results]
        measurements = time_configs(timed, warmup=opts.warmup, rounds=opts.rounds, order=opts.order)
    return measurements, environment("cuda" if opts.backend == "tensorrt" else "cpu"), notes


def _busy_note(waited: float, busy: float) -> str:
    return (
        f"the timing started with this node's CPUs {100 * busy:.0f}% busy with other work after waiting "
        f"{waited:.0f} s for them to be idle: its latencies are not comparable with a quiet run"
    )


def _finish(model, out, source, opts, profile, size, batch, results, reference, measurements, env, notes, t0):
    """Latencies into the records, the recommendation, its profile YAML, the plot and tune.json -> TuneResult."""
    prof = profile_record(model, env, measurements)
    write_json(out / "profile" / "profile.json", prof, force=True)
    comparison = prof["comparison"]
    speed = {s["b"]: s for s in (comparison or {}).get("speedups", [])}
    for r, m in zip(results, measurements[len(measurements) - len(results) :]):
        r.latency = {
            "p50": m.latency.p50,
            "p50_ci": [m.median_ci.lo, m.median_ci.hi],
            "iqr": m.median_ci.iqr,
            "mean": m.latency.mean,
            "macs": m.macs.total if m.macs else None,
            "speedup": speed.get(m.label),
        }
        write_json(out / "configs" / f"{r.name}.json", r.to_dict(), force=True)
    notes += (comparison or {}).get("warnings", [])
    recommended, why = recommend(results)
    notes += why
    yaml_path = None
    if recommended is not None and isinstance(recommended.keep_ratio, (tuple, list)):
        notes.append(
            f"{recommended.label} is a per-stage keep schedule: a deployment profile carries one keep ratio, so "
            "no recommended.yaml is written; export it with --model-args giving the schedule to the factory"
        )
    elif recommended is not None:
        yaml_path = out / "recommended.yaml"
        write_profile_yaml(yaml_path, recommended_profile(profile, source, recommended, opts, size, batch))
    res = TuneResult(
        out, results, recommended, yaml_path, notes, reference.to_dict(), comparison, time.perf_counter() - t0
    )
    pareto_plot(res, out / "pareto.png", opts.gates)
    write_json(out / "tune.json", {**res.to_dict(), "options": opts.settings(), "table": table_rows(res)}, force=True)
    return res


# --------------------------------------------------------------------------- recommend


def recommend(results: Sequence[ConfigResult]) -> tuple[ConfigResult | None, list[str]]:
    """The fastest configuration (lowest p50 median) that passes every gate, and notes: which
    passing configurations it cannot be told apart from (overlapping latency intervals)."""
    passing = [r for r in results if r.status == PASS and r.latency]
    if not passing:
        return None, ["no configuration passes every gate: nothing is recommended"]
    best = min(passing, key=lambda r: r.latency["p50"])
    lo, hi = best.latency["p50_ci"]
    ties = [r.label for r in passing if r is not best and r.latency["p50_ci"][0] <= hi]
    notes = []
    if ties:
        notes.append(
            f"{best.label} has the lowest median latency of the passing configurations, but its interval "
            f"[{lo:.3f}, {hi:.3f}] ms overlaps {', '.join(ties)}: the data do not rank them"
        )
    return best, notes


def recommended_profile(
    base: ExportProfile | None,
    source: TuneSource,
    best: ConfigResult,
    opts: TuneOptions,
    size: Sequence[int],
    batch: int,
) -> ExportProfile:
    """The deployment profile of ``best``: the ``--profile`` given (or one for this backend and
    input size) with the tuned keep ratio, precision and the export's pruner."""
    near = best.near()
    p50 = best.latency["p50"]
    lo, hi = best.latency["p50_ci"]
    evidence = (
        f"tuned by cass-deploy tune on {source.name}: keep {keep_text(best.keep_ratio)}, {best.precision}; near recall "
        f"{near['recall']:.3f} [{near['recall_lo']:.3f}, {near['recall_hi']:.3f}], p50 {p50:.2f} ms "
        f"[{lo:.2f}, {hi:.2f}] on {opts.backend}"
    )
    if base is not None:
        d = {k: v for k, v in base.to_dict().items() if k not in ("grid", "num_patches", "k")}
    else:
        d = {
            "target": opts.backend,
            "device": "cpu" if opts.backend == "onnxruntime" else "x86-gpu",
            "image_size": list(size),
            "batch": batch,
            "timing_cache": opts.backend == "tensorrt",
        }
    # what was validated is what the profile exports: the export's pruner and opset
    opset = Manifest.read(Path(best.export) / MANIFEST_NAME).opset if best.export else None
    d.update(
        name=f"tuned-{source.name}",
        description=evidence,
        precision=best.precision,
        keep_ratio=float(best.keep_ratio),
        pruner_mode=best.pruner_mode,
        **({"opset": opset} if opset else {}),
    )
    return profile_from_mapping(d)


def write_profile_yaml(path: Path, profile: ExportProfile) -> Path:
    """The profile as YAML (the keys ``export --profile`` reads), written atomically."""
    d = {k: v for k, v in profile.to_dict().items() if k not in ("grid", "num_patches", "k")}
    header = f"# {profile.description}\n# use: cass-deploy export CHECKPOINT --profile {path.name} --out EXPORT_DIR\n"
    with atomic_path(path, force=True) as tmp:
        tmp.write_text(header + yaml.safe_dump(d, sort_keys=False))
    return path


# --------------------------------------------------------------------------- table and plot


def _ci(lo: float | None, hi: float | None, digits: int = 3) -> str:
    return "n/a" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def table_rows(res: TuneResult) -> list[dict[str, Any]]:
    """One JSON-able row per configuration: what the table shows."""
    rows = []
    for r in res.configs:
        near, drop = r.near(), r.near_drop() or {}
        lat = r.latency or {}
        sp = lat.get("speedup") or {}
        rows.append(
            {
                "config": r.label,
                "keep_ratio": r.keep_ratio,
                "precision": r.precision,
                "keep_iou": r.verify.get("keep_iou_mean"),
                "verify": bool(r.verify.get("passed")),
                "near_recall": near.get("recall"),
                "near_recall_ci": [near.get("recall_lo"), near.get("recall_hi")],
                "near_objects": near.get("n_gt"),
                "near_drop": drop.get("point"),
                "near_drop_ci": [drop.get("lo"), drop.get("hi")],
                "p50_ms": lat.get("p50"),
                "p50_ci": lat.get("p50_ci"),
                "speedup": sp.get("ratio"),
                "speedup_ci": [sp.get("lo"), sp.get("hi")] if sp else None,
                "mac_bound": sp.get("mac_bound"),
                "share_of_mac_bound": sp.get("share_of_mac_bound"),
                "status": r.status,
                "recommended": res.recommended is not None and r.name == res.recommended.name,
            }
        )
    return rows


def tune_table(res: TuneResult, title: str | None = None) -> Table:
    """rich Table of :func:`table_rows`."""
    t = Table(title=title or f"tune: {res.out}")
    cols = ["config", "keep IoU", "near recall [95% CI]", "near drop [95% CI]", "p50 ms [95% CI]"]
    cols += ["speed-up vs dense [95% CI]", "MAC bound", "gates"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("config", "gates") else "right")
    for row in table_rows(res):
        nr, nd = row["near_recall"], row["near_drop"]
        sp = row["speedup"]
        status = row["status"] + (" <- recommended" if row["recommended"] else "")
        t.add_row(
            row["config"],
            "n/a" if row["keep_iou"] is None else f"{row['keep_iou']:.4f}",
            "n/a" if nr is None else f"{nr:.3f} {_ci(*row['near_recall_ci'])} ({row['near_objects']})",
            "n/a" if nd is None else f"{nd:+.3f} {_ci(*row['near_drop_ci'])}",
            "-" if row["p50_ms"] is None else f"{row['p50_ms']:.3f} {_ci(*row['p50_ci'])}",
            "-" if sp is None else f"{sp:.2f}x {_ci(*row['speedup_ci'], digits=2)}",
            "-" if not row["mac_bound"] else f"{row['mac_bound']:.2f}x",
            status,
        )
    return t


MARKERS = {PASS: ("o", "tab:green"), FAIL: ("X", "tab:red"), INCONCLUSIVE: ("^", "tab:orange")}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (lower latency x, higher recall y), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], -np.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def pareto_plot(res: TuneResult, path: Path, gates: Gates) -> Path | None:
    """p50 latency (x, 95 % interval) vs near-field recall (y, Wilson interval), one marker per
    configuration by verdict, the Pareto front, the dense reference's recall and the
    recommendation -> PNG."""
    rows = [r for r in table_rows(res) if r["p50_ms"] is not None and r["near_recall"] is not None]
    if not rows:
        return None
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for status, (marker, colour) in MARKERS.items():
        sel = [r for r in rows if r["status"] == status]
        if not sel:
            continue
        x = np.array([r["p50_ms"] for r in sel])
        y = np.array([r["near_recall"] for r in sel])
        xerr = np.array([[r["p50_ms"] - r["p50_ci"][0], r["p50_ci"][1] - r["p50_ms"]] for r in sel]).T
        yerr = np.array(
            [[r["near_recall"] - r["near_recall_ci"][0], r["near_recall_ci"][1] - r["near_recall"]] for r in sel]
        ).T
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, color=colour, capsize=3, label=status, markersize=8)
        for r in sel:
            ax.annotate(
                r["config"], (r["p50_ms"], r["near_recall"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
    pts = [(r["p50_ms"], r["near_recall"]) for r in rows]
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="grey", lw=1, label="Pareto front")
    ref = res.reference["by_field"]["near"]
    if ref.get("recall") is not None:
        ax.axhline(ref["recall"], color="black", lw=1, label=f"dense near recall {ref['recall']:.3f}")
        if ref.get("recall_lo") is not None:
            ax.axhspan(ref["recall_lo"], ref["recall_hi"], color="black", alpha=0.08)
    if gates.min_near_recall is not None:
        ax.axhline(
            gates.min_near_recall, color="tab:red", lw=1, ls=":", label=f"min near recall {gates.min_near_recall:g}"
        )
    best = next((r for r in rows if r["recommended"]), None)
    if best is not None:
        ax.plot(
            [best["p50_ms"]],
            [best["near_recall"]],
            "*",
            color="gold",
            markersize=18,
            markeredgecolor="k",
            label="recommended",
            zorder=5,
        )
    ax.set_xlabel("p50 latency (ms), 95% CI")
    ax.set_ylabel("near-field recall, 95% CI")
    ax.set_title("tune: latency vs near-field recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


def raise_if_none_passed(res: TuneResult) -> None:
    """GateFailed (exit 1) naming why each configuration failed, when nothing is recommended."""
    if res.recommended is None:
        why = "; ".join(f"{r.label}: {r.status} ({r.reasons[0] if r.reasons else '?'})" for r in res.configs)
        raise GateFailed(f"no configuration passes every gate: {why}")


__all__ = [
    "TuneOptions",
    "TuneConfig",
    "TuneSource",
    "ConfigResult",
    "TuneResult",
    "open_source",
    "run_tune",
    "recommend",
    "recommended_profile",
    "write_profile_yaml",
    "table_rows",
    "tune_table",
    "pareto_front",
    "pareto_plot",
    "raise_if_none_passed",
]
