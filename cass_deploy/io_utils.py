"""Safe artefact writing (never overwrite without ``force``, write to a temp file and rename) and
the cells of the tables printed by the commands and rendered by the report."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cass_deploy.errors import InputError


def check_writable(path: str | Path, force: bool) -> Path:
    """Refuse an existing ``path`` unless ``force``; name the flag in the message."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} already exists; pass --force to overwrite it")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it into place, on failure delete it."""
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` whole."""
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            backup = path.with_name(f".{path.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | Path, data: Any, force: bool = False) -> Path:
    """Write ``data`` as indented JSON atomically."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- table cells

# a latency summary (``LatencyStats.to_dict()``, ms) as the profile table and the report show it
LATENCY_CELLS = (("mean", 2), ("p50", 2), ("p90", 2), ("p95", 2), ("p99", 2), ("max", 2), ("throughput_fps", 1))


def cell(value: Any, digits: int = 3) -> str:
    """A table cell: ``-`` for None, a number with ``digits`` decimals, anything else as ``str``."""
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def latency_headers(mean: str, speed_up: str) -> list[str]:
    """Headers of :func:`latency_cells`, given the wording of the mean's and the speed-up's."""
    return [mean, "p50", "p90", "p95", "p99", "max", "fps", speed_up]


def latency_cells(ms: Mapping[str, Any], base_mean: float | None) -> list[str]:
    """Cells of one latency summary: :data:`LATENCY_CELLS`, then the speed-up ``base_mean / mean``
    (``-`` without a base)."""
    return [cell(ms[key], digits) for key, digits in LATENCY_CELLS] + [
        f"{base_mean / ms['mean']:.2f}x" if base_mean else "-"
    ]
