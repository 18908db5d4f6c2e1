"""What an export is asked to do: one table of settings for ``cass-deploy export`` and deployment profiles.

:data:`SETTINGS` holds one :class:`Setting` per request field (like Ultralytics' exporter-arguments
table). From it come the CLI flags (:func:`add_export_arguments`, :func:`settings_from_args`),
:class:`ExportRequest` (:func:`request_from`), the fields a deployment profile shares with the
request (:class:`ProfileSettings`, the base of ``export.profiles.ExportProfile``) and how a profile
fills a request (:func:`apply_profile`: explicit flags win over the profile, as a CLI override does
over an mmdeploy deploy config).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, get_args, get_origin

from cass_deploy.backends.limits import PRECISIONS, PRUNER_MODES, TARGETS, target_for
from cass_deploy.errors import InputError
from cass_deploy.model.interface import PARTS


class DeploymentProfile(Protocol):
    """What a request reads of a deployment profile: its name, its target and the
    :class:`ProfileSettings` fields. ``export.profiles.ExportProfile`` is the one implementation;
    this module does not import it (``export.profiles`` builds on this one)."""

    name: str
    target: str


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: no default: the request (and so the CLI, or a profile's YAML) must give it
REQUIRED: Any = _Marker("REQUIRED")
#: ``Setting.profile`` of a setting that deployment profiles do not set
NOT_IN_PROFILES: Any = _Marker("NOT_IN_PROFILES")
#: int8 calibration method -> its ONNX Runtime static quantisation calibrator
#: (an ``onnxruntime.quantization.CalibrationMethod`` member name)
CALIB_METHODS: Mapping[str, str] = types.MappingProxyType(
    {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
)


@dataclass(frozen=True)
class Setting:
    """One export setting: an :class:`ExportRequest` field, its CLI flag and its deployment-profile key.

    ``flag``: ``"--batch"``, a positional name (``"checkpoint"``) or ``None`` (library only). The
    argparse type, ``nargs`` and action follow ``type``: ``tuple[int, int]`` is two ints, ``bool`` a
    switch, and a ``bool`` flag named ``--no-...`` sets the setting False. ``help`` may name
    ``{default}``. ``profile``: the value a profile has when its YAML omits the key (``REQUIRED``:
    the YAML must give it), under the same key; ``from_profile`` maps a profile's own fields to the
    request value instead (``target``, ``engine``).
    """

    name: str
    type: Any
    default: Any = REQUIRED
    flag: str | None = None
    help: str | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | tuple[str, ...] | None = None
    profile: Any = NOT_IN_PROFILES
    from_profile: Callable[[DeploymentProfile], Any] | None = None
    default_factory: Callable[[], Any] | None = None

    @property
    def in_profiles(self) -> bool:
        """A deployment profile has this setting as a field of its own (same name)."""
        return self.profile is not NOT_IN_PROFILES

    @property
    def profile_type(self) -> Any:
        """The profile field's type: the request's, without ``None`` where a profile always has a value."""
        return self.type if self.profile is None else _without_none(self.type)


def _without_none(tp: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if get_origin(tp) is types.UnionType:
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _engine_for(profile: DeploymentProfile) -> bool | None:
    """A TensorRT profile builds an engine."""
    return True if profile.target == "tensorrt" else None


def _target_for(profile: DeploymentProfile) -> str | None:
    """A TensorRT profile lets the export pick the target (TensorRT version, DLA); ONNX Runtime checks the CPU's."""
    return None if profile.target == "tensorrt" else target_for(profile.target, device="cpu")


#: the settings of an export, in CLI (and request field) order
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "checkpoint",
        Path | None,
        None,
        flag="checkpoint",
        help="trained checkpoint (.pt), or an export directory to build its engine on this device "
        "(with --engine; no torch or checkpoint needed); omit it with --model",
    ),
    Setting(
        "model",
        str | None,
        None,
        "--model",
        metavar="SPEC",
        help="your own model instead of a checkpoint: package.module:factory or path/to/file.py:factory "
        "returning a PrunableModel (SPEC 6a); needs --weights",
    ),
    Setting(
        "weights", Path | None, None, "--weights", metavar="FILE", help="--model's state dict (.pt or .safetensors)"
    ),
    Setting(
        "model_args",
        str | None,
        None,
        "--model-args",
        metavar="FILE|JSON",
        help="keyword arguments of the --model factory: a JSON object or a JSON / YAML file",
    ),
    Setting("out", Path, flag="--out", help="output directory (model.onnx, model.engine, manifest.json)"),
    Setting(
        "profile",
        str | None,
        None,
        "--profile",
        help="deployment profile name or YAML (jetson-orin-nano, jetson-orin-nx, jetson-agx-orin, "
        "x86-gpu, cpu); explicit flags override it",
    ),
    Setting(
        "parts",
        str,
        "full",
        "--parts",
        choices=PARTS,
        help="predictor: importance predictor + pruner only; full: the whole pruned detector (default)",
    ),
    Setting("precision", str, "fp32", "--precision", choices=PRECISIONS, profile="fp16"),
    Setting("batch", int, 1, "--batch", help="fixed batch size (default {default})", profile=1),
    Setting(
        "dynamic_batch",
        tuple[int, int, int] | None,
        None,
        "--dynamic-batch",
        help="symbolic batch dimension with a TensorRT optimisation profile",
        metavar=("MIN", "OPT", "MAX"),
        profile=None,
    ),
    Setting("opset", int, 17, "--opset", help="ONNX opset (default {default})", profile=18),
    Setting("simplify", bool, True, "--no-simplify", help="skip onnxslim simplification", profile=True),
    Setting(
        "image_size",
        tuple[int, int] | None,
        None,
        "--image-size",
        metavar=("H", "W"),
        help="export at another input size (position embedding resampled)",
        profile=REQUIRED,
    ),
    Setting("pruner_mode", str | None, None, "--pruner", choices=PRUNER_MODES, profile="global"),
    Setting("keep_ratio", float | None, None, "--keep-ratio", profile=0.5),
    Setting(
        "max_dets",
        int,
        100,
        "--max-dets",
        help="rows N of the deployed outputs num_dets / det_boxes / det_scores / det_classes (default {default})",
    ),
    Setting(
        "raw_head",
        bool,
        False,
        "--raw-head",
        help="end the full export in the raw heatmap / box maps instead of the decoded detections",
    ),
    Setting(
        "det_score_thresh",
        float,
        0.01,
        "--det-score-thresh",
        help="detections scoring below this are padding rows (zero) in the deployed outputs (default {default})",
    ),
    Setting(
        "keep_predictor_fp32",
        bool,
        True,
        "--no-keep-predictor-fp32",
        help="also convert the predictor and pruner to fp16/int8 (default: they stay fp32)",
    ),
    Setting(
        "calib_data", str, "synthetic", "--calib-data", help="int8 calibration images: 'synthetic' or a dataset dir"
    ),
    Setting("calib_images", int, 32, "--calib-images"),
    Setting("calib_method", str, "minmax", "--calib-method", choices=tuple(CALIB_METHODS)),
    Setting(
        "target", str | None, None, "--target", help=f"limits to check: {', '.join(TARGETS)}", from_profile=_target_for
    ),
    Setting(
        "engine",
        bool,
        False,
        "--engine",
        help="also build a TensorRT engine (needs TensorRT)",
        from_profile=_engine_for,
    ),
    Setting("workspace_mib", int | None, None, "--workspace", help="TensorRT workspace in MiB", profile=None),
    Setting("timing_cache", Path | None, None, "--timing-cache", help="TensorRT timing cache file (read and updated)"),
    Setting(
        "dla_core", int | None, None, "--dla-core", help="build for this DLA core (Jetson, TensorRT 10)", profile=None
    ),
    Setting(
        "gpu_fallback", bool, True, "--no-gpu-fallback", help="forbid DLA layers falling back to the GPU", profile=True
    ),
    Setting(
        "strongly_typed",
        bool | None,
        None,
        "--strongly-typed",
        help="TensorRT 10: strongly typed network (TensorRT 11 always is)",
    ),
    Setting("force", bool, False, "--force", help="overwrite an existing output directory"),
    Setting("extra", dict[str, Any], default_factory=dict),  # more manifest entries (library callers)
)
SETTING: Mapping[str, Setting] = types.MappingProxyType({s.name: s for s in SETTINGS})


# --------------------------------------------------------------------------- the request


def _check_request(req: ExportRequest) -> None:
    """Refuse (:class:`InputError`, naming the flag) what no export can do; backend limits come later."""
    if (req.checkpoint is None) == (req.model is None):
        raise InputError(
            "export needs a checkpoint or --model SPEC --weights FILE (one of them)"
            if req.checkpoint is None
            else f"give a checkpoint ({req.checkpoint}) or --model {req.model}, not both"
        )
    if req.model is not None and req.weights is None:
        raise InputError(f"--model {req.model} needs --weights FILE (a torch state dict or .safetensors)")
    if req.model is None and (req.weights is not None or req.model_args is not None):
        raise InputError("--weights and --model-args go with --model SPEC")
    if isinstance(req.max_dets, bool) or not isinstance(req.max_dets, int) or not 1 <= req.max_dets <= 3840:
        raise InputError(f"--max-dets must be an integer in 1..3840 (TensorRT's TopK limit), got {req.max_dets!r}")
    if not isinstance(req.det_score_thresh, (int, float)) or not 0.0 <= req.det_score_thresh < 1.0:
        raise InputError(f"--det-score-thresh must be in [0, 1), got {req.det_score_thresh!r}")
    if req.parts not in PARTS:
        raise InputError(f"--parts must be {' or '.join(map(repr, PARTS))}, got {req.parts!r}")
    if req.precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {list(PRECISIONS)}, got {req.precision!r}")
    if not isinstance(req.batch, int) or req.batch < 1:
        raise InputError(f"--batch must be an integer >= 1, got {req.batch!r}")
    if req.dynamic_batch is not None:
        lo, opt, hi = req.dynamic_batch
        if not (1 <= lo <= opt <= hi):
            raise InputError(f"--dynamic-batch needs 1 <= min <= opt <= max, got {list(req.dynamic_batch)}")
        if hi < 2:
            raise InputError(f"--dynamic-batch {list(req.dynamic_batch)} allows only batch 1; use --batch 1")
    if req.precision == "int8" and req.calib_images < 1:
        raise InputError(f"--calib-images must be >= 1 for int8, got {req.calib_images}")
    if req.image_size is not None and (len(req.image_size) != 2 or min(req.image_size) <= 0):
        raise InputError(f"--image-size must be two positive integers H W, got {req.image_size!r}")


def _field(default: Any, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with ``default`` (``REQUIRED``: none) or ``default_factory``."""
    if default_factory is not None:
        return field(default_factory=default_factory)
    return field() if default is REQUIRED else field(default=default)


def _dataclass(name: str, fields: list[tuple[str, Any, Any]], doc: str, **kw: Any) -> type:
    namespace = {"__doc__": doc, "__module__": __name__, **kw.pop("namespace", {})}
    return dataclasses.make_dataclass(name, fields, namespace=namespace, **kw)


ExportRequest = _dataclass(
    "ExportRequest",
    [(s.name, s.type, _field(s.default, s.default_factory)) for s in SETTINGS],
    "What to export: one field per ``SETTINGS`` row. ``target`` names a row of ``backends.limits`` "
    "(checked before building); ``profile`` is the name of the deployment profile applied.",
    namespace={"__post_init__": _check_request},
    kw_only=True,
)

#: The settings a deployment profile shares with the request, with the profile's defaults: the frozen
#: base of ``export.profiles.ExportProfile`` (which adds its own fields and checks them all).
ProfileSettings = _dataclass(
    "ProfileSettings",
    [(s.name, s.profile_type, _field(s.profile)) for s in SETTINGS if s.in_profiles],
    "Deployment-profile fields that map onto ExportRequest fields (from export.settings.SETTINGS).",
    frozen=True,
    kw_only=True,
)


def request_from(**values: Any) -> ExportRequest:
    """ExportRequest from keyword args, dropping ``None`` (unset) so the table's defaults apply."""
    return ExportRequest(**{k: v for k, v in values.items() if k in SETTING and v is not None})


def with_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each unset (``None``) setting replaced by its request default."""
    return {k: _request_default(SETTING[k]) if v is None else v for k, v in values.items()}


def _request_default(s: Setting) -> Any:
    return s.default_factory() if s.default_factory is not None else s.default


# --------------------------------------------------------------------------- the CLI


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per setting with a flag; each parses to ``dest=<setting name>``.

    A setting a profile may fill defaults to ``None`` (unset), the others to the request default.
    """
    for s in SETTINGS:
        if s.flag is None:
            continue
        kw: dict[str, Any] = {"help": s.help.format(default=s.default) if s.help else None}
        if s.choices is not None:
            kw["choices"] = s.choices
        if s.metavar is not None:
            kw["metavar"] = s.metavar
        base = _without_none(s.type)
        if base is bool:
            kw["action"] = "store_false" if s.flag.startswith("--no-") else "store_true"
        elif get_origin(base) is tuple:
            kw["nargs"], kw["type"] = len(get_args(base)), get_args(base)[0]
        elif base in (int, float):
            kw["type"] = base
        if not s.flag.startswith("-"):
            if s.default is not REQUIRED:
                kw.update(nargs="?", default=s.default)
            parser.add_argument(s.flag, **kw)
            continue
        if s.default is REQUIRED:
            kw["required"] = True
        else:
            kw["default"] = None if s.in_profiles or s.from_profile else s.default
        parser.add_argument(s.flag, dest=s.name, **kw)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings parsed by :func:`add_export_arguments`, as request values (``None``: not given)."""
    return {s.name: _from_cli(s, getattr(args, s.name)) for s in SETTINGS if s.flag is not None}


def _from_cli(s: Setting, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):  # nargs=N -> tuple[...]
        return tuple(value)
    return Path(value) if _without_none(s.type) is Path else value


# --------------------------------------------------------------------------- deployment profiles


def apply_profile(values: Mapping[str, Any], profile: DeploymentProfile | None) -> dict[str, Any]:
    """Fill unset (``None``) values from ``profile``; explicit values win.

    The ``profile`` value becomes the applied profile's name (``None`` when there is none).
    """
    merged = dict(values)
    if profile is None:
        merged["profile"] = None
        return merged
    for s in SETTINGS:
        if s.in_profiles:
            value = getattr(profile, s.name)
        elif s.from_profile is not None:
            value = s.from_profile(profile)
        else:
            continue
        if merged.get(s.name) is None:
            merged[s.name] = tuple(value) if isinstance(value, list) else value
    merged["profile"] = profile.name
    return merged


__all__ = [
    "SETTINGS",
    "SETTING",
    "Setting",
    "ExportRequest",
    "ProfileSettings",
    "REQUIRED",
    "NOT_IN_PROFILES",
    "CALIB_METHODS",
    "request_from",
    "with_defaults",
    "add_export_arguments",
    "settings_from_args",
    "apply_profile",
]
