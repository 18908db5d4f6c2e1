"""``cass-deploy report``: one self-contained HTML (+ JSON) from a run directory."""

from __future__ import annotations

import argparse

from cass_deploy.reporting.report import build_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="directory the other commands wrote into")
    p.add_argument("--out", default=None, help="HTML path (default RUN_DIR/report.html; JSON beside it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")


def run(args: argparse.Namespace) -> int:

    html_path, json_path = build_report(args.run_dir, args.out, force=args.force)
    print(f"wrote {html_path} and {json_path}")
    return 0
