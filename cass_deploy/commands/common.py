"""Arguments several subcommands share, each defined once (its help text is the command's own)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from cass_deploy.backends.probe import lazy_import
from cass_deploy.config import FieldConfig

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


def add_gate_arguments(p: argparse.ArgumentParser, *, max_recall_drop: float | None, drop_help: str) -> None:
    """The recall gates and how they are decided (SPEC §7a): ``--min-near-recall``,
    ``--max-recall-drop``, ``--min-near-retention``, ``--gate-on``, ``--allow-inconclusive``,
    ``--confidence``, ``--resamples``; :func:`gates_from_args` reads them back."""
    p.add_argument("--min-near-recall", type=float, default=None, help="gate: near-field recall, on the lower bound")
    p.add_argument("--max-recall-drop", type=float, default=max_recall_drop, help=drop_help)
    p.add_argument("--min-near-retention", type=float, default=None)
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
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the intervals (default 0.95)")
    p.add_argument(
        "--resamples", type=int, default=2000, help="paired bootstrap resamples for recall drops (default 2000)"
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
