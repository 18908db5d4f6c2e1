"""The ``cass-deploy`` command line: parse, call one function, map errors to exit codes.

Each subcommand lives in ``cass_deploy/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; its one-line help is in :data:`COMMANDS`.
Only the chosen command's module is imported (it imports the library it needs at its top), so
``cass-deploy --help`` starts fast and ``cass-deploy env`` never pays for torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence

from cass_deploy import __version__
from cass_deploy.errors import CassDeployError, interrupt_in
from cass_deploy.io_utils import hash_checks, warn

#: set to 1 to see the traceback of an unexpected error (a bug) instead of its one-line summary
DEBUG_ENV = "CASS_DEPLOY_DEBUG"

#: subcommand -> one-line help, in the order ``--help`` lists them
COMMANDS: dict[str, str] = {
    "demo": "end-to-end demo on CPU: train, diagnose, export fp32+int8, verify, profile, validate, report",
    "train": "train the pruning-aware detector with CASS (config file + --set overrides; torchrun for DDP)",
    "diagnose": "CASS bias diagnostics: heat maps and loss/gradient share per band, field, size and object",
    "ablate": "bias ablation: dense vs CASS variants trained at each keep ratio, recall by field with intervals",
    "check": "first command on a new model or ONNX: protocol, trace, per target every node it cannot take or restricts",
    "export": "export a checkpoint to ONNX (fp32/fp16/int8) and optionally a TensorRT engine, with a manifest",
    "verify": "compare a reference checkpoint with exported ONNX / TensorRT candidates (tie-aware keep sets)",
    "profile": "latency mean/p50/p90/p95/p99/max and throughput; dense vs pruned; keep-ratio sweep; Jetson power",
    "validate": "recall@IoU0.5 and pruner retention by field (near/mid/far) vs a reference, with release gates",
    "tune": "fastest keep ratio x precision on a backend passing every gate -> a deployment profile YAML",
    "report": "collect heat maps, fidelity, latency and recall-by-field into one self-contained HTML + JSON",
    "accept": "on the target: build the engine if absent, check it against the saved reference outputs, profile, "
    "validate with the gates; one report, one verdict",
    "env": "show versions of torch / ONNX / ONNX Runtime / TensorRT / CUDA, GPUs, Jetson board and usable backends",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``command``'s module is imported and its arguments added (the others stay unloaded)."""
    parser = argparse.ArgumentParser(
        prog="cass-deploy",
        description="Train, export, verify, profile and validate CASS token-pruning detectors.",
    )
    parser.add_argument("--version", action="version", version=f"cass-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"cass_deploy.commands.{name}")
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    name = f"cass-deploy {args.command}"
    verify = not getattr(args, "no_verify_hash", False)
    try:
        with _sigterm_interrupts(), hash_checks(verify):
            if not verify:
                warn("--no-verify-hash: artefacts are used even when they do not match their manifest's SHA-256")
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except CassDeployError as exc:
        if interrupt_in(exc):  # Ctrl-C wrapped by a library (e.g. the ONNX exporter)
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a file the command reads or writes outside the library's own checks
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{name}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:
        if interrupt_in(exc):
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        if os.environ.get(DEBUG_ENV):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(
            f"{name}: internal error (a bug in cass-deploy, please report it): {type(exc).__name__}: {first} "
            f"(set {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a CI timeout) interrupts like Ctrl-C, so every temp output is cleaned up."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
