"""The Runner contract shared by the torch, ONNX Runtime and TensorRT backends.

A runner takes and returns ``dict[str, np.ndarray]`` keyed by tensor name. :meth:`Runner.infer`
validates names, ranks, sizes and dtypes before the backend sees anything and never casts
silently. Runners are context managers: ``with OrtRunner(path) as r: r.infer(feed)``; calling
``infer`` outside ``with`` activates the runner on first use (``close()`` releases it).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cass_deploy.errors import CassDeployError, InputError

Dim = int | str | None  # int: fixed size; str: named dynamic dim; None: unnamed dynamic dim


class InferenceError(CassDeployError):
    """A backend failed while running a valid feed (device error, enqueue failure)."""

    exit_code = 1


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one runner input or output.

    ``shape`` holds an ``int`` per fixed dimension and ``None`` or a name (``"batch"``) per
    dynamic one; dynamic dimensions accept any size >= 1.
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(d if (d is None or isinstance(d, str)) else int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), tuple(data["shape"]), np.dtype(data["dtype"]))

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"


def validate_feed(specs: Sequence[TensorSpec], feed: Mapping[str, Any], runner_name: str = "runner") -> None:
    """Raise :class:`InputError` unless ``feed`` matches ``specs`` exactly (names, shapes, dtypes).

    Named dynamic dimensions must agree across inputs (``batch`` is one number per call).
    """
    if not isinstance(feed, Mapping):
        raise InputError(f"{runner_name}: the feed must be a dict of name -> numpy array, got {type(feed).__name__}")
    expected = {s.name: s for s in specs}
    missing = [n for n in expected if n not in feed]
    unexpected = [n for n in feed if n not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        if unexpected:
            parts.append(f"unexpected input(s) {', '.join(map(repr, unexpected))}")
        raise InputError(f"{runner_name}: {'; '.join(parts)}; expected " + ", ".join(str(s) for s in specs))
    named: dict[str, tuple[int, str]] = {}
    for spec in specs:
        value = feed[spec.name]
        if not isinstance(value, np.ndarray):
            raise InputError(
                f"{runner_name}: input {spec.name!r} must be a numpy array of "
                f"dtype {spec.dtype.name}, got {type(value).__name__}"
            )
        if value.dtype != spec.dtype:
            raise InputError(
                f"{runner_name}: input {spec.name!r} has dtype {value.dtype.name}, "
                f"expected {spec.dtype.name} (convert it explicitly, e.g. "
                f"x.astype(np.{spec.dtype.name}); nothing is cast silently)"
            )
        if value.ndim != len(spec.shape):
            raise InputError(
                f"{runner_name}: input {spec.name!r} has shape {value.shape} "
                f"(rank {value.ndim}), expected rank {len(spec.shape)}: {spec}"
            )
        for axis, (size, dim) in enumerate(zip(value.shape, spec.shape)):
            if isinstance(dim, int):
                if size != dim:
                    raise InputError(
                        f"{runner_name}: input {spec.name!r} has shape {value.shape}"
                        f", expected size {dim} on axis {axis}: {spec}"
                    )
            elif size < 1:
                raise InputError(
                    f"{runner_name}: input {spec.name!r} has size {size} on dynamic "
                    f"axis {axis}; dynamic sizes must be >= 1"
                )
            elif isinstance(dim, str):
                if dim in named and named[dim][0] != size:
                    other_size, other = named[dim]
                    raise InputError(
                        f"{runner_name}: dimension {dim!r} is {other_size} in {other!r} but "
                        f"{size} in {spec.name!r}; it must be the same for every input"
                    )
                named.setdefault(dim, (size, spec.name))


class Runner(abc.ABC):
    """One inference backend behind a name-keyed numpy interface.

    Subclasses implement :meth:`_activate`, :meth:`_deactivate`, :meth:`_input_specs`,
    :meth:`_output_specs` and :meth:`_infer`; the base class handles activation state and
    feed validation.
    """

    name: str = "runner"

    def __init__(self) -> None:
        self._active = False

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> Runner:
        """Load the model and allocate resources (idempotent)."""
        if not self._active:
            self._activate()
            self._active = True
        return self

    def deactivate(self) -> None:
        """Release resources (idempotent)."""
        if self._active:
            try:
                self._deactivate()
            finally:
                self._active = False

    close = deactivate

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc_info: object) -> None:
        self.deactivate()

    # -- interface -----------------------------------------------------------------------
    def input_specs(self) -> list[TensorSpec]:
        self.activate()
        return list(self._input_specs())

    def output_specs(self) -> list[TensorSpec]:
        self.activate()
        return list(self._output_specs())

    def validate_feed(self, feed: Mapping[str, Any]) -> None:
        """:class:`InputError` for missing/unexpected names, wrong rank/size, wrong dtype."""
        validate_feed(self.input_specs(), feed, self.name)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference: ``{input name: array}`` -> ``{output name: array}``."""
        self.activate()
        self.validate_feed(feed)
        return self._infer(feed)

    # -- backend hooks -------------------------------------------------------------------
    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _input_specs(self) -> Sequence[TensorSpec]: ...

    @abc.abstractmethod
    def _output_specs(self) -> Sequence[TensorSpec]: ...

    @abc.abstractmethod
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, active={self._active})"
