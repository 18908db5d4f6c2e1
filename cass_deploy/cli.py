"""The ``cass-deploy`` command line: parse, call one function, map errors to exit codes.

Each subcommand lives in ``cass_deploy/commands/<name>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import nothing heavy at
module level, so ``cass-deploy --help`` and ``cass-deploy env`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from cass_deploy import __version__
from cass_deploy.errors import CassDeployError

COMMANDS = ("demo", "train", "diagnose", "ablate", "export", "verify", "profile", "validate", "report", "env")


def _command_modules():
    for name in COMMANDS:
        try:
            yield name, importlib.import_module(f"cass_deploy.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cass_deploy.commands.{name}":
                raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cass-deploy",
        description="Train, export, verify, profile and validate CASS token-pruning detectors.",
    )
    parser.add_argument("--version", action="version", version=f"cass-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CassDeployError as exc:
        print(f"cass-deploy {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"cass-deploy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
