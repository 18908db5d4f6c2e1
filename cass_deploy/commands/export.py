"""``cass-deploy export``: checkpoint → ONNX (predictor or full) → optional TensorRT engine."""

from __future__ import annotations

import argparse

from cass_deploy.backends.probe import lazy_import
from cass_deploy.commands.common import add_verify_hash
from cass_deploy.errors import InputError
from cass_deploy.export.device_engine import engine_from_export
from cass_deploy.export.graph_facts import BUILD_SETTINGS
from cass_deploy.export.profiles import load_profile
from cass_deploy.export.settings import (
    add_export_arguments,
    apply_profile,
    request_from,
    settings_from_args,
    with_defaults,
)

# torch is imported only for a checkpoint: building an engine from an export directory on the device
# (the Jetson workflow) needs neither torch nor the checkpoint.
pipeline = lazy_import("cass_deploy.export.pipeline")

#: the settings that building an engine from an export directory takes
_ENGINE_SETTINGS = (*BUILD_SETTINGS, "force")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_export_arguments(p)
    add_verify_hash(p)  # building an engine from an export directory reads its ONNX


def run(args: argparse.Namespace) -> int:
    values = settings_from_args(args)
    batch, dynamic = values["batch"], values["dynamic_batch"]
    if batch is not None and dynamic is not None and batch not in (1, dynamic[1]):
        raise InputError(
            f"--batch {batch} and --dynamic-batch {' '.join(map(str, dynamic))} conflict: a dynamic export "
            "takes any batch in its range (give one of the two)"
        )
    src = values["checkpoint"]
    if src is not None and src.is_dir():
        if not values["engine"]:
            raise InputError(f"{src} is an export directory: add --engine to build its TensorRT engine here")
        engine_from_export(src, values["out"], **with_defaults({k: values[k] for k in _ENGINE_SETTINGS}))
        return 0
    profile = load_profile(values["profile"]) if values["profile"] else None
    pipeline.run_export(request_from(**apply_profile(values, profile)))
    return 0
