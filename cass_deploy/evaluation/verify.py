"""Mask fidelity: does the deployed keep set equal the trained one?

Tie order differs between torch, ONNX Runtime and TensorRT, and lower precisions move scores
a little, so keep sets are compared **tie-aware**: a patch whose reference score lies within
``tie_tol`` of its group's decision boundary (the k-th score of the image, or of its band for
the band pruner, or the threshold) is interchangeable with any other such patch. With
``A`` the reference keep set, ``B`` the candidate's and ``T`` the tied patches::

    matched = |A ∩ B \\ T| + min(|A ∩ T|, |B ∩ T|)        IoU = matched / (|A| + |B| - matched)

so choosing different members of a tie costs nothing, and anything else does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from cass_deploy.data.factory import load_dataset
from cass_deploy.errors import InputError
from cass_deploy.evaluation.reference_outputs import save_reference_outputs
from cass_deploy.io_utils import sha256_file
from cass_deploy.model.checkpoint import load_checkpoint
from cass_deploy.model.interface import INPUT_NAME
from cass_deploy.model.pruner import band_boundaries
from cass_deploy.runtime.artefacts import make_runner, resolve_candidates, run_batches
from cass_deploy.runtime.torch_runner import TorchRunner

# fp32: identical keep sets outside ties and score error <= 1e-4; fp16 / int8: mean keep-set IoU.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"tie_tol": 1e-4, "min_keep_iou": 1.0, "min_image_keep_iou": 1.0, "max_score_abs": 1e-4},
    "fp16": {"tie_tol": 5e-3, "min_keep_iou": 0.99, "min_image_keep_iou": 0.0, "max_score_abs": math.inf},
    "int8": {"tie_tol": 5e-2, "min_keep_iou": 0.97, "min_image_keep_iou": 0.0, "max_score_abs": math.inf},
}


def thresholds_for(precision: str, **overrides: float | None) -> dict[str, float]:
    """Default thresholds of ``precision`` with non-None ``overrides`` applied."""
    if precision not in DEFAULT_THRESHOLDS:
        raise InputError(f"unknown precision {precision!r}; expected one of {sorted(DEFAULT_THRESHOLDS)}")
    out = dict(DEFAULT_THRESHOLDS[precision])
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in out:
            raise InputError(f"unknown threshold {k!r}")
        if not (isinstance(v, (int, float)) and v >= 0):
            raise InputError(f"threshold {k} must be a number >= 0, got {v!r}")
        out[k] = float(v)
    return out


def boundary_scores(
    scores: np.ndarray, ref_mask: np.ndarray, groups: np.ndarray | None = None, threshold: float | None = None
) -> np.ndarray:
    """Decision boundary per patch -> [B, P]: the lowest kept reference score of its group
    (image, or image x band), or ``threshold`` (logit) for the threshold pruner."""
    if threshold is not None:
        return np.full(scores.shape, threshold, dtype=np.float64)
    B, P = scores.shape
    g = np.zeros(P, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    G = int(g.max()) + 1
    kept = np.where(ref_mask, scores.astype(np.float64), np.inf)
    low = np.full((B, G), np.inf)
    np.minimum.at(low, (np.arange(B)[:, None].repeat(P, 1), g[None, :].repeat(B, 0)), kept)
    return low[:, g]


def tie_aware_iou(
    ref_scores: np.ndarray,
    ref_mask: np.ndarray,
    cand_mask: np.ndarray,
    tie_tol: float,
    groups: np.ndarray | None = None,
    threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (tie-aware IoU [B], plain IoU [B]) of keep masks [B, P] (bool)."""
    a = np.asarray(ref_mask, dtype=bool)
    b = np.asarray(cand_mask, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"keep masks differ in shape: reference {a.shape}, candidate {b.shape}")
    bound = boundary_scores(ref_scores, a, groups, threshold)
    tie = np.abs(ref_scores.astype(np.float64) - bound) <= tie_tol
    both = (a & b & ~tie).sum(1)
    matched = both + np.minimum((a & tie).sum(1), (b & tie).sum(1))
    na, nb = a.sum(1), b.sum(1)
    union = na + nb - matched
    iou = np.where(union > 0, matched / np.maximum(union, 1), 1.0)
    inter = (a & b).sum(1)
    plain_union = (a | b).sum(1)
    plain = np.where(plain_union > 0, inter / np.maximum(plain_union, 1), 1.0)
    return iou, plain


@dataclass
class CandidateReport:
    """Fidelity of one candidate against the reference; truthy when every threshold holds."""

    name: str
    precision: str
    images: int
    keep_iou_mean: float
    keep_iou_min: float
    plain_iou_mean: float
    mask_agreement: float
    score_max_abs: float
    score_max_rel: float
    tied_patches_mean: float
    detection_max_abs: dict[str, float] = field(default_factory=dict)
    detection_max_rel: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.failures

    @property
    def passed(self) -> bool:
        return bool(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["thresholds"] = {k: (None if math.isinf(v) else v) for k, v in self.thresholds.items()}
        return d


def compare_outputs(
    name: str,
    precision: str,
    ref: Mapping[str, np.ndarray],
    cand: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    groups: np.ndarray | None = None,
    threshold_logit: float | None = None,
) -> CandidateReport:
    """Compare concatenated outputs (``scores`` [N, P], ``keep_mask`` [N, P], optional
    ``heatmap`` / ``box``) of a reference and a candidate."""
    for key in ("scores", "keep_mask"):
        if key not in cand:
            raise InputError(f"candidate {name} has no {key!r} output; it has {sorted(cand)}")
    rs, cs = ref["scores"].astype(np.float64), cand["scores"].astype(np.float64)
    if rs.shape != cs.shape:
        raise InputError(f"candidate {name}: scores shape {cs.shape} differs from the reference's {rs.shape}")
    iou, plain = tie_aware_iou(rs, ref["keep_mask"], cand["keep_mask"], thresholds["tie_tol"], groups, threshold_logit)
    bound = boundary_scores(rs, np.asarray(ref["keep_mask"], bool), groups, threshold_logit)
    tied = (np.abs(rs - bound) <= thresholds["tie_tol"]).sum(1)
    err = np.abs(rs - cs)
    scale = np.maximum(np.abs(rs), 1e-6)
    det_abs, det_rel = {}, {}
    for key in ("heatmap", "box"):
        if key in ref and key in cand:
            e = np.abs(ref[key].astype(np.float64) - cand[key].astype(np.float64))
            det_abs[key] = float(e.max())
            det_rel[key] = float((e / np.maximum(np.abs(ref[key]), 1e-3)).max())
    rep = CandidateReport(
        name=name,
        precision=precision,
        images=int(rs.shape[0]),
        keep_iou_mean=float(iou.mean()),
        keep_iou_min=float(iou.min()),
        plain_iou_mean=float(plain.mean()),
        mask_agreement=float((np.asarray(ref["keep_mask"]) == np.asarray(cand["keep_mask"])).mean()),
        score_max_abs=float(err.max()),
        score_max_rel=float((err / scale).max()),
        tied_patches_mean=float(tied.mean()),
        detection_max_abs=det_abs,
        detection_max_rel=det_rel,
        thresholds=dict(thresholds),
    )
    t = thresholds
    bad = [k for k, v in cand.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        rep.failures.append(f"non-finite values (NaN/inf) in the candidate's {', '.join(sorted(bad))}")
    if rep.keep_iou_mean < t["min_keep_iou"] - 1e-12:
        rep.failures.append(f"mean tie-aware keep-set IoU {rep.keep_iou_mean:.4f} < {t['min_keep_iou']}")
    if rep.keep_iou_min < t["min_image_keep_iou"] - 1e-12:
        worst = int(np.argmin(iou))
        rep.failures.append(
            f"image {worst}: tie-aware keep-set IoU {rep.keep_iou_min:.4f} < "
            f"{t['min_image_keep_iou']} (keep sets differ outside ties)"
        )
    if rep.score_max_abs > t["max_score_abs"]:
        rep.failures.append(f"max score error {rep.score_max_abs:.3g} > {t['max_score_abs']:.3g}")
    return rep


@dataclass
class VerifyReport:
    reference: str
    images: int
    candidates: list[CandidateReport]

    def __bool__(self) -> bool:
        return all(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "images": self.images,
            "passed": bool(self),
            "candidates": [c.to_dict() for c in self.candidates],
        }


def band_groups(
    pruner_mode: str | None, grid: Sequence[int], bands: int = 3, band_rows: Sequence[int] | None = None
) -> np.ndarray | None:
    """Band index per patch [P] for the band pruner (None for other modes)."""
    if pruner_mode != "band":
        return None

    Hp, Wp = (int(v) for v in grid)
    bounds = band_boundaries(Hp, bands, band_rows)
    rows = np.searchsorted(np.asarray(bounds[1:]), np.arange(Hp), side="right")
    return np.repeat(rows, Wp)


# --------------------------------------------------------------------------- end to end


def run_verify(
    reference: str,
    candidates: Sequence[str],
    *,
    images: int = 16,
    data: str = "synthetic",
    providers: Sequence[str] = ("cpu",),
    seed: int = 0,
    save_polygraphy: str | Path | None = None,
    force: bool = False,
    **threshold_overrides: float | None,
) -> tuple[VerifyReport, list[str]]:
    """Reference checkpoint vs each candidate on ``images`` images -> (report, notes).

    ``save_polygraphy``: a directory for the reference inputs and torch outputs of the first
    candidate in Polygraphy's JSON format (:mod:`cass_deploy.evaluation.reference_outputs`), for
    ``polygraphy run model.engine --trt --load-inputs ... --load-outputs ...`` and ``accept``.
    """

    if images < 1:
        raise InputError(f"--images must be >= 1, got {images}")
    notes: list[str] = []
    cands = resolve_candidates(candidates, providers, notes)
    reports = []
    compared = 0
    cache: dict[tuple, dict[str, np.ndarray]] = {}
    models: dict[tuple, Any] = {}  # one load per geometry / pruner, shared by candidates
    for c in cands:
        m = c.meta
        size = m.image_size
        step = m.batch_step
        n = (images // step) * step
        if n == 0:
            raise InputError(f"--images {images} is smaller than the candidate's fixed batch {step}")
        key = (size, m.pruner_mode, m.keep_ratio, m.parts, n, step)
        mkey = (size, m.pruner_mode, m.keep_ratio)
        if mkey not in models:
            models[mkey] = load_checkpoint(
                reference, pruner_mode=m.pruner_mode, keep_ratio=m.keep_ratio, image_size=size
            )
        ckpt = models[mkey]
        src = m.source_checkpoint_sha256
        if src and src != ckpt.sha256:
            notes.append(
                f"{c.path}: exported from a different checkpoint (sha256 {src[:12]}…) than the "
                f"reference {reference} ({ckpt.sha256[:12]}…)"
            )
        if key not in cache:
            ds = load_dataset(data, split="val", num_images=n, image_size=size, seed=seed)
            if len(ds) < n:
                raise InputError(f"dataset {data!r} has {len(ds)} images, fewer than the {n} asked for")
            imgs = np.stack([ds[i]["image"].numpy() for i in range(n)]).astype(np.float32)
            with TorchRunner(ckpt.model, part=m.parts) as ref_runner:
                cache[key] = {"images": imgs, **run_batches(ref_runner, imgs, step)}
        ref = cache[key]
        with make_runner(c, providers) as runner:
            cand = run_batches(runner, ref["images"], step)
        thr = thresholds_for(m.precision, **threshold_overrides)
        pr = ckpt.model.cfg.pruner
        groups = band_groups(pr.mode, ckpt.model.grid, pr.bands, pr.band_rows)
        logit = None
        if pr.mode == "threshold":
            logit = math.log(pr.threshold / (1 - pr.threshold))
        name = f"{c.kind}:{c.path}"
        reports.append(compare_outputs(name, m.precision, ref, cand, thr, groups, logit))
        if save_polygraphy is not None and not compared:  # the first candidate's reference
            index = save_reference_outputs(
                save_polygraphy,
                [{INPUT_NAME: ref["images"][i : i + step]} for i in range(0, n, step)],
                [{k: v[i : i + step] for k, v in ref.items() if k != "images"} for i in range(0, n, step)],
                precision=m.precision,
                source={
                    "checkpoint": str(reference),
                    "checkpoint_sha256": ckpt.sha256,
                    "candidate": str(c.path),
                    "onnx_sha256": sha256_file(c.path) if c.kind == "onnx" else None,
                    "image_size": list(size),
                    "data": str(data),
                    "seed": seed,
                },
                groups=groups,
                threshold_logit=logit,
                force=force,
            )
            notes.append(
                f"saved the reference of {c.path} for Polygraphy in {save_polygraphy}: {index['commands']['engine']}"
            )
        compared = max(compared, n)
    return VerifyReport(reference=str(reference), images=compared, candidates=reports), notes


def report_table(report: VerifyReport):
    """rich Table of a VerifyReport."""

    t = Table(title=f"keep-mask fidelity vs {report.reference} ({report.images} images)")
    for col in (
        "candidate",
        "prec",
        "keep IoU mean / min (tie-aware)",
        "plain IoU",
        "mask agree",
        "score max abs",
        "heatmap max abs",
        "result",
    ):
        t.add_column(col, overflow="fold")
    for c in report.candidates:
        t.add_row(
            c.name,
            c.precision,
            f"{c.keep_iou_mean:.4f} / {c.keep_iou_min:.4f}",
            f"{c.plain_iou_mean:.4f}",
            f"{c.mask_agreement:.4f}",
            f"{c.score_max_abs:.2e}",
            f"{c.detection_max_abs.get('heatmap', float('nan')):.2e}" if c.detection_max_abs else "-",
            "[green]pass[/]" if c else "[red]FAIL[/]: " + "; ".join(c.failures),
        )
    return t
