"""Artefacts describe themselves: ``manifest.json``, ONNX ``metadata_props``, trtexec command.

The manifest sits beside the exported files and records shapes, k, grid, precision, versions,
the SHA-256 of every file and of the source checkpoint, and an equivalent ``trtexec`` command.
The same keys (minus the artefact hashes, which would be circular) go into the ONNX file's
``metadata_props``. Engine files stay plain engine files. :class:`Manifest` is the one reader:
everything that needs a fact of an export (its batch, geometry, files, versions) asks it.

Hashes are checked on every read: :meth:`Manifest.check_artefacts` recomputes the SHA-256 of the
files a reader is about to use and refuses a mismatch (:class:`~cass_deploy.errors.HashMismatch`,
exit 2, naming the file and both hashes) unless hash checks are off (``--no-verify-hash``, see
``io_utils.hash_checks``), when it warns instead. An ONNX file also carries the SHA-256 of its
graph in ``metadata_props`` (:data:`GRAPH_SHA_PROP`; the file's own hash would be circular), so a
bare ``.onnx`` without its manifest is checked too (:func:`check_onnx_graph`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cass_deploy import __version__
from cass_deploy.backends.limits import PRECISIONS, PRUNER_MODES
from cass_deploy.backends.probe import VERSIONS, package_version, trt_version
from cass_deploy.errors import BackendUnavailable, HashMismatch, InputError
from cass_deploy.io_utils import atomic_path, hash_checks_enabled, sha256_file, warn, write_json

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: file names inside an export directory
ONNX_NAME = "model.onnx"
ENGINE_NAME = "model.engine"
PARTS = ("predictor", "full")
REQUIRED_KEYS = ("schema_version", "artefacts", "inputs", "outputs", "precision")
#: ONNX metadata key listing the keys whose values are JSON-encoded (the rest are plain strings)
JSON_KEYS_PROP = "cass_deploy.json_keys"
#: ONNX metadata key holding the SHA-256 of the serialised graph (:func:`graph_sha256`)
GRAPH_SHA_PROP = "cass_deploy.graph_sha256"
#: what a reader says when a hash does not match
_HASH_FIX = "re-export it, or pass --no-verify-hash if you changed it on purpose"

#: labels of the version table (:data:`cass_deploy.backends.probe.VERSIONS`) a manifest records
MANIFEST_VERSIONS = ("torch", "onnx", "onnxruntime", "tensorrt", "numpy", "onnxscript")


def collect_versions(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Versions of the tool, Python and every installed backend (via package metadata only)."""

    versions = {"cass_deploy": __version__, "python": platform.python_version()}
    for label in MANIFEST_VERSIONS:
        version = package_version(*VERSIONS[label])
        if version is not None:
            versions[label] = version
    if "tensorrt" not in versions:  # JetPack's apt-installed TensorRT may carry no metadata
        try:
            found = trt_version()
        except BackendUnavailable:  # installed but broken: the manifest just omits it
            found = None
        if found is not None:
            versions["tensorrt"] = found
    for label, version in (extra or {}).items():
        if version is not None:
            versions[label] = str(version)
    return versions


def _tensor_entry(spec: Any) -> dict[str, Any]:
    """A TensorSpec, ``(name, shape, dtype)`` tuple or dict -> ``{"name", "shape", "dtype"}``."""

    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    if isinstance(spec, Mapping):
        name, shape, dtype = spec["name"], spec["shape"], spec["dtype"]
    else:
        try:
            name, shape, dtype = spec
        except (TypeError, ValueError):
            raise InputError(f"a tensor must be (name, shape, dtype), got {spec!r}") from None
    dims = [d if (d is None or isinstance(d, str)) else int(d) for d in shape]
    return {"name": str(name), "shape": dims, "dtype": np.dtype(dtype).name}


def _pair(value: Sequence[int] | None, what: str) -> list[int] | None:
    if value is None:
        return None
    vals = list(value)
    if len(vals) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vals):
        raise InputError(f"{what} must be two positive integers, got {value!r}")
    return vals


def _batch_entry(batch: int | None, dynamic_batch: Sequence[int] | None) -> dict[str, Any]:
    if dynamic_batch is not None:
        if batch is not None:
            raise InputError("give either a fixed batch or a dynamic batch (min, opt, max), not both")
        try:
            lo, opt, hi = (int(v) for v in dynamic_batch)
        except (TypeError, ValueError):
            raise InputError(f"dynamic batch must be (min, opt, max), got {dynamic_batch!r}") from None
        if not 1 <= lo <= opt <= hi:
            raise InputError(f"dynamic batch needs 1 <= min <= opt <= max, got ({lo}, {opt}, {hi})")
        return {"dynamic": True, "min": lo, "opt": opt, "max": hi}
    size = 1 if batch is None else batch
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    return {"dynamic": False, "size": size}


def artefact_entry(path: str | Path, base_dir: str | Path | None = None) -> dict[str, Any]:
    """``{"file", "sha256", "bytes"}`` for one file; ``file`` is relative to ``base_dir``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"artefact {path} does not exist")
    rel = path.name if base_dir is None else path.resolve().relative_to(Path(base_dir).resolve()).as_posix()
    return {"file": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def build_manifest(
    *,
    artefacts: Mapping[str, str | Path],
    inputs: Sequence[Any],
    outputs: Sequence[Any],
    precision: str,
    source_checkpoint: str | Path | None = None,
    checkpoint_sha256: str | None = None,
    grid: Sequence[int] | None = None,
    k: int | None = None,
    topk_sizes: Sequence[int] | None = None,
    keep_ratio: float | None = None,
    pruner_mode: str | None = None,
    image_size: Sequence[int] | None = None,
    batch: int | None = None,
    dynamic_batch: Sequence[int] | None = None,
    opset: int | None = None,
    parts: str | None = None,
    versions: Mapping[str, str] | None = None,
    trtexec: str | None = None,
    base_dir: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
    created: str | None = None,
) -> Manifest:
    """Describe an export. ``artefacts`` maps a role (``"onnx"``, ``"engine"``) to a file.

    ``image_size`` and ``grid`` are ``(H, W)`` and ``(Hp, Wp)``; ``dynamic_batch`` is
    ``(min, opt, max)``; files are hashed now, so embed ONNX metadata before building this.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if parts is not None and parts not in PARTS:
        raise InputError(f"parts must be one of {', '.join(PARTS)}, got {parts!r}")
    if pruner_mode is not None and pruner_mode not in PRUNER_MODES:
        raise InputError(f"pruner_mode must be one of {', '.join(PRUNER_MODES)}, got {pruner_mode!r}")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise InputError(f"k must be a positive integer, got {k!r}")
    if keep_ratio is not None and not 0.0 < float(keep_ratio) <= 1.0:
        raise InputError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    if opset is not None and (not isinstance(opset, int) or opset < 1):
        raise InputError(f"opset must be a positive integer, got {opset!r}")
    if not artefacts:
        raise InputError("a manifest needs at least one artefact")

    if source_checkpoint is not None and checkpoint_sha256 is None:
        ckpt = Path(source_checkpoint)
        if not ckpt.is_file():
            raise InputError(f"source checkpoint {ckpt} does not exist")
        checkpoint_sha256 = sha256_file(ckpt)

    return Manifest(
        {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "cass-deploy", "version": __version__},
            "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source_checkpoint": None
            if source_checkpoint is None and checkpoint_sha256 is None
            else {"path": None if source_checkpoint is None else str(source_checkpoint), "sha256": checkpoint_sha256},
            "artefacts": {role: artefact_entry(p, base_dir) for role, p in artefacts.items()},
            "parts": parts,
            "inputs": [_tensor_entry(s) for s in inputs],
            "outputs": [_tensor_entry(s) for s in outputs],
            "image_size": _pair(image_size, "image_size"),
            "grid": _pair(grid, "grid"),
            "k": k,
            "topk_sizes": None if topk_sizes is None else [int(v) for v in topk_sizes],
            "keep_ratio": None if keep_ratio is None else float(keep_ratio),
            "pruner_mode": pruner_mode,
            "precision": precision,
            "batch": _batch_entry(batch, dynamic_batch),
            "opset": opset,
            "versions": dict(versions) if versions is not None else collect_versions(),
            "trtexec": trtexec,
            "extra": dict(extra or {}),
        }
    )


def _unreadable(file: Path, exc: ValueError) -> str:
    """Why ``file`` cannot be read as a manifest: not valid JSON (where), or not text at all."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{file} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); re-export or restore it"
    return f"{file} is not a text file: {exc}"


@dataclass
class ArtefactCheck:
    """Result of :meth:`Manifest.verify`; truthy when every listed file matches its hash."""

    checked: list[str] = field(default_factory=list)
    mismatches: list[dict[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.mismatches and not self.missing

    @property
    def ok(self) -> bool:
        return bool(self)

    def to_dict(self) -> dict[str, Any]:
        """``ok``, then the fields (copies): checked, mismatches, missing."""
        return {"ok": self.ok, **asdict(self)}

    def summary(self) -> str:
        if self:
            return f"all {len(self.checked)} artefact(s) match their SHA-256"
        parts = [
            f"{m['file']} ({m['role']}): expected {m['expected'][:12]}..., found {m['actual'][:12]}..."
            for m in self.mismatches
        ]
        parts += [f"{f}: missing" for f in self.missing]
        return "artefact check failed: " + "; ".join(parts)


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``data[key]`` when it is a JSON object, else ``{}`` (absent, null or foreign metadata)."""
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


class _Entry:
    """A read-only manifest value: the key path into the JSON (``"extra", "patch_size"``), decoded by
    ``convert``; ``None`` where any part of the path is absent."""

    def __init__(self, *path: str, convert: Callable[[Any], Any] | None = None, doc: str | None = None) -> None:
        self.path, self.convert, self.__doc__ = path, convert, doc

    def __get__(self, manifest: Manifest | None, owner: type | None = None) -> Any:
        if manifest is None:
            return self
        data = manifest._data
        for key in self.path[:-1]:
            data = _section(data, key)
        value = data.get(self.path[-1])
        if value is None or self.convert is None:
            return value
        try:
            return self.convert(value)
        except (TypeError, ValueError):
            key = ".".join(self.path)
            raise InputError(
                f"{manifest.label}: {key} has a value this cass-deploy cannot read: {value!r}; re-export"
            ) from None


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _pair_or_none(value: Any) -> tuple[int, int] | None:
    return None if not value else tuple(int(v) for v in value)


class Manifest:
    """An export's description (``manifest.json``, or an ONNX file's metadata), read-only.

    A thin class over the validated JSON object rather than a frozen dataclass of its fields:
    the JSON is the record that other tools read too (``jq -r .trtexec``, ONNX
    ``metadata_props``), so :meth:`to_dict` must give back exactly what was built or read, key
    order, keys this version does not decode and the partial key set of bare ONNX metadata
    included. The properties decode it; nothing outside this class indexes the dict.
    """

    __slots__ = ("_data", "_source")

    def __init__(self, data: Mapping[str, Any]) -> None:
        """Wrap ``data`` as is (a copy); :meth:`read` and :func:`build_manifest` validate."""
        if not isinstance(data, Mapping):
            raise InputError(f"a manifest must be a JSON object, got {type(data).__name__}")
        self._data: dict[str, Any] = copy.deepcopy(dict(data))
        self._source: str | None = None  # the file it was read from, for messages

    # -- reading and writing ------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Load a manifest from a directory (``manifest.json`` inside) or a file path."""
        path = Path(path)
        file = path / MANIFEST_NAME if path.is_dir() else path
        if not file.is_file():
            where = f"no {MANIFEST_NAME} in {path}" if path.is_dir() else f"{file} does not exist"
            raise InputError(f"{where}; export artefacts with `cass-deploy export` to get one")
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(_unreadable(file, exc)) from exc
        if not isinstance(data, dict):
            raise InputError(f"{file} must hold a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(
                f"{file} has schema_version {version!r}; this cass-deploy "
                f"({__version__}) reads schema_version {SCHEMA_VERSION}. Re-export "
                "with this version or use the cass-deploy that wrote it"
            )
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise InputError(f"{file} lacks required key(s) {', '.join(missing)}")
        manifest = cls(data)
        manifest._source = str(file)
        return manifest

    @classmethod
    def from_onnx(cls, model: Any) -> Manifest:
        """The manifest keys embedded in an ONNX file's (or ``ModelProto``'s) ``metadata_props``.

        Not validated: a bare ``.onnx`` has no ``artefacts``, and one not exported by
        cass-deploy may lack everything (its properties are then None).
        """
        return cls(read_onnx_metadata(model))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, as written to ``manifest.json`` (a copy)."""
        return copy.deepcopy(self._data)

    def onnx_metadata(self) -> dict[str, Any]:
        """The keys that go into ONNX ``metadata_props`` (all but the artefact hashes)."""
        return {key: value for key, value in self.to_dict().items() if key != "artefacts"}

    def write(self, directory: str | Path, force: bool = False) -> Path:
        """Write ``directory/manifest.json`` atomically; refuses to overwrite without ``force``."""
        if self.schema_version != SCHEMA_VERSION:
            raise InputError(
                f"refusing to write a manifest with schema_version {self.schema_version!r}; expected {SCHEMA_VERSION}"
            )
        return write_json(Path(directory) / MANIFEST_NAME, self.to_dict(), force=force)

    def verify(self, directory: str | Path) -> ArtefactCheck:
        """Recompute the SHA-256 of every listed file (paths relative to ``directory``)."""
        result = ArtefactCheck()
        base = Path(directory)
        for role, entry in _section(self._data, "artefacts").items():
            file = base / entry["file"]
            if not file.is_file():
                result.missing.append(entry["file"])
                continue
            actual = sha256_file(file)
            result.checked.append(entry["file"])
            if actual != entry["sha256"]:
                result.mismatches.append(
                    {"role": role, "file": entry["file"], "expected": entry["sha256"], "actual": actual}
                )
        return result

    def check_artefacts(
        self, directory: str | Path, roles: Sequence[str] | None = None, *, manifest_file: str | Path | None = None
    ) -> ArtefactCheck:
        """Before a reader uses them: the SHA-256 of the files of ``roles`` (default: every listed
        file) must match. A missing file is an InputError; a mismatch a :class:`HashMismatch` naming
        the file and both hashes, or a warning when hash checks are off (``--no-verify-hash``)."""
        where = Path(manifest_file) if manifest_file else Path(directory) / MANIFEST_NAME
        listed = _section(self._data, "artefacts")
        for role in roles if roles is not None else list(listed):
            entry = listed.get(role)
            if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str) or "sha256" not in entry:
                raise InputError(f"{where} lists no {role} file with a sha256; re-export")
        result = ArtefactCheck()
        for role in roles if roles is not None else list(listed):
            entry = listed[role]
            file = Path(directory) / entry["file"]
            if not file.is_file():
                raise InputError(f"{file} ({role}, listed in {where}) does not exist; re-export or restore it")
            actual = sha256_file(file)
            result.checked.append(entry["file"])
            if actual == entry["sha256"]:
                continue
            mismatch = {"role": role, "file": entry["file"], "expected": entry["sha256"], "actual": actual}
            result.mismatches.append(mismatch)
            text = f"{file} does not match its manifest {where}: SHA-256 expected {entry['sha256']}, found {actual}"
            if hash_checks_enabled():
                raise HashMismatch(f"{text}; {_HASH_FIX}")
            warn(f"{text}; used anyway (--no-verify-hash)")
        return result

    def check_source_checkpoint(self, path: str | Path, actual_sha256: str) -> None:
        """Reading the export's source checkpoint again (validate's dense reference): it must still be the
        file this export was made from (a HashMismatch, or a warning with ``--no-verify-hash``)."""
        expected = self.source_checkpoint_sha256
        if expected is None or expected == actual_sha256:
            return
        text = (
            f"{path} is not the checkpoint this export was made from: SHA-256 expected {expected}, found "
            f"{actual_sha256} (retrained or replaced since the export)"
        )
        if hash_checks_enabled():
            raise HashMismatch(f"{text}; pass --reference CHECKPOINT, re-export, or --no-verify-hash")
        warn(f"{text}; used anyway (--no-verify-hash)")

    def role_of(self, file_name: str) -> str | None:
        """The role (``onnx``, ``engine``) of the listed file named ``file_name``, None when not listed."""
        for role, entry in _section(self._data, "artefacts").items():
            if isinstance(entry, Mapping) and Path(str(entry.get("file", ""))).name == file_name:
                return role
        return None

    @property
    def label(self) -> str:
        """``the manifest PATH`` (or ``the manifest`` when not read from a file), for messages."""
        return f"the manifest {self._source}" if self._source else "the manifest"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self._data == other._data

    __hash__ = None  # type: ignore[assignment]  # equal by content, and it holds dicts

    def __repr__(self) -> str:
        return (
            f"Manifest(precision={self.precision!r}, parts={self.parts!r}, "
            f"pruner_mode={self.pruner_mode!r}, image_size={self.image_size!r}, "
            f"artefacts={list(self.artefact_roles)!r})"
        )

    # -- what was exported --------------------------------------------------------------------
    schema_version = _Entry("schema_version")
    created = _Entry("created")
    precision = _Entry("precision", doc="``fp32``, ``fp16`` or ``int8``.")
    parts = _Entry("parts", doc="``predictor`` or ``full``.")
    pruner_mode = _Entry("pruner_mode")
    keep_ratio = _Entry("keep_ratio", convert=float)
    k = _Entry("k", convert=int, doc="The global pruner's TopK.")
    topk_sizes = _Entry(
        "topk_sizes", convert=lambda v: tuple(int(x) for x in v), doc="The band pruner's per-band TopK sizes."
    )
    opset = _Entry("opset", convert=int)
    trtexec = _Entry("trtexec", doc="The equivalent ``trtexec`` command line.")
    image_size = _Entry("image_size", convert=_pair_or_none, doc="Input ``(H, W)``.")
    grid = _Entry("grid", convert=_pair_or_none, doc="Patch grid ``(Hp, Wp)``.")
    patch_size = _Entry("extra", "patch_size", convert=int)
    source_checkpoint_path = _Entry(
        "source_checkpoint", "path", doc="The checkpoint path as recorded at export (may be relative or elsewhere)."
    )
    source_checkpoint_sha256 = _Entry("source_checkpoint", "sha256")
    trt_version = _Entry("versions", "tensorrt", doc="The TensorRT version recorded at export or engine build.")
    built_on_device = _Entry(
        "extra", "tensorrt", "device", doc="The GPU the engine was built on (``extra.tensorrt.device``)."
    )
    engine_built_on = _Entry(
        "extra",
        "tensorrt",
        "built_on",
        convert=dict,
        doc="What built the engine (``extra.tensorrt.built_on``): TensorRT, GPU, compute capability, CUDA, "
        "Jetson board / L4T / JetPack / power mode (:class:`cass_deploy.runtime.trt_engine.DeviceFacts`).",
    )

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """``[{"name", "shape", "dtype"}, ...]`` of the graph inputs (a copy)."""
        return copy.deepcopy(list(self._data.get("inputs") or []))

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """``[{"name", "shape", "dtype"}, ...]`` of the graph outputs (a copy)."""
        return copy.deepcopy(list(self._data.get("outputs") or []))

    @property
    def extra(self) -> dict[str, Any]:
        """Free-form export details (target, notes, patch size, TensorRT build; a copy)."""
        return copy.deepcopy(dict(_section(self._data, "extra")))

    # -- geometry -----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        """Detector classes (``extra.num_classes``; a top-level key of older metadata otherwise)."""
        value = _section(self._data, "extra").get("num_classes") or self._data.get("num_classes")
        return _int_or_none(value)

    # -- batch --------------------------------------------------------------------------------
    @property
    def dynamic_batch(self) -> tuple[int, int, int] | None:
        """``(min, opt, max)`` of a dynamic-batch export, None for a fixed batch."""
        batch = _section(self._data, "batch")
        if not batch.get("dynamic"):
            return None
        try:
            return int(batch["min"]), int(batch["opt"]), int(batch["max"])
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"{self.label}: the dynamic batch must have integer min, opt and max, got {dict(batch)!r}; re-export"
            ) from None

    @property
    def fixed_batch(self) -> int | None:
        """The batch of a fixed-batch export, None when dynamic (or not recorded)."""
        batch = _section(self._data, "batch")
        try:
            return None if batch.get("dynamic") else _int_or_none(batch.get("size"))
        except (TypeError, ValueError):
            raise InputError(
                f"{self.label}: batch.size must be an integer, got {batch.get('size')!r}; re-export"
            ) from None

    @property
    def batch_step(self) -> int:
        """The batch a caller feeds: the fixed size, or ``opt`` when dynamic (1 if not recorded)."""
        dynamic = self.dynamic_batch
        if dynamic is not None:
            return dynamic[1]
        return self.fixed_batch or 1

    # -- files and provenance -----------------------------------------------------------------
    @property
    def artefact_roles(self) -> tuple[str, ...]:
        """Roles of the listed files (``onnx``, ``engine``), in manifest order."""
        return tuple(_section(self._data, "artefacts"))

    def artefact_file(self, role: str) -> str | None:
        """File name of ``role`` relative to the export directory, None when not listed."""
        entry = _section(self._data, "artefacts").get(role)
        if entry is None:
            return None
        if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
            raise InputError(f"{self.label}: artefacts.{role} must be {{'file': NAME, 'sha256': HASH}}, got {entry!r}")
        return entry["file"]

    def artefact_path(self, role: str, base_dir: str | Path) -> Path:
        """``base_dir / file`` of ``role``; an InputError when the manifest lists no such file."""
        file = self.artefact_file(role)
        if file is None:
            listed = ", ".join(self.artefact_roles) or "none"
            raise InputError(f"the manifest in {base_dir} lists no {role} artefact (it has: {listed}); re-export")
        return Path(base_dir) / file

    @property
    def versions(self) -> dict[str, str]:
        """Tool, Python and backend versions at export (a copy)."""
        return dict(_section(self._data, "versions"))


# -- ONNX metadata ----------------------------------------------------------------------------
def load_onnx(path: str | Path) -> Any:
    """``onnx.load`` without external data; a missing or unreadable file is an InputError."""

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"cannot read ONNX model {path}: {exc}") from exc


def embed_onnx_metadata(model: Any, mapping: Mapping[str, Any]) -> Any:
    """Write ``mapping`` into ONNX ``metadata_props`` (non-strings JSON-encoded).

    ``model`` is an ``onnx.ModelProto`` (changed in place and returned) or a path to an ONNX
    file (rewritten atomically; external data files are left where they are).
    """

    path = Path(model) if isinstance(model, (str, Path)) else None
    if path is not None:
        model = load_onnx(path)
    json_keys = sorted(k for k, v in mapping.items() if not isinstance(v, str))
    props = {str(k): (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in mapping.items()}
    props[JSON_KEYS_PROP] = json.dumps(json_keys)
    props[GRAPH_SHA_PROP] = graph_sha256(model)
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for entry in keep:
        model.metadata_props.add(key=entry.key, value=entry.value)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    if path is not None:
        with atomic_path(path, force=True) as tmp:
            onnx.save(model, str(tmp))
    return model


def graph_sha256(model: Any) -> str:
    """SHA-256 of an ONNX model's graph (nodes, initialisers, inputs, outputs) as protobuf serialises it
    deterministically: what :data:`GRAPH_SHA_PROP` records (metadata_props are outside the graph)."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def check_onnx_graph(path: str | Path, model: Any) -> bool:
    """A bare ``.onnx``: its graph must match the SHA-256 in its own metadata (a :class:`HashMismatch`
    otherwise, a warning with ``--no-verify-hash``). False when it records none (not checkable)."""
    recorded = {p.key: p.value for p in model.metadata_props}.get(GRAPH_SHA_PROP)
    if recorded is None:
        return False
    actual = graph_sha256(model)
    if actual != recorded:
        text = f"{path}: its graph does not match the SHA-256 in its metadata: expected {recorded}, found {actual}"
        if hash_checks_enabled():
            raise HashMismatch(f"{text}; {_HASH_FIX}")
        warn(f"{text}; used anyway (--no-verify-hash)")
    return True


def read_onnx_metadata(model: Any) -> dict[str, Any]:
    """``metadata_props`` of an ONNX model or file as a dict, JSON values decoded."""

    if isinstance(model, (str, Path)):
        model = load_onnx(model)
    props = {p.key: p.value for p in model.metadata_props}
    props.pop(GRAPH_SHA_PROP, None)  # checked by check_onnx_graph, not a manifest key
    try:
        json_keys = set(json.loads(props.pop(JSON_KEYS_PROP, "[]")))
        return {key: json.loads(value) if key in json_keys else value for key, value in props.items()}
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"the ONNX metadata_props are not cass-deploy's (a value is not valid JSON: {exc})") from None
