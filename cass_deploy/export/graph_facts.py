"""What an exported graph is, as the backend limits and a TensorRT build need it (no torch).

One record, taken from the model before export (:meth:`GraphFacts.from_model`) or from the
manifest of an export directory (:meth:`GraphFacts.from_manifest`, the Jetson workflow), so the
export and the on-device engine build check the same limits and build with the same options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cass_deploy.backends import limits
from cass_deploy.export.tensorrt_build import BuildOptions
from cass_deploy.model.interface import INPUT_NAME
from cass_deploy.runtime.manifest import Manifest

#: the export settings a TensorRT build takes besides the graph's facts (:class:`BuildOptions` fields)
BUILD_SETTINGS = ("workspace_mib", "timing_cache", "dla_core", "gpu_fallback", "strongly_typed")


@dataclass(frozen=True)
class GraphFacts:
    """The graph's facts under the names ``backends.limits.check_request`` and the Manifest share.

    ``image_size`` is ``(H, W)``; ``k`` the global pruner's TopK, ``topk_sizes`` the band pruner's
    per-band TopK sizes; ``dynamic_batch`` is ``(min, opt, max)`` or ``None`` for a fixed batch.
    """

    precision: str
    image_size: Sequence[int]
    patch_size: int | None
    pruner_mode: str | None
    k: int | None
    topk_sizes: Sequence[int] | None
    keep_ratio: float | None
    dynamic_batch: Sequence[int] | None

    @classmethod
    def from_model(cls, model: Any, precision: str, dynamic_batch: Sequence[int] | None) -> GraphFacts:
        """The facts of ``model`` (a PrunableModel) exported at ``precision`` with ``dynamic_batch``."""
        return cls(
            precision=precision,
            image_size=model.image_size,
            patch_size=model.patch_size,
            pruner_mode=model.pruner_mode,
            k=model.k,
            topk_sizes=list(getattr(model, "topk_sizes", ()) or []),
            keep_ratio=getattr(model, "keep_ratio", None),
            dynamic_batch=dynamic_batch,
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> GraphFacts:
        """The facts an export recorded in its manifest."""
        return cls(**{f.name: getattr(manifest, f.name) for f in dataclasses.fields(cls)})

    def check(
        self, target: str, *, ops: Iterable[str] = (), dla_core: int | None = None, gpu_fallback: bool = True
    ) -> list[str]:
        """:func:`backends.limits.check_request` for this graph on ``target``: refuses what it cannot run
        (:class:`LimitError`), returns informational notes."""
        facts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return limits.check_request(target, ops=ops, dla_core=dla_core, gpu_fallback=gpu_fallback, **facts)

    def build_options(self, **settings: Any) -> BuildOptions:
        """:class:`BuildOptions` for this graph: its precision, an optimisation profile over its
        dynamic batch (``[B, 3, H, W]`` at min, opt, max) and ``settings`` (:data:`BUILD_SETTINGS`)."""
        profiles = {}
        if self.dynamic_batch is not None:
            H, W = self.image_size
            profiles = {INPUT_NAME: tuple((b, 3, H, W) for b in self.dynamic_batch)}
        return BuildOptions(precision=self.precision, profiles=profiles, **settings)
