"""What every benchmark script shares: the repository on ``sys.path`` and the common arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/NAME.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))


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
