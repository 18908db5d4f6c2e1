"""``cass-deploy report``: one self-contained HTML (+ JSON) from a run directory."""

from __future__ import annotations

import argparse

from cass_deploy.commands.common import add_force, add_out
from cass_deploy.reporting.report import build_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="directory the other commands wrote into")
    add_out(p, help="HTML path (default RUN_DIR/report.html; JSON beside it)")
    add_force(p, "overwrite an existing report")


def run(args: argparse.Namespace) -> int:

    html_path, json_path = build_report(args.run_dir, args.out, force=args.force)
    print(f"wrote {html_path} and {json_path}")
    return 0
