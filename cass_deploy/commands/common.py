"""Arguments several subcommands share, each defined once (its help text is the command's own)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from cass_deploy.config import FieldConfig

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
