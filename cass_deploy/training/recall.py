"""Recall by field with its uncertainty: per-image hit counts next to the usual validation result.

:func:`evaluate_with_hits` runs a model once over a loader and returns the
:class:`~cass_deploy.evaluation.scoring.ValidationResult` (recall, retention, mAP) plus, per image
and field (far / mid / near), how many vehicles were found at IoU 0.5 and how many there were:
the unit a paired bootstrap resamples. :func:`field_recall` turns counts into recall with Wilson
intervals (``cass_deploy.evaluation.stats``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from cass_deploy.config import FIELDS, FieldConfig
from cass_deploy.evaluation.metrics import field_of, match_image, prepare_image
from cass_deploy.evaluation.stats import paired_bootstrap_drop, wilson_interval
from cass_deploy.model.detector import PrunedDetector
from cass_deploy.training.train import evaluate_model

__all__ = ["evaluate_with_hits", "field_recall", "format_recall", "paired_bootstrap_drop", "wilson_interval"]


@torch.no_grad()
def evaluate_with_hits(
    model: PrunedDetector,
    batches: Iterable[Mapping[str, Any]],
    fields: FieldConfig,
    score_thr: float = 0.3,
    name: str = "model",
) -> tuple[Any, np.ndarray, np.ndarray]:
    """One pass of ``model`` over ``batches`` -> (ValidationResult, hits ``[N, 3]``, totals ``[N, 3]``).

    hits / totals are int64 per image (rows, in loader order) and field (columns far, mid, near):
    vehicles matched at IoU 0.5 by a detection with score >= ``score_thr`` (class-agnostic, the
    evaluator's greedy matching) and vehicles present. Their column sums equal the result's
    ``n_matched`` / ``n_gt`` per field.
    """
    batches = list(batches)
    H, W = model.image_size
    preds: list[dict] = []
    result = evaluate_model(model, batches, fields, score_thr, name=name, predictions=preds)
    hits, totals = [], []
    index = 0
    for batch, pred in zip(batches, preds):
        for b, gt_boxes in enumerate(batch["boxes"]):
            gt = {"boxes": gt_boxes, "labels": batch["labels"][b]}
            p = {k: pred[k][b] for k in ("boxes", "scores", "labels")}
            pr, g = prepare_image(p, gt, index, (H, W))
            matched = match_image(pr, g, 0.5, score_thr)
            f = field_of(g["boxes"], H, fields)
            hits.append(torch.bincount(f[matched], minlength=3)[:3])
            totals.append(torch.bincount(f, minlength=3)[:3])
            index += 1
    return result, torch.stack(hits).numpy(), torch.stack(totals).numpy()


def field_recall(hits: np.ndarray, totals: np.ndarray, confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """Pooled recall per field with a Wilson interval: ``{field: {recall, lo, hi, hits, n}}``.

    hits, totals: ``[N, 3]`` (or any ``[..., 3]``; summed over all leading axes)."""
    h = np.asarray(hits).reshape(-1, 3).sum(0)
    n = np.asarray(totals).reshape(-1, 3).sum(0)
    lo, hi = wilson_interval(h, n, confidence)
    out = {}
    for k, f in enumerate(FIELDS):
        out[f] = {
            "recall": float(h[k] / n[k]) if n[k] else None,
            "lo": None if n[k] == 0 else float(lo[k]),
            "hi": None if n[k] == 0 else float(hi[k]),
            "hits": int(h[k]),
            "n": int(n[k]),
        }
    return out


def format_recall(rec: Mapping[str, Any]) -> str:
    """``0.912 [0.88, 0.94]`` for one field entry of :func:`field_recall`."""
    if rec["recall"] is None:
        return "-"
    return f"{rec['recall']:.3f} [{rec['lo']:.2f}, {rec['hi']:.2f}]"
