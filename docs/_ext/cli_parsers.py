"""Zero-argument parser factories for sphinx-argparse, one per ``cass-deploy`` subcommand.

``sphinx-argparse`` calls ``:func:`` with no arguments; each name below is
``cass_deploy.cli.build_parser`` bound to its command, so the reference pages are generated from
the very parsers the command line uses (``:path: NAME`` then picks the subcommand).
"""

from __future__ import annotations

import functools

from cass_deploy.cli import COMMANDS, build_parser

for _name in COMMANDS:
    globals()[_name] = functools.partial(build_parser, _name)
