"""Training loop: detection loss + CASS with warm-up, AdamW + cosine schedule, checkpoints,
resume, deterministic seeds, and multi-process training through ``torchrun`` (DDP).

``TrainConfig`` is the whole run: ``model``, ``cass``, ``data``, ``fields`` sections plus the
optimisation settings; load one from YAML with :func:`load_train_config` and dotted overrides.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from cass_deploy.cass.losses import CassLoss, total_loss
from cass_deploy.cass.targets import soft_target_mask
from cass_deploy.config import (
    PRESET_PRUNER,
    PRESETS,
    CassConfig,
    FieldConfig,
    apply_overrides,
    from_dict,
    load_mapping,
    to_dict,
)
from cass_deploy.data.classes import class_names
from cass_deploy.data.collate import collate
from cass_deploy.data.factory import load_dataset
from cass_deploy.errors import CheckpointError, ConfigError, InputError, TrainingError
from cass_deploy.evaluation.scoring import evaluate
from cass_deploy.evaluation.validate import as_predictions
from cass_deploy.io_utils import Output, write_json
from cass_deploy.model.checkpoint import read_checkpoint, save_checkpoint
from cass_deploy.model.detector import ModelConfig, PrunedDetector
from cass_deploy.model.pruner import band_positive_share


@dataclass
class DataConfig:
    """Where images come from: ``synthetic`` roadside scenes or a COCO / KITTI directory."""

    source: str = "synthetic"
    val_source: str | None = None
    train_images: int = 512
    val_images: int = 64
    seed: int = 0
    cache: bool = True  # keep synthetic scenes in memory: drawing one costs more than a training step

    def __post_init__(self) -> None:
        for name in ("train_images", "val_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be an integer >= 1, got {getattr(self, name)!r}")


@dataclass
class TrainConfig:
    """One training run. ``epochs`` counts passes over ``data.train_images`` images."""

    epochs: int = 4
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.05
    lr_warmup_steps: int = 20
    # "cosine": warm-up, then cosine to 0 over the run. "wsd" (warm-up, stable, decay): warm-up,
    # the peak lr until the last ``lr_decay_fraction`` of the steps, then cosine to 0 — for short
    # budgets, where a cosine spends half the run at under half the lr (issue 12: demo, 6 epochs)
    lr_schedule: str = "cosine"
    lr_decay_fraction: float = 0.3
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = None
    eval_score_thr: float = 0.3
    # every n-th step runs the late blocks on all tokens (pruner off; 0: never): the dense model
    # that gates compare against then stays in the distribution it is evaluated in (issue 22:
    # trained only pruned, the v2 detector's dense far-field recall fell below its pruned one)
    dense_every: int = 0
    max_minutes: float | None = None  # training-time budget; per-epoch evaluation does not count
    model: ModelConfig = field(default_factory=ModelConfig)
    cass: CassConfig = field(default_factory=CassConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fields: FieldConfig = field(default_factory=FieldConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("lr", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be an integer >= 1, got {self.threads!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        f = self.lr_decay_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ConfigError(f"lr_decay_fraction must be in (0, 1], got {f!r}")
        if isinstance(self.dense_every, bool) or not isinstance(self.dense_every, int) or self.dense_every < 0:
            raise ConfigError(f"dense_every must be an integer >= 0 (0: never), got {self.dense_every!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes!r}")


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """TrainConfig from a YAML/JSON file (optional) plus ``key.path=value`` overrides."""
    data = load_mapping(path) if path else {}
    return from_dict(TrainConfig, apply_overrides(data, overrides))


def preset_overrides(preset: str | None, overrides: Sequence[str] = ()) -> list[str]:
    """``overrides`` after the ``--set`` lines of ``preset``'s CASS settings and pruner (``PRESETS``,
    ``PRESET_PRUNER``), so that explicit overrides win; no preset: ``overrides`` as given."""
    if not preset:
        return list(overrides)
    return (
        [f"cass.{k}={v}" for k, v in PRESETS[preset].items()]
        + [f"model.pruner.{k}={v}" for k, v in PRESET_PRUNER[preset].items()]
        + list(overrides)
    )


def train_from_config(
    path: str | Path | None, overrides: Sequence[str], out_dir: str | Path, *, preset: str | None = None, **kw: Any
) -> TrainResult:
    """:func:`train` the config at ``path`` with ``preset`` (see :func:`preset_overrides`) and
    ``overrides`` applied; ``kw``: :func:`train`'s keywords."""
    return train(load_train_config(path, preset_overrides(preset, overrides)), out_dir, **kw)


# --------------------------------------------------------------------------- data


def build_datasets(cfg: TrainConfig):
    """(train, val) datasets for ``cfg.data`` at the model's input size."""

    d = cfg.data
    size = tuple(cfg.model.image_size)
    train = load_dataset(
        d.source, split="train", num_images=d.train_images, image_size=size, seed=d.seed, cache=cache_ok(d.source, d)
    )
    vsrc = d.val_source or d.source
    val = load_dataset(
        vsrc, split="val", num_images=d.val_images, image_size=size, seed=d.seed, cache=cache_ok(vsrc, d)
    )
    return train, val


def cache_ok(source: str, d: DataConfig) -> bool:
    """Whether to cache ``source``'s scenes: synthetic data with ``data.cache`` on."""
    return bool(d.cache) and source == "synthetic"


def make_loader(dataset, batch_size: int, *, shuffle: bool, seed: int, sampler=None):

    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        collate_fn=collate,
        generator=g,
        num_workers=0,
        drop_last=False,
    )


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_model(
    model: PrunedDetector,
    loader,
    fields: FieldConfig,
    score_thr: float = 0.3,
    name: str = "model",
    predictions: list | None = None,
):
    """Recall / retention by field and mAP@0.5 of ``model`` on ``loader`` -> ValidationResult.

    ``predictions``: a list that receives each batch's decoded predictions (``as_predictions``)."""

    was_training = model.training
    model.eval()

    device = next(model.parameters()).device

    def predict(images):
        out = model(images.to(device))
        pred = as_predictions(out, model.image_size, model.pruner_mode != "none", decode_settings=model.decode_settings)
        if predictions is not None:
            predictions.append(pred)
        return pred

    num_classes = model.cfg.num_classes
    result = evaluate(
        predict,
        loader,
        model.image_size,
        model.grid,
        fields=fields,
        score_thr=score_thr,
        num_classes=num_classes,
        class_names=class_names(num_classes > 3)[:num_classes],
        name=name,
    )
    model.train(was_training)
    return result


# --------------------------------------------------------------------------- loop


@dataclass
class TrainResult:
    best_path: Path
    last_path: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float


def _dist_info() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


LR_SCHEDULES = ("cosine", "wsd")


def _lr_lambda(total_steps: int, warmup: int, schedule: str = "cosine", decay_fraction: float = 1.0):
    """lr multiplier per step: linear warm-up over ``warmup`` steps, then a cosine to 0 over the
    remaining steps (``cosine``) or over their last ``decay_fraction`` only (``wsd``)."""
    decay_start = warmup if schedule == "cosine" else max(warmup, round(total_steps * (1 - decay_fraction)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(1, total_steps - decay_start)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


#: the file that marks a run directory whose training did not finish (removed when it does)
INCOMPLETE_MARKER = "INCOMPLETE"


class RunDir:
    """The ``--out`` of a training run: checked before anything is loaded, created only when training
    starts, marked with :data:`INCOMPLETE_MARKER` while it runs. A run that fails or is interrupted
    after an epoch was saved keeps its ``last.pt`` and the marker (what happened, how to ``--resume``);
    one that fails before leaves nothing it created."""

    def __init__(self, path: str | Path, *, force: bool, resume: str | Path | None, rank: int) -> None:
        self.path, self.force, self.resume, self.rank = Path(path), force, resume, rank
        self.started = False
        self.created: list[Path] = []

    @property
    def marker(self) -> Path:
        return self.path / INCOMPLETE_MARKER

    def check(self) -> None:
        if self.rank != 0:
            return
        p = self.path
        if p.exists() and not p.is_dir():
            raise InputError(f"--out {p} is a file, not a directory")
        if p.is_dir() and any(p.iterdir()) and not (self.force or self.resume):
            if self.marker.is_file():
                raise InputError(
                    f"{p} holds an unfinished training run ({INCOMPLETE_MARKER}); continue it with "
                    f"--resume {p / 'last.pt'}, or pass --force to start over"
                )
            raise InputError(f"{p} already holds files; pass --force to overwrite or --resume to continue")
        Output(p, force=True, kind="any", flag="--out").check()  # a path under a file, a read-only dir

    def start(self, epochs: int) -> None:
        """Create the directory (training starts now) and mark it incomplete."""
        if self.rank != 0:
            return
        missing = []
        p = self.path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self.created.append(d)
        self.started = True
        self._mark(f"training started ({epochs} epochs); it has not finished")

    def finish(self) -> None:
        if self.rank == 0:
            self.marker.unlink(missing_ok=True)

    def abandon(self, exc: BaseException) -> None:
        """After a failure or interrupt: keep a resumable run (marked), remove what nothing can resume."""
        if self.rank != 0 or not self.started:
            return
        last = self.path / "last.pt"
        if last.is_file():
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by an error: {exc}"
            self._mark(f"training {why}")
            return
        self.marker.unlink(missing_ok=True)
        if self.created:  # ours alone, and nothing in it can be resumed
            shutil.rmtree(self.created[0], ignore_errors=True)

    def _mark(self, what: str) -> None:
        resume = self.path / "last.pt"
        write_json(
            self.marker,
            {
                "status": "incomplete",
                "what": what,
                "resume": f"cass-deploy train <the same --config / --set> --out {self.path} --resume {resume}",
                "checkpoint": str(resume) if resume.is_file() else None,
            },
            force=True,
        )


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[int, PrunedDetector, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` writing ``last.pt`` / ``best.pt`` / ``history.json`` into ``out_dir``.

    Each history record holds ``seconds`` (wall time since the start, evaluation included) and
    ``train_seconds`` (optimisation and data only). ``on_epoch(epoch, model, record)`` is called
    on rank 0 after each epoch's evaluation (e.g. a learning curve); its time counts in neither.

    Nothing is created before the config, the data and ``resume`` are validated; a failed or
    interrupted run keeps a resumable ``last.pt`` beside an :data:`INCOMPLETE_MARKER` file (or, before
    the first epoch was saved, leaves nothing behind). See :class:`RunDir`."""

    run = RunDir(out_dir, force=force, resume=resume, rank=_dist_info()[0])
    run.check()
    try:
        result = _train(cfg, run, resume=resume, progress=progress, log=log, on_epoch=on_epoch)
    except BaseException as exc:
        run.abandon(exc)
        raise
    run.finish()
    return result


def _step_models(ddp_model, model: PrunedDetector, dense_every: int, world: int):
    """step index within the epoch -> the module to run: every ``dense_every``-th step the same
    weights with the pruner off (late blocks on every token), else the pruned model."""
    if not dense_every or model.pruner_mode == "none":
        return lambda step: ddp_model
    if world > 1:
        raise ConfigError(f"dense_every={dense_every} is not supported with DDP ({world} processes); set it to 0")
    dense = model.with_pruner(mode="none")
    return lambda step: dense if step % dense_every == dense_every - 1 else ddp_model


@dataclass
class _Loop:
    """What every epoch of one run works with, built once by :func:`_build_loop`."""

    cfg: TrainConfig
    device: torch.device
    model: PrunedDetector
    step_model: Callable[[int], Any]  # step index within the epoch -> the module to run
    cass: CassLoss
    sampler: DistributedSampler | None
    loader: DataLoader
    val_loader: DataLoader
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR


@dataclass
class _RunState:
    """Where a run stands: the first epoch to train, the best val mAP@0.5 so far, the epoch records."""

    start_epoch: int = 0
    best_map: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _train(
    cfg: TrainConfig,
    run: RunDir,
    *,
    resume: str | Path | None,
    progress: bool,
    log: Callable[[str], None],
    on_epoch: Callable[[int, PrunedDetector, dict[str, Any]], None] | None,
) -> TrainResult:
    rank, world, local_rank = _dist_info()
    out_dir = run.path
    device = _init_process(cfg, world, local_rank)
    train_ds, val_ds = _load_data(cfg, world)
    cfg = _with_band_quotas(cfg, train_ds)
    loop, state = _build_loop(cfg, train_ds, val_ds, device, resume=resume, log=log)

    t0 = time.perf_counter()
    deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else None
    outside = 0.0  # seconds spent in evaluation, checkpoints and on_epoch (not training)
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    run.start(cfg.epochs)  # everything is validated: the run directory appears now
    prog = _progress(progress and rank == 0)
    stopped_early = False
    with prog:
        task = prog.add_task("train", total=(cfg.epochs - state.start_epoch) * len(loop.loader))
        for epoch in range(state.start_epoch, cfg.epochs):
            sums, n, stopped_early = _train_epoch(loop, epoch, prog, task, deadline, outside)
            record = {
                "epoch": epoch,
                **{k: v / max(n, 1) for k, v in sums.items()},
                "cass_weight": cfg.cass.cass_weight_at(epoch),
                "lr": loop.sched.get_last_lr()[0],
                "seconds": time.perf_counter() - t0,
                "train_seconds": time.perf_counter() - t0 - outside,
            }
            t_eval = time.perf_counter()
            if rank == 0:
                _end_epoch(loop, state, epoch, record, (best_path, last_path), log, on_epoch)
            outside += time.perf_counter() - t_eval
            if stopped_early:
                log(f"stopped after {cfg.max_minutes} min budget (max_minutes)")
                break
    seconds = time.perf_counter() - t0
    if rank == 0:
        write_json(out_dir / "history.json", state.history, force=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    final = state.history[-1] if state.history else {}
    return TrainResult(
        best_path=best_path,
        last_path=last_path,
        metrics={"map50": final.get("map50"), "best_map50": state.best_map},
        history=state.history,
        seconds=seconds,
    )


def _init_process(cfg: TrainConfig, world: int, local_rank: int) -> torch.device:
    """Threads and the seed of this process, the process group under DDP -> the device to train on."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    return device


def _load_data(cfg: TrainConfig, world: int):
    """(train, val) datasets, refused when empty; cached synthetic scenes drawn on every thread's core."""
    train_ds, val_ds = build_datasets(cfg)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise InputError(f"empty dataset: {len(train_ds)} training and {len(val_ds)} validation images")
    if world == 1 and (cfg.threads or 1) > 1:  # cached synthetic scenes: draw them on every thread's core
        for ds in (train_ds, val_ds):
            if hasattr(ds, "prefill"):
                ds.prefill(cfg.threads)
    return train_ds, val_ds


def _with_band_quotas(cfg: TrainConfig, train_ds) -> TrainConfig:
    """``cfg`` with a band pruner's ``proportional`` quotas fixed from the training set (when not given)."""
    mcfg = cfg.model
    if (
        mcfg.pruner.mode == "band"
        and mcfg.pruner.band_quotas == "proportional"
        and mcfg.pruner.band_positive_share is None
    ):
        # quotas proportional to each band's share of positive target patches in the training set
        sample = [train_ds[i]["boxes"] for i in range(min(len(train_ds), 256))]
        grid = (mcfg.image_size[0] // mcfg.patch_size, mcfg.image_size[1] // mcfg.patch_size)
        tgt = soft_target_mask(
            sample,
            grid,
            mcfg.image_size,
            expansion_ratio=cfg.cass.expansion_ratio,
            context_peak=cfg.cass.context_peak,
            ensure_center_patch=cfg.cass.ensure_center_patch,
        )
        share = band_positive_share(tgt, grid, mcfg.pruner.band_rows or mcfg.pruner.bands)
        mcfg = dataclasses.replace(mcfg, pruner=dataclasses.replace(mcfg.pruner, band_positive_share=tuple(share)))
        cfg = dataclasses.replace(cfg, model=mcfg)
    return cfg


def _build_loop(
    cfg: TrainConfig, train_ds, val_ds, device: torch.device, *, resume: str | Path | None, log: Callable[[str], None]
) -> tuple[_Loop, _RunState]:
    """The model, loss, loaders, optimiser and schedule of a run (from ``resume`` when given) -> (loop, state)."""
    rank, world, local_rank = _dist_info()
    model = PrunedDetector(cfg.model).to(device)
    cass = CassLoss(cfg.cass)

    sampler = None
    if world > 1:
        sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, sampler=sampler)
    val_loader = make_loader(val_ds, cfg.batch_size, shuffle=False, seed=cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(total_steps, min(cfg.lr_warmup_steps, total_steps), cfg.lr_schedule, cfg.lr_decay_fraction)
    )
    state = _resume_from(resume, model, opt, sched, log) if resume else _RunState()
    ddp_model = model
    if world > 1:
        ddp_model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    step_model = _step_models(ddp_model, model, cfg.dense_every, world)
    loop = _Loop(cfg, device, model, step_model, cass, sampler, loader, val_loader, opt, sched)
    return loop, state


def _resume_from(resume: str | Path, model: PrunedDetector, opt, sched, log: Callable[[str], None]) -> _RunState:
    """Load ``resume``'s weights, optimiser and schedule into this run -> where it stood."""
    raw = read_checkpoint(resume)
    try:
        model.load_state_dict(raw["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"--resume {resume} was trained with another model config than this run's: {str(exc).splitlines()[0]}"
        ) from None
    if "optimizer" in raw:
        opt.load_state_dict(raw["optimizer"])
    if "scheduler" in raw:
        sched.load_state_dict(raw["scheduler"])
    state = _RunState(
        start_epoch=int(raw.get("epoch", -1)) + 1,
        best_map=float(raw.get("metrics", {}).get("best_map50", -1.0)),
        history=list(raw.get("train_config", {}).get("history", [])),
    )
    log(f"resumed from {resume} at epoch {state.start_epoch}")
    return state


def _train_epoch(
    loop: _Loop, epoch: int, prog, task, deadline: float | None, outside: float
) -> tuple[dict[str, float], int, bool]:
    """One pass over the training loader -> (summed losses, steps, stopped by the time budget)."""
    cfg, model, device = loop.cfg, loop.model, loop.device
    grid, image_size = model.grid, model.image_size
    if loop.sampler is not None:
        loop.sampler.set_epoch(epoch)
    model.train()
    sums = {"loss": 0.0, "det": 0.0, "cass": 0.0}
    n = 0
    for batch in loop.loader:
        images = batch["images"].to(device)
        boxes = [b.to(device) for b in batch["boxes"]]
        labels = [lb.to(device) for lb in batch["labels"]]
        out = loop.step_model(n)(images)
        if not torch.isfinite(out["scores"]).all():  # weights blown up by the last step
            raise TrainingError(
                f"training diverged: the model's outputs are no longer finite at epoch {epoch}; "
                f"lower lr (now {cfg.lr}) or check the data"
            )
        det = model.loss(out, boxes, labels)["total"]
        c = loop.cass(out["scores"], boxes, grid, image_size)
        loss = total_loss(det, c, cfg.cass, epoch)
        if not torch.isfinite(loss):  # before the step, so no weight is touched by a NaN
            raise TrainingError(
                f"training diverged: loss is {float(loss)} at epoch {epoch}; lower lr (now {cfg.lr}) or check the data"
            )
        _optimiser_step(loop, loss)
        sums["loss"] += float(loss.detach())
        sums["det"] += float(det.detach())
        sums["cass"] += float(c.total.detach())
        n += 1
        prog.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs} loss {sums['loss'] / n:.3f}")
        if deadline and time.perf_counter() - outside > deadline:
            return sums, n, True
    return sums, n, False


def _optimiser_step(loop: _Loop, loss: torch.Tensor) -> None:
    """Backward ``loss``, clip the gradient norm to ``grad_clip`` (0: off), step the optimiser and the lr."""
    loop.opt.zero_grad(set_to_none=True)
    loss.backward()
    if loop.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), loop.cfg.grad_clip)
    loop.opt.step()
    loop.sched.step()


def _end_epoch(
    loop: _Loop,
    state: _RunState,
    epoch: int,
    record: dict[str, Any],
    paths: tuple[Path, Path],
    log: Callable[[str], None],
    on_epoch: Callable[[int, PrunedDetector, dict[str, Any]], None] | None,
) -> None:
    """Rank 0 after an epoch: evaluate, record, save ``last.pt`` (and ``best.pt`` when it improved), log."""
    cfg, model = loop.cfg, loop.model
    best_path, last_path = paths
    result = evaluate_model(model, loop.val_loader, cfg.fields, cfg.eval_score_thr)
    record["val"] = result.to_dict()
    record["map50"] = result.map50
    state.history.append(record)
    improved = (result.map50 or 0.0) > state.best_map
    state.best_map = max(state.best_map, result.map50 or 0.0)
    metrics = {
        "map50": result.map50,
        "best_map50": state.best_map,
        "val": record["val"],
        "train_seconds": record["seconds"],
    }
    tcfg = {**to_dict(cfg), "history": state.history}
    save_checkpoint(
        last_path,
        model,
        cfg.cass,
        epoch=epoch,
        metrics=metrics,
        train_config=tcfg,
        optimizer_state=loop.opt.state_dict(),
        scheduler_state=loop.sched.state_dict(),
    )
    if improved or not best_path.exists():
        save_checkpoint(best_path, model, cfg.cass, epoch=epoch, metrics=metrics, train_config=tcfg)
    log(
        f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f} (det {record['det']:.4f}, "
        f"cass {record['cass']:.4f} x{record['cass_weight']:g}) val mAP@0.5 {result.map50:.3f} "
        f"[{record['seconds']:.0f}s]"
    )
    if on_epoch is not None:
        on_epoch(epoch, model, record)


def _progress(enabled: bool) -> Progress:
    """The training progress bar (transient); a disabled one shows nothing."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )
