"""One error hierarchy; the CLI maps each class to a message and an exit code.

Exit codes: 0 success, 1 a failed gate or failed operation, 2 bad usage or input, 130 interrupted
(Ctrl-C or SIGTERM).
"""

from __future__ import annotations


class CassDeployError(Exception):
    """Base class. ``exit_code`` is what the CLI returns when this escapes a command."""

    exit_code = 2


class ConfigError(CassDeployError, ValueError):
    """A configuration value or override is unknown or out of range."""


class InputError(CassDeployError, ValueError):
    """User-supplied data (boxes, files, tensors, paths) is invalid."""


class HashMismatch(InputError):
    """An artefact's SHA-256 differs from the one its manifest records (``--no-verify-hash`` overrides)."""


class CheckpointError(InputError):
    """A checkpoint is missing, truncated, corrupt or incompatible."""


class BackendUnavailable(CassDeployError):
    """An optional backend (TensorRT, pycuda, CUDA, jetson-stats) is not installed or usable."""


class LimitError(InputError):
    """A request exceeds a documented backend limit (e.g. TensorRT TopK k > 3840)."""


class ExportError(CassDeployError):
    """Export or engine build failed for a reason other than bad input."""

    exit_code = 1


class TrainingError(CassDeployError):
    """Training failed (diverged); the message says how to recover."""

    exit_code = 1


class SweepFailed(CassDeployError):
    """Units of a sweep (``ablate``, ``tune``) still failed after their retries; the results of the
    others are written (``--resume`` runs the failed ones again)."""

    exit_code = 1


class GateFailed(CassDeployError):
    """A verification or validation gate failed; the message names the failing numbers."""

    exit_code = 1


def interrupt_in(exc: BaseException) -> bool:
    """True when ``exc`` is, or was raised while handling, a KeyboardInterrupt (a library such as the
    torch exporter may wrap Ctrl-C into its own error): the CLI then reports "interrupted", exit 130."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]
    return False
