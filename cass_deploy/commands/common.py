"""Arguments several subcommands share, each defined once (its help text is the command's own).

Also the argparse value types that make an out-of-range number a usage error (exit 2, naming the
flag and the value) instead of a failed gate or a traceback later: :func:`unit_interval`,
:func:`positive_int`, :func:`non_negative_int`, :func:`non_negative_float`; and
:func:`add_verify_hash` (``--no-verify-hash``; the CLI applies it to the whole command).
Outputs are written through :class:`cass_deploy.io_utils.Output` (see there).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from cass_deploy.backends.probe import lazy_import
from cass_deploy.config import FieldConfig
from cass_deploy.errors import InputError

# torch is imported only when a --model is loaded (commands stay importable without it)
adapter = lazy_import("cass_deploy.model.adapter")

# the sweep options check their values (no Ray import: that happens only when a sweep runs on Ray)
_sweeps = lazy_import("cass_deploy.sweeps.executor")

# the gates import torch (through the results they check): only commands that take gates load them
_gates = lazy_import("cass_deploy.evaluation.gates")

#: ``--fields``' default: FieldConfig's split ``(far_max, near_min)``
DEFAULT_FIELDS = (FieldConfig().far_max, FieldConfig().near_min)


def add_config(p: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """``--config PATH``: a YAML/JSON training config."""
    p.add_argument("--config", default=default, help=help)


def add_overrides(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--set KEY=VALUE`` (repeatable), parsed to ``args.overrides``, a list of strings."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_training_config(
    p: argparse.ArgumentParser, help: str, *, default: str | None = None, overrides_help: str | None = None
) -> None:
    """A training config and its overrides: ``--config PATH`` and ``--set KEY=VALUE`` (repeatable)."""
    add_config(p, help, default=default)
    add_overrides(p, overrides_help)


def add_out(p: argparse.ArgumentParser, default: str | None = None, help: str | None = None) -> None:
    """``--out PATH``: where the command writes."""
    p.add_argument("--out", default=default, help=help)


def add_force(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--force``: overwrite what ``--out`` (or ``--json``) names."""
    p.add_argument("--force", action="store_true", help=help)


def add_fields(p: argparse.ArgumentParser, help: str) -> None:
    """``--fields FAR_MAX NEAR_MIN``: the far/mid/near split as fractions of the image height."""
    p.add_argument("--fields", type=float, nargs=2, metavar=("FAR_MAX", "NEAR_MIN"), default=DEFAULT_FIELDS, help=help)


def add_seed(p: argparse.ArgumentParser) -> None:
    """``--seed N`` (default 0): the seed of the generated or sampled images."""
    p.add_argument("--seed", type=int, default=0)


def add_data(p: argparse.ArgumentParser, help: str, default: str = "synthetic") -> None:
    """``--data SOURCE`` (default ``synthetic``): where the images come from, generated or a dataset directory."""
    p.add_argument("--data", default=default, help=help)


def add_providers(p: argparse.ArgumentParser, help: str) -> None:
    """``--providers LIST`` (default ``cpu``): ONNX Runtime providers, a comma list of short names."""
    p.add_argument("--providers", default="cpu", help=help)


def add_device(p: argparse.ArgumentParser, help: str) -> None:
    """``--device DEVICE`` (default ``cpu``): the torch (or ONNX Runtime) device."""
    p.add_argument("--device", default="cpu", help=help)


def options_from(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """The dataclass ``cls`` with each field that ``args`` has a value for taken from it; ``given`` wins.

    Fields without a parsed argument of the same name keep their defaults.
    """
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **given})


def add_verify_hash(p: argparse.ArgumentParser) -> None:
    """``--no-verify-hash``: use artefacts whose SHA-256 differs from their manifest's (a warning, not
    an error). The CLI reads ``args.no_verify_hash`` and sets ``io_utils.hash_checks`` for the command."""
    p.add_argument(
        "--no-verify-hash",
        action="store_true",
        help="use an artefact even when its SHA-256 differs from its manifest's (edited on purpose); warns",
    )


def _number(kind: type, test: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = wanted  # argparse names the type in its messages
    return parse


#: a number in [0, 1] (recall, IoU, retention, a score threshold, a keep-set IoU)
unit_interval = _number(float, lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1")
#: a keep ratio: in (0, 1]
keep_ratio = _number(float, lambda v: 0.0 < v <= 1.0, "a keep ratio in (0, 1]")


def keep_ratio_list(text: str) -> tuple[float, ...]:
    """``--sweep 0.25,0.5,0.75`` -> keep ratios, each in (0, 1]."""
    try:
        return tuple(keep_ratio(x) for x in text.split(",") if x.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a comma list of keep ratios, e.g. 0.25,0.5,0.75; got {text!r}"
        ) from None


keep_ratio_list.__name__ = "a comma list of keep ratios"
#: an integer >= 1 (images, iterations, batch, threads)
positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
#: an integer >= 0 (warm-up iterations)
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
#: a finite number >= 0 (tolerances, error bounds)
non_negative_float = _number(float, lambda v: v >= 0.0, "a number >= 0")
#: a finite number > 0 (CPUs per unit)
positive_float = _number(float, lambda v: v > 0.0, "a number > 0")
#: a confidence level: in (0, 1)
confidence = _number(float, lambda v: 0.0 < v < 1.0, "a confidence in (0, 1)")
#: a score strictly between 0 and 1 (a teacher's score threshold)
open_unit = _number(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")


def add_model_source(p: argparse.ArgumentParser) -> None:
    """``--model SPEC --weights FILE [--model-args FILE|JSON]``: your own PrunableModel instead of a
    checkpoint (SPEC 6a)."""
    p.add_argument(
        "--model",
        dest="model_spec",  # validate's and profile's positional is called model
        metavar="SPEC",
        default=None,
        help="your own model: package.module:factory or path/to/file.py:factory returning a PrunableModel",
    )
    p.add_argument("--weights", metavar="FILE", default=None, help="--model's state dict (.pt or .safetensors)")
    p.add_argument(
        "--model-args", metavar="FILE|JSON", default=None, help="the factory's keyword arguments (JSON / YAML)"
    )


def model_source(args: argparse.Namespace, checkpoint: str | None = None) -> Any:
    """The ``ModelSource`` of ``--model`` (None without it); ``checkpoint`` given too is an error."""
    spec = args.model_spec
    if spec is None:
        if args.weights is not None or args.model_args is not None:
            raise InputError("--weights and --model-args go with --model SPEC")
        return None
    if checkpoint is not None:
        raise InputError(f"give a checkpoint / model path ({checkpoint}) or --model {spec}, not both")
    return adapter.source_from(None, spec, args.weights, args.model_args)


def add_sweep(p: argparse.ArgumentParser, unit: str) -> None:
    """Where a sweep's units run (SPEC §7d): ``--jobs``, ``--address``, ``--cpus-per-run``,
    ``--gpus-per-run``, ``--retries``; :func:`sweep_from` reads them back."""
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help=f"{unit}s at a time (default: as many as the CPUs hold, on a local Ray or the --address cluster; "
        "1 without --address: one after the other in this process, no Ray)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run on: host:6379, ray://host:10001 or auto (default: RAY_ADDRESS, else a local Ray)",
    )
    p.add_argument(
        "--cpus-per-run",
        type=positive_float,
        default=None,
        help=f"CPUs (and threads) per {unit} (default: the config's threads split between the {unit}s at once)",
    )
    p.add_argument("--gpus-per-run", type=non_negative_float, default=0.0, help=f"GPUs per {unit} (Ray; default 0)")
    p.add_argument(
        "--retries",
        type=non_negative_int,
        default=2,
        help=f"tries again a {unit} that raised or whose worker died, this many times, then reports it (default 2)",
    )


def sweep_from(args: argparse.Namespace) -> Any:
    """``sweeps.executor.SweepOptions`` from :func:`add_sweep`'s values (same names)."""
    return options_from(_sweeps.SweepOptions, args)


def add_int_pair(p: argparse.ArgumentParser, flag: str, metavar: tuple[str, str], help: str) -> None:
    """``FLAG A B``: two integers (a size, a grid), parsed to a list; ``None`` when not given."""
    p.add_argument(flag, type=int, nargs=2, metavar=metavar, default=None, help=help)


def add_grid(p: argparse.ArgumentParser) -> None:
    """``--grid HP WP``: the patch grid of an ONNX file without cass-deploy metadata."""
    add_int_pair(
        p,
        "--grid",
        ("HP", "WP"),
        "patch grid of keep_mask for an ONNX exported elsewhere (when its metadata has no 'grid')",
    )


def add_resize(p: argparse.ArgumentParser) -> None:
    """``--resize [letterbox|stretch]`` (SPEC 6b: never a quiet change of image size)."""
    p.add_argument(
        "--resize",
        nargs="?",
        const="letterbox",
        default=None,
        choices=("letterbox", "stretch"),
        help="fit dataset images to the model input: letterbox (the default of a bare --resize: aspect kept, "
        "padded; padding is never scored) or stretch; detections are mapped back to the original image. "
        "Without it a size mismatch is an error",
    )


def add_class_map(p: argparse.ArgumentParser) -> None:
    """``--class-map``: model class names -> dataset classes (car, truck, bus, pedestrian)."""
    p.add_argument(
        "--class-map",
        default=None,
        metavar="MAP",
        help="score model classes under dataset classes: NAME=CLASS pairs (vehicle=car,lorry=truck), a JSON "
        "object or a JSON / YAML file; CLASS none leaves one unscored. Unmapped classes no dataset has are noted",
    )


def add_stopping_rule(p: argparse.ArgumentParser, prefix: str, *, until_ci: float, max_time: float) -> None:
    """``--{prefix}until-ci`` (a fraction in [0, 1); 0: exactly the rounds asked) and
    ``--{prefix}max-time`` (seconds > 0): the latency stopping rule of
    :func:`cass_deploy.profiling.interleave.time_until_resolved`, for ``profile`` and ``demo``."""
    p.add_argument(
        f"--{prefix}until-ci",
        type=float,  # checked by the options it lands in (profiling.latency.check_stopping_rule)
        default=until_ci,
        help="stopping rule: after the rounds asked, keep timing until every speed-up's 95%% interval is "
        "within +-this fraction of it (e.g. 0.05), or the time cap passes (said when it does); "
        f"0: exactly the rounds asked (default {until_ci:g})",
    )
    p.add_argument(
        f"--{prefix}max-time",
        type=float,
        default=max_time,
        help=f"time cap of the stopping rule, seconds (default {max_time:g})",
    )


def add_gate_arguments(p: argparse.ArgumentParser, *, max_recall_drop: float | None, drop_help: str) -> None:
    """The recall gates and how they are decided (SPEC §7a): ``--min-near-recall``,
    ``--max-recall-drop``, ``--min-near-retention``, ``--gate-on``, ``--allow-inconclusive``,
    ``--confidence``, ``--resamples``; :func:`gates_from_args` reads them back."""
    p.add_argument(
        "--min-near-recall", type=unit_interval, default=None, help="gate: near-field recall, on the lower bound"
    )
    p.add_argument("--max-recall-drop", type=unit_interval, default=max_recall_drop, help=drop_help)
    p.add_argument("--min-near-retention", type=unit_interval, default=None)
    p.add_argument(
        "--gate-on",
        choices=("bound", "point"),
        default="bound",
        help="bound (default): recall gates decide on the 95%% interval's bound (drop: upper bound <= "
        "the allowed drop; near recall: lower bound >= the minimum); point: on the point estimates",
    )
    p.add_argument(
        "--allow-inconclusive",
        action="store_true",
        help="pass a gate the set is too small to decide (reported as inconclusive; default: exit 1)",
    )
    p.add_argument("--confidence", type=confidence, default=0.95, help="confidence of the intervals (default 0.95)")
    p.add_argument(
        "--resamples",
        type=positive_int,
        default=2000,
        help="paired bootstrap resamples for recall drops (default 2000)",
    )


def gates_from_args(args: argparse.Namespace, **extra: Any) -> Any:
    """``evaluation.gates.Gates`` from :func:`add_gate_arguments`' values (and ``--seed``)."""
    return _gates.Gates(
        min_near_recall=args.min_near_recall,
        max_recall_drop=args.max_recall_drop,
        min_near_retention=args.min_near_retention,
        gate_on=args.gate_on,
        allow_inconclusive=args.allow_inconclusive,
        confidence=args.confidence,
        resamples=args.resamples,
        seed=args.seed,
        **extra,
    )
