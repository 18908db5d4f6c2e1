"""Latency profiling: torch / ONNX Runtime / TensorRT, dense vs pruned, keep-ratio sweeps.

Each measurement is ``warmup`` untimed calls then ``iters`` timed calls of one backend on one
fixed input batch; statistics come from :class:`cass_deploy.profiling.timing.LatencyStats`. On a CUDA
device torch is timed with CUDA events twice: with host↔device copies (``end_to_end``) and on
an input already on the device (``device_only``); TensorRT reports the same split. On a Jetson
the power mode and clocks are recorded and power, GPU load and RAM are sampled during the run.
"""

from __future__ import annotations

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
from cass_deploy.io_utils import latency_cells, latency_headers
from cass_deploy.model.interface import INPUT_NAME
from cass_deploy.profiling.power import make_sampler
from cass_deploy.profiling.timing import (
    CudaEventTimer,
    LatencyStats,
    peak_memory,
    reset_cuda_peak_memory,
    time_callable,
)
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
class Measurement:
    """One timed configuration."""

    label: str
    backend: str
    device: str
    pruner_mode: str
    keep_ratio: float | None
    batch: int
    latency: LatencyStats
    device_only: LatencyStats | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    power: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
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
) -> tuple[LatencyStats, dict | None]:
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
    return LatencyStats.from_samples(ms, batch=batch), power


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

        lat, power = _timed(end_to_end, warmup, iters, batch, sync=torch.cuda.synchronize)
        dev, _ = _timed(dev_only, warmup, iters, batch, timer=CudaEventTimer(device), sample_power=False)
    else:

        def run():
            with torch.no_grad():
                return module(host)

        lat, power = _timed(run, warmup, iters, batch)
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
    lat, power = _timed(lambda: runner.infer(feed), warmup, iters, batch)
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
    return Measurement(label, backend, device, pruner_mode, keep_ratio, batch, lat, dev, peak_memory(), power)


def _keep(model) -> float | None:
    ratio = getattr(model, "keep_ratio", None)
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
    ratios = list(opts.sweep) or ([_keep(model)] if _keep(model) is not None else [])
    if not ratios and not opts.dense:
        raise InputError(f"nothing to profile: {ckpt_path} is a dense model and --no-dense was given without --sweep")
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
        return profile_runner(
            runner,
            f"{c.kind} {m.precision}",
            batch=size,
            warmup=warmup,
            iters=iters,
            pruner_mode=m.pruner_mode,
            keep_ratio=m.keep_ratio,
            image_size=m.image_size,
        )


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
    """The ``profile.json`` document (read by ``report``)."""
    return {"model": str(model), "environment": env, "results": [r.to_dict() for r in results]}


def results_table(results: Sequence[Measurement], title: str = "latency (ms)"):
    """rich Table with mean / p50 / p90 / p95 / p99 / max, throughput and speed-up vs the first row."""

    t = Table(title=title)
    for col in ("config", "backend", "batch", *latency_headers("mean", "vs first"), "device-only mean"):
        t.add_column(col, justify="right" if col not in ("config", "backend") else "left")
    base = results[0].latency.mean if results else None
    for r in results:
        t.add_row(
            r.label,
            f"{r.backend}/{r.device}",
            str(r.batch),
            *latency_cells(r.latency.to_dict(), base),
            f"{r.device_only.mean:.3f}" if r.device_only else "-",
        )
    return t


def sweep_plot(results: Sequence[Measurement], path: str | Path) -> Path | None:
    """Latency against keep ratio (dense as a horizontal line) -> PNG."""
    pts = [(r.keep_ratio, r.latency.p50) for r in results if r.keep_ratio is not None]
    if not pts:
        return None
    pts.sort()
    fig = mpl_figure.Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="pruned (p50)")
    for r in results:
        if r.keep_ratio is None:
            ax.axhline(r.latency.p50, color="grey", linestyle="--", label=f"{r.label} (p50)")
    ax.set_xlabel("keep ratio")
    ax.set_ylabel("latency p50 (ms)")
    ax.set_title(f"{results[0].backend} / {results[0].device}, batch {results[0].batch}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


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
