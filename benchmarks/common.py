"""What every benchmark script shares: the repository on ``sys.path`` and the common arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/NAME.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))

from cass_deploy.errors import CassDeployError  # noqa: E402 (needs the repository on sys.path)


def bench_parser(doc: str | None, *, threads: int | None, json: Path | None) -> argparse.ArgumentParser:
    """A parser with ``--device``, ``--threads`` and ``--json`` (the defaults each script chooses)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="torch threads" + (" (default: torch's choice)" if threads is None else f" (default {threads})"),
    )
    ap.add_argument("--json", type=Path, default=json, help="write the figures as JSON here")
    return ap


def run_main(main) -> None:
    """``raise SystemExit(main())`` with a user's mistake (a bad ``--set``, a missing checkpoint)
    as one ``error: ...`` line and the error's own exit code (2 for input errors, as the CLI's),
    not a traceback."""
    try:
        code = main()
    except CassDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    raise SystemExit(code)
