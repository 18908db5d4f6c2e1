"""``cass-deploy export``: checkpoint → ONNX (predictor or full) → optional TensorRT engine."""

from __future__ import annotations

import argparse

from cass_deploy.commands.common import add_verify_hash
from cass_deploy.export.dispatch import export_from_settings
from cass_deploy.export.settings import add_export_arguments, settings_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_export_arguments(p)
    add_verify_hash(p)  # building an engine from an export directory reads its ONNX


def run(args: argparse.Namespace) -> int:
    export_from_settings(settings_from_args(args))
    return 0
