"""The one way cass-deploy writes an output (:class:`Output`), hashing, and the cells of the tables
printed by the commands and rendered by the report.

Every file or directory a command writes goes through :class:`Output`, so these rules hold by
construction for every command (new ones included):

* **checked up front** (:meth:`Output.check`, before any work): an existing target is refused
  without ``--force``; a path under a plain file, an unwritable directory (a temp file is probed
  beside the target), a directory where a file is asked for, and a target that would replace the
  working directory, the home directory or one of the command's inputs are clear
  :class:`~cass_deploy.errors.InputError` s (exit 2), before anything is created;
* **written to a temp sibling and renamed** (:meth:`Output.writing`): ``.NAME.<pid>-<random>.tmp``
  beside the target, renamed over it only when the body finished; on any error, Ctrl-C or
  SIGTERM the temp sibling and the parent directories it created are removed, so the target is
  byte-identical to before (or still absent). Every ``OSError`` while writing becomes an
  InputError naming the target and the reason (disk full, permission, read-only file system);
* **nothing lost, nothing left**: a directory (or, with ``--force``, a plain file) is replaced
  by moving it to ``.NAME.<pid>-old.tmp``, renaming the new one into place and removing the old
  copy; an interruption between the two renames moves it back;
* **stale temp siblings are cleaned**: a run killed with SIGKILL leaves its ``.NAME.<pid>-*.tmp``;
  the next :meth:`Output.check` of the same target removes the ones whose process is gone (and
  puts back an ``-old`` copy whose target is missing). Temp siblings of live processes, other
  names and other files are never touched.

Usage (a command)::

    out = Output(args.out, force=args.force, kind="dir", flag="--out", inputs=[args.checkpoint]).check()
    ...  # the work: nothing is on disk yet
    with out.writing() as tmp:  # a temp directory (kind="file": a temp file path) beside args.out
        write_json(tmp / "profile.json", record)
    # here args.out holds exactly what was written into tmp

:func:`write_json`, :func:`atomic_path`, :func:`atomic_dir` and :func:`check_writable` are the same
helper with shorter names (kept for the library code that used them).

Hash checks on read: :func:`hash_checks_enabled` / :func:`hash_checks` (the ``--no-verify-hash``
switch, set once by the CLI for the whole command) and :func:`warn` (one ``warning:`` line on
stderr) serve ``runtime.manifest``'s verification; see ``runtime/artefacts.py``.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cass_deploy.errors import InputError

#: what an output is: a ``file`` (JSON, HTML, checkpoint), a ``dir`` (export, run, profile), or
#: ``any`` (only the up-front checks: a library writes into it in place, e.g. a training run)
KINDS = ("file", "dir", "any")
_OLD = "old"  # a replaced target's copy, removed once the new one is in place
_PREV = "prev"  # the previous target during Output.in_place: put back unless the run finished


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(exc: OSError) -> str:
    """``Permission denied``, ``No space left on device``, ...: the OS's reason, without the traceback."""
    return exc.strerror or errno.errorcode.get(exc.errno or 0) or str(exc) or type(exc).__name__


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers cannot be in use: nothing of ours is writing yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file, link or directory tree (errors propagate: nothing is silently left)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _missing_parents(parent: Path) -> list[Path]:
    """The ancestors of ``parent`` (itself included) that do not exist yet, outermost first;
    InputError when an existing ancestor is not a directory."""
    missing = []
    p = parent
    while not p.exists():
        if p.is_symlink():
            raise InputError(f"{p} is a broken symbolic link")
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise InputError(f"{p} is a file, not a directory")
    return missing[::-1]


class Output:
    """One output of a command: checked up front (:meth:`check`), written atomically (:meth:`writing`).

    ``kind``: ``file`` or ``dir`` (what :meth:`writing` yields a temp of) or ``any`` (checks only).
    ``flag`` names the option in messages (``--out``, ``--json``). ``inputs``: paths the command
    reads; a target that is one of them or holds one is refused (``--out`` over the checkpoint's
    folder). ``replace_dir``: allow a ``file`` output to replace a directory (never by default).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        force: bool = False,
        kind: str = "file",
        flag: str | None = None,
        inputs: Iterable[str | Path | None] = (),
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        text = str(path)
        if not text.strip():
            raise InputError(f"{flag or 'the output path'} is empty")
        self.path = Path(path)
        self.force = bool(force)
        self.kind = kind
        self.flag = flag
        self.inputs = [Path(p) for p in inputs if p is not None]

    # -- naming ----------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """``--out runs/x`` (or the bare path), as messages name the target."""
        return f"{self.flag} {self.path}" if self.flag else str(self.path)

    def _error(self, why: str) -> InputError:
        return InputError(f"cannot write {self.label}: {why}")

    def _tmp_prefix(self) -> str:
        return f".{self.path.name}.{os.getpid()}-"

    def _stale_pattern(self) -> re.Pattern[str]:
        # ours: .NAME.<pid>-<random>.tmp and .NAME.<pid>-old.tmp; an older cass-deploy's:
        # .NAME.<random>.tmp (mkstemp: no '-') and .NAME.old
        name = re.escape(self.path.name)
        return re.compile(rf"^\.{name}\.(?:(?:(\d+)-)?([A-Za-z0-9_]+)\.tmp|(old))$")

    # -- up front --------------------------------------------------------------------------------
    def check(self) -> Output:
        """Refuse, before any work, what :meth:`writing` could not do; create nothing. Returns self."""
        path = self.path
        if path.name in ("", ".", "..") or path.resolve() == Path(path.anchor or "/").resolve():
            raise self._error("give a file or directory name, not the current or root directory")
        target = path.resolve()
        for protected, what in ((Path.cwd(), "the current directory"), (Path.home(), "your home directory")):
            if target == protected.resolve() or target in protected.resolve().parents:
                raise self._error(f"it is {what} (or holds it); choose a new path")
        for src in self.inputs:
            src_r = src.resolve()
            if src_r == target or target in src_r.parents:
                raise self._error(f"it would replace the input {src}; choose another path")
        try:
            missing = _missing_parents(path.parent)
        except InputError as exc:
            raise self._error(str(exc)) from None
        if not missing:
            self.clean_stale()  # first: a killed run's moved-aside target is back before we look at it
        if path.exists() or path.is_symlink():
            if not self.force:
                raise InputError(f"{path} already exists; pass --force to overwrite it")
            if self.kind == "file" and path.is_dir() and not path.is_symlink():
                raise self._error("it is a directory; give a file path (a directory is never replaced by a file)")
        self._probe(missing)
        return self

    def _probe(self, missing: list[Path]) -> None:
        """Create the missing parents and a temp file beside the target, then remove both."""
        made: list[Path] = []
        try:
            for d in missing:
                d.mkdir()
                made.append(d)
            fd, probe = tempfile.mkstemp(prefix=self._tmp_prefix(), suffix=".tmp", dir=self.path.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise self._error(_reason(exc)) from None
        finally:
            _remove_empty(made)

    def clean_stale(self) -> list[Path]:
        """Remove the temp siblings that a killed run of this target left (their process is gone);
        put back an ``-old`` copy whose target is missing. Returns what was removed or restored."""
        parent = self.path.parent
        if not parent.is_dir():
            return []
        pattern = self._stale_pattern()
        done = []
        try:
            entries = sorted(parent.iterdir())
        except OSError:
            return []
        for entry in entries:
            m = pattern.match(entry.name)
            if m is None:
                continue
            pid, tag, legacy_old = m.groups()
            if pid is not None and _pid_alive(int(pid)):
                continue  # a live run's
            is_old = legacy_old is not None or (pid is not None and tag == _OLD)
            target_there = self.path.exists() or self.path.is_symlink()
            try:
                if pid is not None and tag == _PREV:  # an in_place run died before it finished
                    if target_there:
                        _remove(self.path)
                    os.replace(entry, self.path)
                elif is_old and not target_there:
                    os.replace(entry, self.path)  # the run died between its two renames: restore
                else:
                    _remove(entry)
            except OSError as exc:
                raise self._error(f"cannot remove the stale temp {entry}: {_reason(exc)}") from None
            done.append(entry)
        return done

    # -- writing ---------------------------------------------------------------------------------
    def _open_parent(self, made: list[Path]) -> None:
        """Before writing: create the missing parents (appended to ``made``, for the cleanup), clean
        stale siblings, refuse an existing target without ``force`` (one that appeared since the check)."""
        try:
            missing = _missing_parents(self.path.parent)
        except InputError as exc:
            raise self._error(str(exc)) from None
        for d in missing:
            d.mkdir()
            made.append(d)
        self.clean_stale()
        if (self.path.exists() or self.path.is_symlink()) and not self.force:
            raise InputError(f"{self.path} already exists; pass --force to overwrite it")

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """Yield a temp file path (``kind="file"``) or a temp directory (``"dir"``) beside the target;
        when the body returns it replaces the target, on any exception (Ctrl-C included) it is
        removed with the parents this created, and an ``OSError`` becomes an InputError."""
        if self.kind == "any":
            raise ValueError("an Output of kind 'any' is only checked; the library writes it in place")
        path = self.path
        made: list[Path] = []
        tmp: Path | None = None
        try:
            self._open_parent(made)
            mask = _umask()
            if self.kind == "dir":
                tmp = Path(tempfile.mkdtemp(prefix=self._tmp_prefix(), suffix=".tmp", dir=path.parent))
                os.chmod(tmp, 0o777 & ~mask)
            else:
                fd, name = tempfile.mkstemp(prefix=self._tmp_prefix(), suffix=".tmp", dir=path.parent)
                os.close(fd)
                tmp = Path(name)
                os.chmod(tmp, 0o666 & ~mask)
            yield tmp
            self._commit(tmp)
            tmp = None
        except BaseException as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    _remove(tmp)
            with contextlib.suppress(OSError):
                _remove_empty(made)
            if isinstance(exc, OSError):
                where = f" ({exc.filename})" if exc.filename and Path(str(exc.filename)).name != path.name else ""
                raise self._error(f"{_reason(exc)}{where}; nothing was written") from exc
            raise

    def _commit(self, tmp: Path) -> None:
        path = self.path
        if path.exists() and not self.force:  # appeared while we worked
            raise InputError(f"{path} already exists; pass --force to overwrite it")
        exists = path.exists() or path.is_symlink()
        if not exists or (self.kind == "file" and not path.is_dir()):
            os.replace(tmp, path)  # atomic: a file over a file (or a link), anything into a free name
            return
        if self.kind == "file" and path.is_dir() and not path.is_symlink():
            raise self._error("it is a directory; give a file path (a directory is never replaced by a file)")
        backup = path.with_name(f"{self._tmp_prefix()}{_OLD}.tmp")
        os.replace(path, backup)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(backup, path)
            raise
        try:
            _remove(backup)
        except OSError as exc:
            warn(f"wrote {path}, but could not remove its previous copy {backup}: {_reason(exc)}")

    @contextlib.contextmanager
    def in_place(self) -> Iterator[Path]:
        """For a directory that a library fills step by step at its final path (the demo's run
        directory, whose files record their own paths): yields the target itself. An existing one
        (``--force``) is moved aside first (``.NAME.<pid>-prev.tmp``) and removed only when the body
        returns; on an error or interrupt what the body wrote is removed and the old one put back."""
        path = self.path
        made: list[Path] = []
        backup: Path | None = None
        try:
            self._open_parent(made)
            if path.exists() or path.is_symlink():
                backup = path.with_name(f"{self._tmp_prefix()}{_PREV}.tmp")
                os.replace(path, backup)
            yield path
        except BaseException as exc:
            with contextlib.suppress(OSError):
                _remove(path)
                if backup is not None:
                    os.replace(backup, path)
                _remove_empty(made)
            if isinstance(exc, OSError):
                raise self._error(f"{_reason(exc)} ({exc.filename or path})") from exc
            raise
        if backup is not None:
            committed = backup.with_name(f"{self._tmp_prefix()}{_OLD}.tmp")
            os.replace(backup, committed)  # from here a kill leaves a removable "-old", not a "-prev" to restore
            try:
                _remove(committed)
            except OSError as exc:
                warn(f"wrote {path}, but could not remove its previous copy {committed}: {_reason(exc)}")


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories in ``dirs`` (created by us, outermost first) that are still empty."""
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


def check_writable(path: str | Path, force: bool, *, kind: str = "any", flag: str | None = None) -> Path:
    """:meth:`Output.check` of ``path`` (refuse an existing one without ``force``); returns the path."""
    return Output(path, force=force, kind=kind, flag=flag).check().path


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = False) -> Iterator[Path]:
    """``Output(path, force=force).writing()``: a temp file beside ``path``, renamed into place on success."""
    with Output(path, force=force, kind="file").writing() as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """``Output(path, force=force, kind="dir").writing()``: a temp directory that replaces ``path`` whole."""
    with Output(path, force=force, kind="dir").writing() as tmp:
        yield tmp


def write_json(path: str | Path, data: Any, force: bool = False) -> Path:
    """Write ``data`` as indented JSON atomically (through :class:`Output`)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"  # fails before any write
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def warn(message: str) -> None:
    """One ``cass-deploy: warning: ...`` line on stderr."""
    print(f"cass-deploy: warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- hashes

_VERIFY_HASHES: contextvars.ContextVar[bool] = contextvars.ContextVar("cass_deploy_verify_hashes", default=True)


def hash_checks_enabled() -> bool:
    """False inside :func:`hash_checks` ``(False)`` (``--no-verify-hash``); True otherwise."""
    return _VERIFY_HASHES.get()


@contextlib.contextmanager
def hash_checks(enabled: bool) -> Iterator[None]:
    """Within the block, readers verify artefact hashes (``True``, the default) or only warn on a
    mismatch (``False``: ``--no-verify-hash``, for an artefact edited on purpose)."""
    token = _VERIFY_HASHES.set(bool(enabled))
    try:
        yield
    finally:
        _VERIFY_HASHES.reset(token)


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
