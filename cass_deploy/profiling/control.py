"""The runtime's own ceiling on a token-pruning speed-up: the pruned blocks alone (issue 22).

A pruned graph's speed-up over dense, set against its MAC bound, mixes two things: what the pruning
machinery costs (predictor, TopK, gather, scatter-back, the parts pruning does not shrink) and how
the runtime's kernels scale with the number of tokens. This control takes the second alone: the
model's late blocks, exported twice — on all ``P`` tokens and on the ``k`` a pruner keeps, nothing
before or after them — and timed interleaved by the same method as the whole graphs. Their
speed-up over their own MAC ratio is the share of a MAC bound the runtime reaches for a pure cut
in tokens. A whole pruned graph whose share is close to it costs what a token cut costs on that
runtime, whatever the share itself is; one well below it carries overhead of its own.

Measured on the 2-core CPU with the reference detector (``benchmarks/bench_runtime.py``, three
runs): on one ONNX Runtime thread the six blocks reach 100 % of their MAC ratio at 224 of 448
tokens; on two, 82-84 %, because the 224-row GEMMs and the per-operator hand-offs between two
threads split less well than the 448-row ones (``docs/latency-method.md``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import InputError
from cass_deploy.model.interface import compute_k
from cass_deploy.profiling.latency import Comparison, TimedConfig, latency_comparison, ort_config, time_configs

torch = lazy_import("torch")
onnx_export = lazy_import("cass_deploy.export.onnx_export")

TOKENS_INPUT = "tokens"


def late_blocks(model: Any) -> Any:
    """The blocks a pruned model runs on its kept tokens, as one module ``[B, N, D]`` -> ``[B, N, D]``:
    its ``late`` stack (the reference detector's, or an adapter's such as ``examples/vit_detector.py``);
    a model without one is an InputError."""
    late = getattr(model, "late", None)
    if late is None or not len(late):
        raise InputError(f"{type(model).__name__} has no late blocks to time alone (a `late` stack of blocks)")
    return torch.nn.Sequential(*late).eval()


def token_width(blocks: Any) -> int:
    """``D`` of the tokens ``blocks`` take: the input width of their first linear layer."""
    first = next((m for m in blocks.modules() if isinstance(m, torch.nn.Linear)), None)
    if first is None:
        raise InputError("the late blocks have no linear layer to read their token width from")
    return int(first.in_features)


def blocks_config(
    model: Any, tokens: int, stack: contextlib.ExitStack, *, threads: int, label: str, keep: float | None
) -> TimedConfig:
    """A TimedConfig of ``model``'s late blocks on ``tokens`` tokens in an ONNX Runtime CPU session
    of ``threads`` threads (kept open by ``stack``; :func:`~cass_deploy.profiling.latency.ort_config`),
    exported and simplified as the whole graphs are, MACs counted from the graph."""
    blocks = late_blocks(model)
    example = torch.randn(1, tokens, token_width(blocks), generator=torch.Generator().manual_seed(0))
    proto = onnx_export.export_module(
        blocks, example, input_name=TOKENS_INPUT, output_names=["out"], what="the late blocks"
    )
    return ort_config(
        onnx_export.simplify_model(proto),
        stack,
        label=label,
        pruner_mode="none" if keep is None else "global",
        keep_ratio=keep,
        image_size=model.image_size,
        batch=1,
        threads=threads,
        feed={TOKENS_INPUT: example.numpy()},
    )


def blocks_control(model: Any, keep_ratio: float, *, threads: int, warmup: int, rounds: int) -> Comparison:
    """The late blocks of ``model`` (:func:`late_blocks`) on all ``P`` tokens of its grid against the ``k``
    its pruner keeps at ``keep_ratio``, timed interleaved on ONNX Runtime CPU with ``threads``
    threads: a :class:`~cass_deploy.profiling.latency.Comparison` whose one speed-up (``P tokens`` /
    ``k tokens``) carries its paired interval, MAC bound and share of it."""
    p = int(model.grid[0]) * int(model.grid[1])
    k = compute_k(keep_ratio, p)
    with contextlib.ExitStack() as stack:
        configs = [
            blocks_config(model, p, stack, threads=threads, label=f"{p} tokens", keep=None),
            blocks_config(model, k, stack, threads=threads, label=f"{k} tokens", keep=keep_ratio),
        ]
        results = time_configs(configs, warmup=warmup, rounds=rounds)
    comparison = latency_comparison(results)
    assert comparison is not None  # two interleaved results with samples
    return comparison
