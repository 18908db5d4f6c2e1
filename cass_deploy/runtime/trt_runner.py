"""TensorRT runner: TensorRT 10/11 named-tensor API + pycuda buffers. Imports no torch.

Importing this module never fails: ``tensorrt`` and ``pycuda`` are imported on activation.
Host buffers are page-locked and copies are asynchronous on one CUDA stream. Dynamic inputs
(batch) are set per call with ``set_input_shape``; output shapes are read back from the context.

For the profiler, one inference splits into :meth:`TrtRunner.upload` (host -> device),
:meth:`TrtRunner.infer_device_only` (enqueue + wait, timed with CUDA events, no copies) and
:meth:`TrtRunner.download` (device -> host); :meth:`TrtRunner.timed_infer` times all three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.backends.probe import import_backend, lazy_import
from cass_deploy.errors import BackendUnavailable, InputError
from cass_deploy.runtime.base import InferenceError, Runner, TensorSpec
from cass_deploy.runtime.trt_engine import load_engine

cuda = lazy_import("pycuda.driver", "pycuda")


def device_name(index: int = 0) -> str:
    """Name of CUDA device ``index`` via pycuda (for manifests and reports)."""
    import_backend("pycuda", "querying the GPU")

    cuda.init()
    return str(cuda.Device(index).name())


@dataclass
class _Buffer:
    """A page-locked host buffer and a device allocation of the same capacity (bytes)."""

    host: np.ndarray  # flat, dtype of the tensor
    device: Any  # pycuda DeviceAllocation
    capacity: int  # elements

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.host[: int(np.prod(shape, dtype=np.int64))].reshape(shape)


@dataclass(frozen=True)
class Timings:
    """Milliseconds of one :meth:`TrtRunner.timed_infer`, measured with CUDA events."""

    h2d_ms: float
    compute_ms: float
    d2h_ms: float

    @property
    def total_ms(self) -> float:
        return self.h2d_ms + self.compute_ms + self.d2h_ms

    def to_dict(self) -> dict[str, float]:
        return {"h2d_ms": self.h2d_ms, "compute_ms": self.compute_ms, "d2h_ms": self.d2h_ms, "total_ms": self.total_ms}


class TrtRunner(Runner):
    """Run a serialized TensorRT engine on CUDA device ``device``.

    Args:
        engine_path: the engine file (as written by :func:`cass_deploy.export.tensorrt_build.build_engine`
            or ``trtexec --saveEngine``).
        device: CUDA device index.
    """

    def __init__(self, engine_path: str | Path, device: int = 0, name: str | None = None) -> None:
        super().__init__()
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise InputError(f"TensorRT engine {self.path} does not exist")
        self.device = device
        self.name = name or "tensorrt"
        self._trt: Any = None
        self._cuda: Any = None
        self._ctx: Any = None
        self._loaded: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._profile_ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._buffers: dict[str, _Buffer] = {}
        self._out_shapes: dict[str, tuple[int, ...]] = {}
        self._uploaded = False

    # -- lifecycle -----------------------------------------------------------------------
    def _activate(self) -> None:

        self._trt = trt = import_backend("tensorrt", "the TensorRT runner")
        import_backend("pycuda", "the TensorRT runner")

        self._cuda = cuda
        cuda.init()
        # the primary context is the one the CUDA runtime (and so TensorRT) uses
        self._ctx = cuda.Device(self.device).retain_primary_context()
        self._ctx.push()
        try:
            self._loaded = load_engine(self.path, device=self.device)
            engine = self._loaded.engine
            self._context = engine.create_execution_context()
            if self._context is None:
                raise BackendUnavailable(
                    f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)"
                )
            self._stream = cuda.Stream()
            self._read_io(trt, engine)
        except BaseException:
            self._release()
            raise

    def _read_io(self, trt: Any, engine: Any) -> None:
        self._inputs, self._outputs, self._profile_ranges = [], [], {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            spec = TensorSpec(name, tuple(None if d < 0 else d for d in shape), dtype)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(spec)
                if any(d < 0 for d in shape):
                    lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                    self._profile_ranges[name] = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))
            else:
                self._outputs.append(spec)

    def _deactivate(self) -> None:
        self._release()

    def _release(self) -> None:
        for buf in self._buffers.values():
            buf.device.free()
        self._buffers.clear()
        self._context = None
        self._loaded = None
        self._stream = None
        self._uploaded = False
        if self._ctx is not None:
            self._ctx.pop()
            self._ctx = None

    # -- specs ---------------------------------------------------------------------------
    def _input_specs(self) -> Sequence[TensorSpec]:
        return self._inputs

    def _output_specs(self) -> Sequence[TensorSpec]:
        return self._outputs

    def profile_ranges(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """``{dynamic input: (min shape, max shape)}`` of optimisation profile 0."""
        self.activate()
        return dict(self._profile_ranges)

    def validate_feed(self, feed: Mapping[str, Any]) -> None:
        super().validate_feed(feed)
        for name, (lo, hi) in self._profile_ranges.items():
            shape = feed[name].shape
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                raise InputError(
                    f"{self.name}: input {name!r} has shape {shape}, outside the "
                    f"engine's optimisation profile {lo}..{hi}; rebuild the engine "
                    "with a wider --dynamic-batch"
                )

    # -- buffers -------------------------------------------------------------------------
    def _buffer(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> _Buffer:
        count = max(int(np.prod(shape, dtype=np.int64)), 1)
        buf = self._buffers.get(name)
        if buf is None or buf.capacity < count or buf.host.dtype != dtype:
            if buf is not None:
                buf.device.free()
            host = self._cuda.pagelocked_empty(count, dtype)
            buf = _Buffer(host=host, device=self._cuda.mem_alloc(host.nbytes), capacity=count)
            self._buffers[name] = buf
        return buf

    # -- split inference for the profiler ------------------------------------------------
    def upload(self, feed: Mapping[str, np.ndarray]) -> None:
        """Validate ``feed``, set input shapes, copy inputs to the device, bind outputs."""
        self.activate()
        self.validate_feed(feed)
        self._upload(feed)

    def _upload(self, feed: Mapping[str, np.ndarray]) -> None:
        self._uploaded = False
        context = self._context
        for spec in self._inputs:
            array = feed[spec.name]
            if not context.set_input_shape(spec.name, array.shape):
                raise InputError(f"{self.name}: TensorRT rejected shape {array.shape} for input {spec.name!r}")
            buf = self._buffer(spec.name, spec.dtype, array.shape)
            staged = buf.view(array.shape)
            np.copyto(staged, array)
            self._cuda.memcpy_htod_async(buf.device, staged, self._stream)
            context.set_tensor_address(spec.name, int(buf.device))
        self._out_shapes = {}
        for spec in self._outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise InferenceError(
                    f"{self.name}: output {spec.name!r} has a data-dependent shape {shape} "
                    "(e.g. NonZero), which this runner does not support; export a fixed-size "
                    "output (keep mask or fixed-k TopK)"
                )
            buf = self._buffer(spec.name, spec.dtype, shape)
            context.set_tensor_address(spec.name, int(buf.device))
            self._out_shapes[spec.name] = shape
        self._uploaded = True

    def _enqueue(self) -> None:
        if not self._uploaded:
            raise InferenceError(f"{self.name}: call upload(feed) before running on the device")
        if not self._context.execute_async_v3(self._stream.handle):
            raise InferenceError(f"{self.name}: TensorRT failed to enqueue {self.path}; see the TensorRT log")

    def _enqueue_download(self) -> None:
        if not self._uploaded:
            raise InferenceError(f"{self.name}: nothing to download; call upload(feed) first")
        for spec in self._outputs:
            buf = self._buffers[spec.name]
            self._cuda.memcpy_dtoh_async(buf.view(self._out_shapes[spec.name]), buf.device, self._stream)

    def _collect(self) -> dict[str, np.ndarray]:
        return {s.name: self._buffers[s.name].view(self._out_shapes[s.name]).copy() for s in self._outputs}

    def infer_device_only(self) -> float:
        """Run on the already uploaded inputs; return GPU milliseconds (CUDA events, no copies)."""
        self.activate()
        start, end = self._cuda.Event(), self._cuda.Event()
        start.record(self._stream)
        self._enqueue()
        end.record(self._stream)
        end.synchronize()
        return float(end.time_since(start))

    def download(self) -> dict[str, np.ndarray]:
        """Copy outputs to the host (waits for the stream); arrays are fresh copies."""
        self.activate()
        self._enqueue_download()
        self._stream.synchronize()
        return self._collect()

    def timed_infer(self, feed: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Timings]:
        """One inference with host->device (incl. staging), compute and device->host timed.

        Uses CUDA events on the runner's stream; the feed is validated before timing starts.
        """
        self.activate()
        self.validate_feed(feed)
        ev = [self._cuda.Event() for _ in range(4)]
        ev[0].record(self._stream)
        self._upload(feed)
        ev[1].record(self._stream)
        self._enqueue()
        ev[2].record(self._stream)
        self._enqueue_download()
        ev[3].record(self._stream)
        ev[3].synchronize()
        return self._collect(), Timings(
            h2d_ms=float(ev[1].time_since(ev[0])),
            compute_ms=float(ev[2].time_since(ev[1])),
            d2h_ms=float(ev[3].time_since(ev[2])),
        )

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._upload(feed)
        self._enqueue()
        return self.download()
