"""What ``cass-deploy export``'s settings ask for, decided in one place (no torch imported here).

A checkpoint or ``--model`` goes through the export pipeline (which imports torch when it runs);
an export directory has its TensorRT engine built on this device (:func:`engine_from_export`: the
Jetson workflow, no torch or checkpoint). ``--batch`` and ``--dynamic-batch`` that contradict each
other are refused before either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import InputError
from cass_deploy.export.device_engine import engine_from_export
from cass_deploy.export.graph_facts import BUILD_SETTINGS
from cass_deploy.export.profiles import load_profile
from cass_deploy.export.settings import apply_profile, request_from, with_defaults

# torch is imported only for a checkpoint: building an engine from an export directory on the device
# (the Jetson workflow) needs neither torch nor the checkpoint.
pipeline = lazy_import("cass_deploy.export.pipeline")

#: the settings that building an engine from an export directory takes
ENGINE_SETTINGS = (*BUILD_SETTINGS, "force")


def export_from_settings(values: Mapping[str, Any], log: Callable[[str], None] = print) -> Any:
    """Run the export ``values`` (``export.settings.settings_from_args``; ``None``: not given) ask for
    -> the export's ``ExportResult``, or the engine's ``Manifest`` for an export directory."""
    check_batch_range(values["batch"], values["dynamic_batch"])
    src = values["checkpoint"]
    if src is not None and src.is_dir():
        if not values["engine"]:
            raise InputError(f"{src} is an export directory: add --engine to build its TensorRT engine here")
        return engine_from_export(src, values["out"], **with_defaults({k: values[k] for k in ENGINE_SETTINGS}))
    profile = load_profile(values["profile"]) if values["profile"] else None
    return pipeline.run_export(request_from(**apply_profile(values, profile)))


def check_batch_range(batch: int | None, dynamic: tuple[int, int, int] | None) -> None:
    """A fixed ``--batch`` given with ``--dynamic-batch`` must be 1 or the range's opt batch."""
    if batch is not None and dynamic is not None and batch not in (1, dynamic[1]):
        raise InputError(
            f"--batch {batch} and --dynamic-batch {' '.join(map(str, dynamic))} conflict: a dynamic export "
            "takes any batch in its range (give one of the two)"
        )
