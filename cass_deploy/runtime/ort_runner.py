"""ONNX Runtime runner (CPU, CUDA or TensorRT execution provider). Imports no torch.

``OrtRunner(path, providers=("cuda", "cpu"))`` picks providers by short name; asking for a
provider this ONNX Runtime build lacks is refused (ONNX Runtime itself would silently fall back
to the CPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.backends.probe import import_backend
from cass_deploy.errors import BackendUnavailable, InputError
from cass_deploy.runtime.base import InferenceError, Runner, TensorSpec

#: short name -> ONNX Runtime execution provider
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

#: ONNX Runtime type string -> numpy dtype
_ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}


def available_providers() -> list[str]:
    """Short names of the providers this ONNX Runtime build offers (e.g. ``["cpu"]``)."""
    ort = import_backend("onnxruntime")
    offered = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in offered]


def resolve_providers(providers: Sequence[str] | str) -> list[str]:
    """Short names -> ONNX Runtime provider names, refusing unknown or unavailable ones."""
    if isinstance(providers, str):
        providers = (providers,)
    if not providers:
        raise InputError(f"no ONNX Runtime provider given; choose from {', '.join(PROVIDERS)}")
    unknown = [p for p in providers if p not in PROVIDERS]
    if unknown:
        raise InputError(
            f"unknown ONNX Runtime provider(s) {', '.join(map(repr, unknown))}; choose from {', '.join(PROVIDERS)}"
        )
    have = available_providers()
    missing = [p for p in providers if p not in have]
    if missing:
        hint = " (install onnxruntime-gpu: pip install cass-deploy[gpu])" if set(missing) & {"cuda", "tensorrt"} else ""
        raise BackendUnavailable(
            f"ONNX Runtime provider(s) {', '.join(missing)} not available in this ONNX Runtime "
            f"build; available: {', '.join(have) or 'none'}{hint}"
        )
    return [PROVIDERS[p] for p in dict.fromkeys(providers)]


def session_options(threads: int | None, *, optimised_to: str | None = None, profile_to: str | None = None) -> Any:
    """``onnxruntime.SessionOptions`` for a session of ``threads`` intra-op threads (None: ONNX
    Runtime's defaults), saving its optimised graph to ``optimised_to`` and profiling to
    ``profile_to`` when given.

    With ``threads``, as timing needs: a pool of that many threads and no inter-op pool, nodes in
    order; its threads spin-wait between operators while a run lasts, as a deployed session's own
    pool does, and stop spinning the moment the run returns (``session.force_spinning_stop``), so
    the next of several interleaved sessions finds the cores free. Reference detector, 2 cores,
    dense: 7.9 ms interleaved this way, 7.7 ms alone in a default session; pools that never spin
    ran it at 10.1 ms (every operator paid a thread wake-up), pools that spin on after the run
    at 18.9 ms (each stole the next session's cores).
    """
    ort = import_backend("onnxruntime", "the ONNX Runtime runner")
    so = ort.SessionOptions()
    if optimised_to:
        so.log_severity_level = 3  # ORT warns that a saved NCHWc graph is machine-specific: expected
        so.optimized_model_filepath = optimised_to
    if profile_to:
        so.enable_profiling, so.profile_file_prefix = True, profile_to
    if threads is not None:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def _spec(arg: Any, path: Path) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise InputError(f"{path}: tensor {arg.name!r} has type {arg.type}, which the runner does not support")
    shape = tuple(d if isinstance(d, (int, str)) else None for d in arg.shape)
    # ONNX Runtime reports unknown dims as None or as a symbolic string; 0/-1 never mean fixed
    shape = tuple(None if isinstance(d, int) and d <= 0 else d for d in shape)
    return TensorSpec(arg.name, shape, dtype)


class OrtRunner(Runner):
    """Run an ONNX file with ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        providers: short provider names in priority order (``"cpu"``, ``"cuda"``,
            ``"tensorrt"``).
        intra_op_threads: ``None``: ONNX Runtime's default session; a number: a pool of that
            many threads set up for timing (:func:`session_options`).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | str = ("cpu",),
        intra_op_threads: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"ONNX model {self.path} does not exist")
        if intra_op_threads is not None and (not isinstance(intra_op_threads, int) or intra_op_threads < 1):
            raise InputError(f"intra_op_threads must be a positive integer, got {intra_op_threads!r}")
        self.providers = (providers,) if isinstance(providers, str) else tuple(providers)
        self.intra_op_threads = intra_op_threads
        self.name = name or f"onnxruntime[{','.join(self.providers)}]"
        self._session: Any = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []

    @property
    def session(self) -> Any:
        """The underlying ``onnxruntime.InferenceSession`` (activates the runner)."""
        self.activate()
        return self._session

    def providers_in_use(self) -> list[str]:
        """Provider names the session actually registered."""
        return list(self.session.get_providers())

    def _activate(self) -> None:
        ort = import_backend("onnxruntime", "the ONNX Runtime runner")
        full = resolve_providers(self.providers)
        options = session_options(self.intra_op_threads)
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options, providers=full)
        except Exception as exc:  # onnxruntime raises pybind classes (InvalidProtobuf, Fail...)
            raise InputError(f"ONNX Runtime could not load {self.path}: {type(exc).__name__}: {exc}") from exc
        self._inputs = [_spec(a, self.path) for a in session.get_inputs()]
        self._outputs = [_spec(a, self.path) for a in session.get_outputs()]
        self._session = session

    def _deactivate(self) -> None:
        self._session = None

    def _input_specs(self) -> Sequence[TensorSpec]:
        return self._inputs

    def _output_specs(self) -> Sequence[TensorSpec]:
        return self._outputs

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [s.name for s in self._outputs]
        try:
            values = self._session.run(names, dict(feed))
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed to run {self.path}: {type(exc).__name__}: {exc}") from exc
        return dict(zip(names, values))
