"""Numpy stand-ins for ``tensorrt`` and ``pycuda.driver`` that record the calls made.

They mirror the subset of the TensorRT 10 / 11 Python API and pycuda that
``cass_deploy.export.tensorrt_build``, ``cass_deploy.runtime.trt_engine`` and
``cass_deploy.runtime.trt_runner`` use, so those code paths run on machines without a GPU. The
names are tied to the real bindings (``tests/test_trt_api_conformance.py``): every name this
stand-in declares for a version exists in that version's ``tensorrt.so`` (``tests/fixtures/trt_names``),
and every TensorRT name the code uses (found by ``tools/trt_api.py``'s static analysis) is declared
here. They do not prove the real libraries behave the same: the ``trt``-marked tests do that on a GPU.

The "engine" carries the ONNX it was built from and computes its outputs with ONNX Runtime on the
CPU (so an engine built from a detector export runs the detector), reading and writing the fake
device memory the runner copies to and from.
"""

from __future__ import annotations

import enum
import itertools
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cass_deploy.backends import probe as backends

PLAN_MAGIC = b"FAKEPLAN"


class _Enum(enum.IntEnum):
    pass


def _list_accessors(attr: str) -> tuple[property, Callable[[Any, int], Any]]:
    """TensorRT's ``num_<x>`` property and ``get_<x>(i)`` method over the list ``self.<attr>``."""
    return property(lambda self: len(getattr(self, attr))), lambda self, i: getattr(self, attr)[i]


def make_fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # (what, args) in call order
    major = int(version.split(".")[0])

    class ILogger:
        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:  # the virtual TensorRT calls; subclasses define it
            raise NotImplementedError

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    trt.ILogger, trt.Logger = ILogger, Logger
    trt.NetworkDefinitionCreationFlag = _Enum(
        "NetworkDefinitionCreationFlag",
        {"STRONGLY_TYPED": 0} if major >= 11 else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
    )
    flags = ["GPU_FALLBACK", "VERSION_COMPATIBLE", "TF32"]
    if major < 11:
        flags = ["FP16", "INT8"] + flags
    trt.BuilderFlag = _Enum("BuilderFlag", {n: i for i, n in enumerate(flags)})
    trt.MemoryPoolType = _Enum("MemoryPoolType", {"WORKSPACE": 0})
    trt.DeviceType = _Enum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.HardwareCompatibilityLevel = _Enum("HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1})
    trt.TensorIOMode = _Enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    # DataType members and values as in TensorRT (FLOAT 0, HALF 1, INT8 2, INT32 3, BOOL 4, UINT8 5, INT64 8)
    dtypes = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_}
    dtypes |= {"UINT8": np.uint8, "INT64": np.int64}
    trt.DataType = _Enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "INT64": 8})
    trt.nptype = lambda dt: dtypes[trt.DataType(dt).name]
    onnx_dtypes = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 9: "BOOL", 2: "UINT8", 7: "INT64"}

    def record(what: str, *args: Any) -> None:
        trt.calls.append((what, args))

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        num_inputs, get_input = _list_accessors("inputs")

        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.onnx = flags, [], b""

    class OnnxParser:
        num_errors, get_error = _list_accessors("errors")

        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network, self.logger, self.errors = network, logger, []

        def parse_from_file(self, path: str) -> bool:
            import onnx

            record("parse_from_file", path)
            model = onnx.load(path)
            self.network.onnx = Path(path).read_bytes()
            inits = {t.name for t in model.graph.initializer}
            for v in model.graph.input:
                if v.name in inits:
                    continue
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(v.name, dims))
            if any(n.op_type == "NonZero" for n in model.graph.node):
                self.errors.append("In node 3 (NonZero): unsupported")
            return not self.errors

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"CACHE" + self.data[5:] + b"+"

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, list] = {}

        def set_shape(self, name: str, lo, opt, hi) -> None:
            record("set_shape", name, tuple(lo), tuple(opt), tuple(hi))
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Config:
        def __init__(self) -> None:
            self.flags: list = []
            self.profiles: list[Profile] = []
            self.cache = None
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            self.builder_optimization_level = 3
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE

        def set_memory_pool_limit(self, pool, size: int) -> None:
            record("set_memory_pool_limit", pool, size)

        def set_flag(self, flag) -> None:
            record("set_flag", flag)
            self.flags.append(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            record("create_timing_cache", bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        num_DLA_cores = 0

        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            record("create_network", flags)
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config):
            record("build_serialized_network", network.flags)
            if trt.fail_build:
                self.logger.log(Logger.ERROR, "Error Code 4: internal error (fake)")
                return None
            shapes = config.profiles[0].shapes if config.profiles else {}
            header = json.dumps({"profiles": shapes}).encode()
            return PLAN_MAGIC + len(header).to_bytes(8, "little") + header + network.onnx

    trt.fail_build = False
    trt.OnnxParser, trt.Builder = OnnxParser, Builder

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            record("deserialize_cuda_engine", len(data))
            if not data.startswith(PLAN_MAGIC):
                self.logger.log(
                    Logger.ERROR,
                    "The engine plan file is not compatible with this version of TensorRT (magic tag does not match)",
                )
                return None
            size = int.from_bytes(data[len(PLAN_MAGIC) : len(PLAN_MAGIC) + 8], "little")
            start = len(PLAN_MAGIC) + 8
            return Engine(json.loads(data[start : start + size]), bytes(data[start + size :]))

    trt.Runtime = Runtime

    class Engine:
        """The engine computes what the ONNX it was built from computes (ONNX Runtime on the CPU)."""

        def __init__(self, plan: dict, onnx_bytes: bytes) -> None:
            import onnx
            import onnxruntime as ort

            self.plan = plan
            model = onnx.load_from_string(onnx_bytes)
            inits = {t.name for t in model.graph.initializer}

            def row(v, mode):
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
                return (v.name, dims, trt.DataType[onnx_dtypes[v.type.tensor_type.elem_type]], mode)

            self.io = [row(v, trt.TensorIOMode.INPUT) for v in model.graph.input if v.name not in inits]
            self.io += [row(v, trt.TensorIOMode.OUTPUT) for v in model.graph.output]
            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.num_io_tensors = len(self.io)

        def get_tensor_name(self, i: int) -> str:
            return self.io[i][0]

        def _row(self, name: str):
            return next(r for r in self.io if r[0] == name)

        def get_tensor_shape(self, name: str):
            return self._row(name)[1]

        def get_tensor_dtype(self, name: str):
            return self._row(name)[2]

        def get_tensor_mode(self, name: str):
            return self._row(name)[3]

        def get_tensor_profile_shape(self, name: str, index: int):
            return self.plan["profiles"][name]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.shapes, self.addresses, self.out_shapes = engine, {}, {}, {}

        def set_input_shape(self, name: str, shape) -> bool:
            if name in self.engine.plan["profiles"]:
                lo, _, hi = self.engine.plan["profiles"][name]
                if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                    return False
            self.shapes[name] = tuple(shape)
            self.out_shapes = {}
            return True

        def _feed(self, read: Callable[[str, tuple, Any], np.ndarray]) -> dict[str, np.ndarray]:
            inputs = [r for r in self.engine.io if r[3] == trt.TensorIOMode.INPUT]
            return {n: read(n, self.shapes[n], trt.nptype(dt)) for n, _, dt, _ in inputs}

        def get_tensor_shape(self, name: str):
            if name in self.shapes:
                return self.shapes[name]
            if not self.out_shapes:  # what the outputs would be for these input shapes
                outs = self.engine.session.run(None, self._feed(lambda n, shape, dt: np.zeros(shape, dt)))
                names = [o.name for o in self.engine.session.get_outputs()]
                self.out_shapes = {n: tuple(o.shape) for n, o in zip(names, outs)}
            return self.out_shapes[name]

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            record("execute_async_v3", stream_handle)
            feed = self._feed(lambda n, shape, dt: FAKE_MEMORY.read(self.addresses[n], shape, dt))
            outs = self.engine.session.run(None, feed)
            for out, value in zip(self.engine.session.get_outputs(), outs):
                FAKE_MEMORY.write(self.addresses[out.name], value)
            return True

    return trt


class _Memory:
    """Fake device memory: address -> bytearray."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self.next = itertools.count(0x1000, 0x1000)

    def alloc(self, nbytes: int) -> int:
        address = next(self.next)
        self.blocks[address] = bytearray(nbytes)
        return address

    def read(self, address: int, shape, dtype) -> np.ndarray:
        count = int(np.prod(shape))
        return np.frombuffer(bytes(self.blocks[address]), dtype=dtype, count=count).reshape(shape)

    def write(self, address: int, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value).tobytes()
        self.blocks[address][: len(data)] = data


FAKE_MEMORY = _Memory()


def make_fake_pycuda() -> tuple[types.ModuleType, types.ModuleType]:
    pycuda = types.ModuleType("pycuda")
    driver = types.ModuleType("pycuda.driver")
    pycuda.driver = driver
    driver.freed = []
    driver.context_stack = []

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.address = FAKE_MEMORY.alloc(nbytes)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            driver.freed.append(self.address)

    class Context:
        def push(self) -> None:
            driver.context_stack.append(self)

        def pop(self) -> None:
            driver.context_stack.remove(self)

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        def retain_primary_context(self) -> Context:
            return Context()

        def name(self) -> str:
            return driver.gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return driver.compute_capability

    class Stream:
        handle = 42

        def synchronize(self) -> None:
            pass

    class Event:
        _clock = itertools.count(1)

        def record(self, stream: Stream | None = None) -> None:
            self.t = next(Event._clock) * 0.25

        def synchronize(self) -> None:
            pass

        def time_since(self, other: Event) -> float:
            return self.t - other.t

    def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream) -> None:
        assert src.flags.c_contiguous
        FAKE_MEMORY.write(int(dest), src)

    def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream) -> None:
        dest[...] = FAKE_MEMORY.read(int(src), dest.shape, dest.dtype)

    driver.init = lambda: None
    driver.gpu_name, driver.compute_capability = "Fake GPU", (8, 7)  # tests change them to play another GPU
    driver.get_version = lambda: (12, 6, 0)
    driver.get_driver_version = lambda: 12060
    driver.Device, driver.Stream, driver.Event = Device, Stream, Event
    driver.mem_alloc = DeviceAllocation
    driver.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return pycuda, driver


def install(monkeypatch, version: str = "10.3.0") -> types.ModuleType:
    """Put the fakes in ``sys.modules`` and make the availability probes see them."""

    trt = make_fake_tensorrt(version)
    pycuda, driver = make_fake_pycuda()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setattr(backends, "_has_module", lambda module: True)
    monkeypatch.setattr(backends, "package_version", lambda *dists: None)
    return trt
