"""Latency profiling: torch / ONNX Runtime / TensorRT, dense vs pruned, keep-ratio sweeps.

Several configurations (dense and each keep ratio) are timed **interleaved in rounds** by default
(:mod:`cass_deploy.profiling.interleave`, SPEC §7a): ``warmup`` untimed calls of each, then
``iters`` rounds that time each configuration once; every median carries a bootstrap interval,
every speed-up against the first configuration a paired interval, and its bound from the
multiply-accumulates counted in the ONNX graph (:mod:`cass_deploy.profiling.macs`); rankings whose
intervals overlap are reported as not supported. ``interleave=False`` times one configuration
after another (``warmup`` then ``iters`` calls each) — on a Jetson that is what gives power per
configuration. Statistics come from :class:`cass_deploy.profiling.timing.LatencyStats`. On a CUDA
device torch is timed with CUDA events twice: with host↔device copies (``end_to_end``) and on
an input already on the device (``device_only``); TensorRT reports the same split. On a Jetson
the power mode and clocks are recorded and power, GPU load and RAM are sampled during the run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from cass_deploy.backends.jetson import clocks_locked, nvpmodel_mode, read_board_info
from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import InputError
from cass_deploy.io_utils import Output, latency_cells, latency_headers, write_json
from cass_deploy.model.interface import INPUT_NAME
from cass_deploy.profiling.interleave import (
    MedianCI,
    RatioCI,
    median_intervals,
    paired_speedups,
    ranking_warnings,
    time_interleaved,
    time_until_resolved,
)
from cass_deploy.profiling.macs import MacCount, count_macs, mac_bound
from cass_deploy.profiling.parts import PARTS, share_lines, time_by_part
from cass_deploy.profiling.power import make_sampler
from cass_deploy.profiling.timing import (
    CudaEventTimer,
    LatencyStats,
    peak_memory,
    reset_cuda_peak_memory,
    time_callable,
)
from cass_deploy.resampling import percentile_interval, resample_indices
from cass_deploy.runtime.artefacts import make_runner, resolve_candidates
from cass_deploy.runtime.ort_runner import OrtRunner

# Profiling an exported model must not need torch (a Jetson with only TensorRT): the torch side
# (checkpoints, eager timing, export on the fly) is imported when first used.
torch = lazy_import("torch")
onnx = lazy_import("onnx")
onnx_export = lazy_import("cass_deploy.export.onnx_export")
adapter = lazy_import("cass_deploy.model.adapter")
torch_runner = lazy_import("cass_deploy.runtime.torch_runner")
mpl_figure = lazy_import("matplotlib.figure")

BACKENDS = ("torch", "onnxruntime", "tensorrt")


@dataclass
class Configuration:
    """What a timed configuration is: its label, backend, device, pruner, keep ratio and batch."""

    label: str
    backend: str
    device: str
    pruner_mode: str
    keep_ratio: float | None
    batch: int


@dataclass
class Measurement(Configuration):
    """One timed configuration."""

    latency: LatencyStats
    device_only: LatencyStats | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    power: dict[str, Any] | None = None
    median_ci: MedianCI | None = None
    macs: MacCount | None = None
    interleaved: bool = False
    samples_ms: list[float] | None = None
    #: ONNX Runtime CPU only: mean ms per run by part of a pruned graph, from ORT's profiler
    #: (:func:`~cass_deploy.profiling.parts.time_by_part`); None where not measured
    parts_ms: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50_ci_ms": self.median_ci.to_dict() if self.median_ci else None,
            "macs": self.macs.to_dict() if self.macs else None,
            "time_by_part_ms": self.parts_ms,
            "interleaved": self.interleaved,
            "samples_ms": self.samples_ms,
            "label": self.label,
            "backend": self.backend,
            "device": self.device,
            "pruner_mode": self.pruner_mode,
            "keep_ratio": self.keep_ratio,
            "batch": self.batch,
            "latency_ms": self.latency.to_dict(),
            "device_only_ms": self.device_only.to_dict() if self.device_only else None,
            "memory": self.memory,
            "power": self.power,
        }


def _sampler(enabled: bool):
    if not enabled:
        return None

    return make_sampler() if read_board_info().is_jetson else None


def _timed(
    fn: Callable[[], Any],
    warmup: int,
    iters: int,
    batch: int,
    sync=None,
    timer="perf_counter",
    sample_power: bool = True,
) -> tuple[LatencyStats, dict | None, MedianCI]:
    sampler = _sampler(sample_power)
    if sampler is not None:
        sampler.start()
    t0 = time.perf_counter()
    try:
        ms = time_callable(fn, warmup=warmup, iters=iters, sync=sync, timer=timer)
    finally:
        if sampler is not None:
            sampler.stop()
    power = sampler.summarise(time.perf_counter() - t0, (warmup + iters) * batch) if sampler is not None else None
    return LatencyStats.from_samples(ms, batch=batch), power, median_intervals(ms)[0]


def profile_torch(
    model, label: str, *, batch: int, warmup: int, iters: int, device: str = "cpu", part: str = "full"
) -> Measurement:
    """Time ``model.full_module()`` (or the predictor part) in torch eager mode."""

    H, W = model.image_size
    module = (model.full_module() if part == "full" else model.predictor_module()).to(device).eval()
    host = torch.rand(batch, 3, H, W)
    cuda = device.startswith("cuda")
    if cuda:
        reset_cuda_peak_memory(device)
        on_dev = host.to(device)

        def end_to_end():
            with torch.no_grad():
                outs = module(host.to(device, non_blocking=False))
            return [o.cpu() for o in outs]

        def dev_only():
            with torch.no_grad():
                return module(on_dev)

        lat, power, ci = _timed(end_to_end, warmup, iters, batch, sync=torch.cuda.synchronize)
        dev, _, _ = _timed(dev_only, warmup, iters, batch, timer=CudaEventTimer(device), sample_power=False)
    else:

        def run():
            with torch.no_grad():
                return module(host)

        lat, power, ci = _timed(run, warmup, iters, batch)
        dev = None
    return Measurement(
        label,
        "torch",
        device,
        model.pruner_mode,
        _keep(model),
        batch,
        lat,
        dev,
        peak_memory(device if cuda else None),
        power,
        median_ci=ci,
    )


def profile_runner(
    runner,
    label: str,
    *,
    batch: int,
    warmup: int,
    iters: int,
    pruner_mode: str,
    keep_ratio: float | None,
    image_size: Sequence[int],
) -> Measurement:
    """Time an activated Runner (ONNX Runtime or TensorRT) on one random batch."""

    H, W = image_size
    feed = {INPUT_NAME: np.random.default_rng(0).random((batch, 3, H, W), dtype=np.float32)}
    runner.activate()
    lat, power, ci = _timed(lambda: runner.infer(feed), warmup, iters, batch)
    dev = None
    backend = "onnxruntime"
    device = "cpu"
    if type(runner).__name__ == "TrtRunner":
        backend, device = "tensorrt", "cuda"
        runner.upload(feed)
        dev_ms = [runner.infer_device_only() for _ in range(warmup + iters)][warmup:]
        dev = LatencyStats.from_samples(dev_ms, batch=batch)
    elif hasattr(runner, "providers_in_use"):
        device = "cuda" if any("CUDA" in p or "Tensorrt" in p for p in runner.providers_in_use()) else "cpu"
    return Measurement(
        label, backend, device, pruner_mode, keep_ratio, batch, lat, dev, peak_memory(), power, median_ci=ci
    )


def _keep(model) -> float | None:
    """The keep ratio of a pruned model: its ``keep_ratio`` (optional in the protocol), else ``k / P``."""
    ratio = getattr(model, "keep_ratio", None)
    if ratio is None and model.k:
        ratio = model.k / (model.grid[0] * model.grid[1])
    return None if model.pruner_mode == "none" or ratio is None else float(ratio)


def variants(model, keep_ratios: Sequence[float], dense: bool, pruner_mode: str | None = None):
    """(label, model) pairs sharing ``model``'s weights: dense first, then each keep ratio. A model
    without ``with_pruner`` (a ``--model`` adapter may lack it) is timed as it is."""
    if not hasattr(model, "with_pruner"):
        if keep_ratios and list(keep_ratios) != [_keep(model)]:
            raise InputError(f"--sweep needs a model with with_pruner(); {type(model).__name__} has none")
        return [(f"{model.pruner_mode} keep {_keep(model)}" if _keep(model) else "model", model)]
    out = []
    if dense:
        out.append(("dense", model.with_pruner(mode="none")))
    mode = pruner_mode or (model.pruner_mode if model.pruner_mode != "none" else "global")
    for r in keep_ratios:
        if not 0 < r <= 1:
            raise InputError(f"keep ratio must be in (0, 1], got {r}")
        out.append((f"{mode} keep {r:g}", model.with_pruner(mode=mode, keep_ratio=r)))
    return out


@dataclass(frozen=True)
class ProfileOptions:
    """What to time (``cass-deploy profile``'s options). ``sweep``: keep ratios of a checkpoint;
    ``batch`` None: 1, or an export's own batch; ``backend`` None: torch for a checkpoint."""

    backend: str | None = None
    device: str = "cpu"
    batch: int | None = None
    warmup: int = 10
    iters: int = 50
    sweep: tuple[float, ...] = ()
    dense: bool = True
    pruner_mode: str | None = None
    threads: int | None = None
    providers: tuple[str, ...] = ("cpu",)
    interleave: bool = True
    order: str = "fixed"
    count_macs: bool = True
    until_ci: float = 0.0
    max_time: float = 120.0

    def __post_init__(self) -> None:
        check_stopping_rule(self.until_ci, self.max_time)


def check_stopping_rule(
    until_ci: float, max_time: float, flags: tuple[str, str] = ("--until-ci", "--max-time")
) -> None:
    """The stopping rule's settings (``until_ci`` in [0, 1), 0: off; ``max_time`` > 0 s), checked
    where they are given (``flags`` name them in the message), not after the work before the timing."""
    if not (0 <= until_ci < 1) or not max_time > 0:
        raise InputError(f"{flags[0]} must be in [0, 1) and {flags[1]} > 0, got {until_ci} and {max_time}")


# --------------------------------------------------------------------------- interleaved comparison


@dataclass
class TimedConfig(Configuration):
    """One configuration to time interleaved with others: what it is and one call of it."""

    run: Callable[[], Any]
    macs: MacCount | None = None
    #: the ONNX file an ONNX Runtime CPU configuration runs (its parts are timed from it)
    onnx_path: Path | None = None
    threads: int | None = None
    image_size: tuple[int, int] | None = None


@dataclass
class Comparison:
    """Speed-ups of every configuration over the first (the baseline, usually dense), with their
    intervals, the MAC bound beside each, and the warnings where the data do not support a
    ranking. ``paired``: the configurations were timed interleaved (ratios resample rounds)."""

    baseline: str
    speedups: list[RatioCI]
    mac_bounds: dict[str, float | None]
    warnings: list[str]
    paired: bool

    def share_of_bound(self, label: str) -> float | None:
        """Measured speed-up / MAC bound of ``label`` (None without a bound)."""
        r = next((x for x in self.speedups if x.b == label), None)
        bound = self.mac_bounds.get(label)
        return None if r is None or not bound else r.ratio / bound

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "paired": self.paired,
            "speedups": [
                {**r.to_dict(), "mac_bound": self.mac_bounds.get(r.b), "share_of_mac_bound": self.share_of_bound(r.b)}
                for r in self.speedups
            ],
            "warnings": list(self.warnings),
        }


def latency_comparison(results: Sequence[Measurement], *, resamples: int = 2000, seed: int = 0) -> Comparison | None:
    """:class:`Comparison` of ``results`` against ``results[0]`` (None with fewer than two, or
    without stored samples). Interleaved results of equal length are compared paired by round;
    otherwise each configuration's rounds are resampled independently (and a warning says so)."""
    rs = [r for r in results if r.samples_ms]
    if len(rs) < 2 or len(rs) != len(results):
        return None
    labels = [r.label for r in rs]
    n = {len(r.samples_ms) for r in rs}
    paired = all(r.interleaved for r in rs) and len(n) == 1
    warnings = []
    if paired:
        ms = np.array([r.samples_ms for r in rs]).T
        # median of per-round log-ratios (each round timed both back to back), bootstrap over rounds
        speedups = paired_speedups(ms, labels, [(0, j) for j in range(1, len(rs))], resamples=resamples, seed=seed)
    else:
        warnings.append(
            "configurations were timed one after another, not interleaved: their ratios are not paired and "
            "machine noise between them is not cancelled"
        )
        speedups = []
        base = np.asarray(rs[0].samples_ms)
        base_meds = np.median(base[resample_indices(len(base), resamples, seed)], axis=1)
        for j in range(1, len(rs)):
            other = np.asarray(rs[j].samples_ms)
            meds_j = np.median(other[resample_indices(len(other), resamples, seed + j)], axis=1)
            lo, hi = percentile_interval(base_meds / meds_j)
            speedups.append(RatioCI(labels[0], labels[j], float(np.median(base) / np.median(other)), lo, hi))
    meds = [r.median_ci for r in rs]
    if all(m is not None for m in meds):
        warnings += ranking_warnings(labels, meds)
    base_macs = rs[0].macs
    bounds = {r.label: (mac_bound(base_macs, r.macs) if base_macs and r.macs else None) for r in rs[1:]}
    return Comparison(labels[0], speedups, bounds, warnings, paired)


def time_configs(
    configs: Sequence[TimedConfig],
    *,
    warmup: int,
    rounds: int,
    order: str = "fixed",
    sync: Callable[[], Any] | None = None,
    on_round: Callable[[int], None] | None = None,
    until_ci: float = 0.0,
    max_time: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> list[Measurement]:
    """Time ``configs`` interleaved (:func:`~cass_deploy.profiling.interleave.time_interleaved`)
    -> one Measurement each, with its median interval and samples (for :func:`latency_comparison`).
    ``until_ci > 0``: the stopping rule (:func:`~cass_deploy.profiling.interleave.time_until_resolved`):
    at least ``rounds`` rounds, then more until every speed-up over ``configs[0]`` is within
    ``+-until_ci`` or ``max_time`` seconds have passed (``log`` says which)."""
    fns = [c.run for c in configs]
    if until_ci > 0 and len(configs) > 1:
        stopped = time_until_resolved(
            fns,
            [c.label for c in configs],
            target=until_ci,
            max_seconds=max_time,
            min_rounds=max(rounds, 2),
            warmup=warmup,
            order=order,
            sync=sync,
        )
        ms = stopped.ms
        if log is not None:
            log(f"stopping rule: {stopped.summary()}")
    else:
        ms = time_interleaved(fns, rounds=rounds, warmup=warmup, order=order, sync=sync, on_round=on_round)
    meds = median_intervals(ms)
    mem = peak_memory()
    return [
        Measurement(
            c.label,
            c.backend,
            c.device,
            c.pruner_mode,
            c.keep_ratio,
            c.batch,
            LatencyStats.from_samples(ms[:, i].tolist(), batch=c.batch),
            None,
            mem,
            None,
            median_ci=meds[i],
            macs=c.macs,
            interleaved=True,
            samples_ms=ms[:, i].tolist(),
        )
        for i, c in enumerate(configs)
    ]


def ort_config(
    proto: Any,
    stack: contextlib.ExitStack,
    *,
    label: str,
    pruner_mode: str,
    keep_ratio: float | None,
    image_size: Sequence[int],
    batch: int,
    providers: Sequence[str] = ("cpu",),
    threads: int | None = None,
    path: str | Path | None = None,
    feed: dict[str, np.ndarray] | None = None,
) -> TimedConfig:
    """A TimedConfig of an ONNX model (a proto, saved to a temporary file, or ``path``) in an ONNX
    Runtime session kept open by ``stack``, pinned to ``threads`` (None: one per core), spinning
    only while its own run lasts, as every interleaved session must (``session_options``); MACs
    counted from the graph. It runs on ``feed`` (default: random images ``[batch, 3, H, W]``)."""
    if path is None:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        path = tmp / "model.onnx"
        onnx.save(proto, path)
    # interleaved sessions stop spinning when their run returns: a default ORT pool spins on and
    # takes the cores from the next configuration's (tune on Ray, 3 sessions: p50 16-17 ms, IQR
    # 6-10 ms for a 9 ms model); without --threads, one pinned thread per core
    threads = threads or os.cpu_count() or 1
    runner = stack.enter_context(OrtRunner(path, providers=providers, intra_op_threads=threads))
    H, W = image_size
    if feed is None:
        feed = {INPUT_NAME: np.random.default_rng(0).random((batch, 3, H, W), dtype=np.float32)}
    device = "cuda" if any("CUDA" in p or "Tensorrt" in p for p in runner.providers_in_use()) else "cpu"
    macs = count_macs(proto if proto is not None else path, {"batch": batch})
    cpu = device == "cpu"
    return TimedConfig(
        label,
        "onnxruntime",
        device,
        pruner_mode,
        keep_ratio,
        batch,
        lambda: runner.infer(feed),
        macs,
        Path(path) if cpu else None,
        threads,
        (int(H), int(W)),
    )


def add_part_times(results: Sequence[Measurement], configs: Sequence[TimedConfig]) -> None:
    """Time each part of every ONNX Runtime CPU configuration with a pruned graph (ORT's profiler,
    after the interleaved timing, so it never disturbs it) into ``Measurement.parts_ms``."""
    for res, c in zip(results, configs):
        if c.onnx_path is not None and c.macs is not None and c.macs.by_part:
            res.parts_ms = time_by_part(c.onnx_path, image_size=c.image_size, batch=c.batch, threads=c.threads)


def variant_configs(model, opts: ProfileOptions, backend: str, batch: int, device: str, part: str, stack):
    """(TimedConfig per variant of ``model``, sync) for :func:`time_configs`."""
    configs = []
    sync = None
    for label, m in variants(model, _ratios(model, opts), opts.dense, opts.pruner_mode):
        needs_proto = backend == "onnxruntime" or opts.count_macs
        proto = onnx_export.export_part(m, part, batch=batch, simplify=True) if needs_proto else None
        if backend == "onnxruntime":
            configs.append(
                ort_config(
                    proto,
                    stack,
                    label=label,
                    pruner_mode=m.pruner_mode,
                    keep_ratio=_keep(m),
                    image_size=m.image_size,
                    batch=batch,
                    providers=("cuda", "cpu") if device.startswith("cuda") else ("cpu",),
                    threads=opts.threads,
                )
            )
            continue
        module = (m.full_module() if part == "full" else m.predictor_module()).to(device).eval()
        host = torch.rand(batch, 3, *m.image_size)
        if device.startswith("cuda"):
            sync = torch.cuda.synchronize

        def run(module=module, host=host):
            with torch.no_grad():
                out = module(host.to(device))
            return out

        macs = count_macs(proto) if proto is not None else None
        configs.append(TimedConfig(label, "torch", device, m.pruner_mode, _keep(m), batch, run, macs))
    return configs, sync


def _ratios(model, opts: ProfileOptions) -> list[float]:
    keep = _keep(model)
    return list(opts.sweep) or ([keep] if keep is not None else [])


def profile_checkpoint(
    ckpt_path: Any, opts: ProfileOptions, *, part: str = "full", log: Callable[[str], None] = print
) -> list[Measurement]:
    """Dense vs pruned (and the keep-ratio ``opts.sweep``) of one checkpoint (a path, or a
    ``model.adapter.ModelSource`` such as ``--model SPEC --weights FILE``) on torch or ONNX Runtime;
    every variant shares the checkpoint's weights."""
    backend, batch = opts.backend or "torch", opts.batch or 1
    if backend not in ("torch", "onnxruntime"):
        raise InputError(
            f"profiling a checkpoint supports torch or onnxruntime (export an engine for "
            f"TensorRT and profile it), got {backend!r}"
        )

    device = torch_runner.resolve_device(opts.device)
    source = ckpt_path if hasattr(ckpt_path, "describe") else adapter.ModelSource(checkpoint=Path(ckpt_path))
    model = adapter.load_model(source).model
    ratios = _ratios(model, opts)
    if not ratios and not opts.dense:
        raise InputError(f"nothing to profile: {ckpt_path} is a dense model and --no-dense was given without --sweep")
    if opts.interleave:
        with contextlib.ExitStack() as stack:
            configs, sync = variant_configs(model, opts, backend, batch, device, part, stack)
            log(
                f"profiling {', '.join(c.label for c in configs)} interleaved ({backend}, {device}, batch {batch}, "
                f"{opts.warmup} warm-up + {opts.iters} rounds)"
            )
            results = time_configs(
                configs,
                warmup=opts.warmup,
                rounds=opts.iters,
                order=opts.order,
                sync=sync,
                until_ci=opts.until_ci,
                max_time=opts.max_time,
                log=log,
            )
            add_part_times(results, configs)
            return results
    results = []
    for label, m in variants(model, ratios, opts.dense, opts.pruner_mode):
        log(f"profiling {label} ({backend}, {device}, batch {batch})")
        if backend == "torch":
            results.append(
                profile_torch(m, label, batch=batch, warmup=opts.warmup, iters=opts.iters, device=device, part=part)
            )
        else:
            results.append(profile_onnx_of(m, label, batch, opts.warmup, opts.iters, device, opts.threads, part))
    return results


def profile_onnx_of(
    model,
    label: str,
    batch: int,
    warmup: int,
    iters: int,
    device: str = "cpu",
    threads: int | None = None,
    part: str = "full",
) -> Measurement:
    """Export ``model``'s part to a temporary ONNX and time it in ONNX Runtime."""

    proto = onnx_export.export_part(model, part, batch=batch, simplify=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(proto, path)
        with OrtRunner(
            path, providers=("cuda", "cpu") if device.startswith("cuda") else ("cpu",), intra_op_threads=threads
        ) as runner:
            return profile_runner(
                runner,
                label,
                batch=batch,
                warmup=warmup,
                iters=iters,
                pruner_mode=model.pruner_mode,
                keep_ratio=_keep(model),
                image_size=model.image_size,
            )


def profile_artefact(
    path: str,
    *,
    batch: int | None = None,
    warmup: int = 10,
    iters: int = 50,
    providers: Sequence[str] = ("cpu",),
    threads: int | None = None,
    notes: list[str] | None = None,
) -> Measurement:
    """Time an exported ONNX / engine (or an export directory) as it is. An export directory with an
    engine: the engine, or its ONNX where TensorRT cannot run (said in ``notes``)."""

    found: list[str] = []
    cands = resolve_candidates([path], providers, found)
    c = cands[-1] if len(cands) > 1 else cands[0]  # an export dir with an engine: profile the engine
    if found and c.kind == "onnx" and "engine" in c.meta.artefact_roles:
        found.append(f"profiled {c.path} instead: its export's engine needs TensorRT and pycuda")
    if notes is not None:
        notes += found
    m = c.meta
    fixed = m.fixed_batch
    if batch is not None and fixed is not None and batch != fixed:
        raise InputError(f"{c.path} was exported for batch {fixed}; --batch {batch} needs a dynamic-batch export")
    size = batch or m.batch_step
    if c.kind == "onnx":
        runner = OrtRunner(c.path, providers=providers, intra_op_threads=threads)
    else:
        runner = make_runner(c)
    with runner:
        res = profile_runner(
            runner,
            f"{c.kind} {m.precision}",
            batch=size,
            warmup=warmup,
            iters=iters,
            pruner_mode=m.pruner_mode,
            keep_ratio=m.keep_ratio,
            image_size=m.image_size,
        )
    if c.kind == "onnx" and res.macs is None:  # the graph's MACs (per stage for a multi-stage model)
        res.macs = count_macs(c.path, {"batch": size})
    if c.kind == "onnx" and res.device == "cpu" and res.macs is not None and res.macs.by_part:
        res.parts_ms = time_by_part(c.path, image_size=m.image_size, batch=size, threads=threads)
    return res


def environment(device: str) -> dict[str, Any]:
    """What the numbers depend on: backend versions, device, Jetson power mode and clocks."""

    info: dict[str, Any] = {"machine": platform.machine(), "processor": platform.processor() or None, "device": device}
    try:
        info["torch"] = str(torch.__version__)
        info["threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    board = read_board_info()
    if board.is_jetson:
        mode = nvpmodel_mode()
        locked = clocks_locked()
        info["jetson"] = {
            "model": board.model,
            "l4t": board.l4t,
            "jetpack": board.jetpack,
            "nvpmodel": getattr(mode, "name", None),
            "clocks_locked": locked,
        }
        if locked is False:
            info.setdefault("warnings", []).append(
                "clocks are not locked: run `sudo jetson_clocks` for stable latency numbers"
            )
    return info


def profile_record(model: str, env: dict[str, Any], results: Sequence[Measurement]) -> dict[str, Any]:
    """The ``profile.json`` document (read by ``report``): environment, every measurement and the
    :func:`latency_comparison` of the measurements against the first."""
    comparison = latency_comparison(results)
    return {
        "model": str(model),
        "environment": env,
        "results": [r.to_dict() for r in results],
        "comparison": comparison.to_dict() if comparison else None,
    }


def results_table(results: Sequence[Measurement], title: str = "latency (ms)"):
    """rich Table with mean / p50 / p90 / p95 / p99 / max, throughput and speed-up vs the first
    row, then the p50's 95 % bootstrap interval, the interquartile range, the speed-up of the p50
    with its interval (paired by round when interleaved), the MAC bound and the share of it."""

    t = Table(title=title)
    device_only = any(r.device_only for r in results)
    cols = ("config", "backend", "batch", *latency_headers("mean", "vs first"))
    cols += ("device-only mean",) if device_only else ()
    cols += ("p50 95% CI", "IQR", "p50 speed-up [95% CI]", "MAC bound", "of bound", "GMACs")
    for col in cols:
        t.add_column(col, justify="right" if col not in ("config", "backend") else "left")
    base = results[0].latency.mean if results else None
    comp = latency_comparison(results)
    speedups = {r.b: r for r in comp.speedups} if comp else {}
    for r in results:
        ci = r.median_ci
        sp = speedups.get(r.label)
        bound = comp.mac_bounds.get(r.label) if comp else None
        share = comp.share_of_bound(r.label) if comp else None
        t.add_row(
            r.label,
            f"{r.backend}/{r.device}",
            str(r.batch),
            *latency_cells(r.latency.to_dict(), base),
            *([f"{r.device_only.mean:.3f}" if r.device_only else "-"] if device_only else []),
            f"[{ci.lo:.3f}, {ci.hi:.3f}]" if ci else "-",
            f"{ci.iqr:.3f}" if ci else "-",
            f"{sp.ratio:.2f}x [{sp.lo:.2f}, {sp.hi:.2f}]" if sp else ("baseline" if comp and r is results[0] else "-"),
            f"{bound:.2f}x" if bound else "-",
            f"{100 * share:.0f}%" if share is not None else "-",
            f"{r.macs.total / 1e9:.3f}" if r.macs and r.macs.complete else "-",
        )
    notes = [f"warning: {w}" for w in comp.warnings] if comp else []
    for r in results:  # SPEC 6c: where a multi-stage model's MACs run
        if r.macs and len(r.macs.by_stage) > 2:
            cells = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in r.macs.by_stage.items())
            notes.append(f"MMACs by stage, {r.label}: {cells}")
    notes += part_notes(results)
    if notes:
        t.caption = "\n".join(notes)
    return t


def part_notes(results: Sequence[Measurement]) -> list[str]:
    """Lines saying where each pruned configuration's MACs and (ORT CPU) time go, part by part,
    and the gather / scatter overhead on a line of its own."""
    lines = []
    for r in results:
        if r.macs and r.macs.by_part:
            lines.append(
                f"MMACs by part, {r.label}: {share_lines({k: v / 1e6 for k, v in r.macs.by_part.items()}, '')}"
            )
        if r.parts_ms:
            lines.append(f"time by part (ONNX Runtime profiler), {r.label}: {share_lines(r.parts_ms, ' ms')}")
            g, total = r.parts_ms.get(PARTS[1], 0.0), sum(r.parts_ms.values()) or 1.0
            lines.append(
                f"gather / scatter overhead, {r.label}: {g:.3f} ms per run ({100 * g / total:.1f}% of its time)"
            )
    return lines


def sweep_plot(results: Sequence[Measurement], path: str | Path) -> Path | None:
    """Latency p50 (with its 95 % interval as error bars) against keep ratio, dense as a
    horizontal line with its interval as a band -> PNG."""
    pts = sorted((r.keep_ratio, r) for r in results if r.keep_ratio is not None)
    if not pts:
        return None
    fig = mpl_figure.Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    xs = [p[0] for p in pts]
    ys = [p[1].latency.p50 for p in pts]
    err = None
    if all(p[1].median_ci for p in pts):
        err = [[y - p[1].median_ci.lo for y, p in zip(ys, pts)], [p[1].median_ci.hi - y for y, p in zip(ys, pts)]]
    ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label="pruned (p50, 95% CI)")
    for r in results:
        if r.keep_ratio is None:
            ax.axhline(r.latency.p50, color="grey", linestyle="--", label=f"{r.label} (p50)")
            if r.median_ci:
                ax.axhspan(r.median_ci.lo, r.median_ci.hi, color="grey", alpha=0.2)
    ax.set_xlabel("keep ratio")
    ax.set_ylabel("latency p50 (ms)")
    ax.set_title(f"{results[0].backend} / {results[0].device}, batch {results[0].batch}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


@dataclass
class ProfileRun:
    """What ``cass-deploy profile`` did: the measurements, the environment, the model's name, and
    the files written under ``--out`` (none without it)."""

    results: list[Measurement]
    env: dict[str, Any]
    name: str
    written: list[str] = field(default_factory=list)


def profile_to(
    model: str | Path | None, opts: ProfileOptions, *, source: Any = None, out: str | Path | None = None, force=False
) -> ProfileRun:
    """``cass-deploy profile``: ``--out`` checked before anything runs (not over the model, not
    over a folder with files without ``force``), :func:`run_profile`, then ``profile.json`` and
    the sweep plot written there atomically."""
    target = Output(out, force=force, kind="dir", flag="--out", inputs=[model]).check() if out else None
    results, env = run_profile(Path(model) if model is not None else None, opts, source=source)
    name = Path(model).name if model is not None else source.describe()
    done = ProfileRun(results, env, name)
    if target is not None:
        with target.writing() as tmp:
            write_json(tmp / "profile.json", profile_record(str(model or source.describe()), env, results))
            plot = sweep_plot(results, tmp / "sweep.png")
        done.written = [f"{out}/profile.json", *([f"{out}/sweep.png"] if plot else [])]
    return done


def run_profile(
    model: str | Path | None, opts: ProfileOptions, source: Any = None
) -> tuple[list[Measurement], dict[str, Any]]:
    """``cass-deploy profile``: a checkpoint or a ``--model`` adapter (``source``; dense vs pruned,
    keep-ratio ``sweep``; torch or ONNX Runtime) or an exported model as it is -> (measurements,
    environment)."""
    if opts.warmup < 0 or opts.iters < 1:
        raise InputError(f"--warmup must be >= 0 and --iters >= 1, got {opts.warmup} and {opts.iters}")
    if opts.batch is not None and opts.batch < 1:
        raise InputError(f"--batch must be >= 1, got {opts.batch}")
    if source is None and model is None:
        raise InputError("profile needs a model path or --model SPEC --weights FILE")
    path = Path(model) if model is not None else None
    if path is not None and not path.exists():
        raise InputError(f"model {path} does not exist")
    if opts.threads is not None:
        if opts.threads < 1:
            raise InputError(f"--threads must be >= 1, got {opts.threads}")
        torch.set_num_threads(opts.threads)
    notes: list[str] = []
    if source is not None:
        results = profile_checkpoint(source, opts)
    elif path.suffix in (".pt", ".pth"):
        results = profile_checkpoint(str(path), opts)
    else:
        if opts.sweep:
            raise InputError("--sweep needs a checkpoint (an export has its keep ratio fixed)")
        results = [
            profile_artefact(
                str(path),
                batch=opts.batch,
                warmup=opts.warmup,
                iters=opts.iters,
                providers=opts.providers,
                threads=opts.threads,
                notes=notes,
            )
        ]
    env = environment(opts.device)
    if notes:
        env["warnings"] = [*env.get("warnings", []), *notes]
    return results, env
