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
import torch
from rich.table import Table

from cass_deploy.errors import InputError
from cass_deploy.evaluation.metrics import box_iou, greedy_match
from cass_deploy.evaluation.polygraphy_judge import score_floor
from cass_deploy.evaluation.reference_outputs import save_reference_outputs
from cass_deploy.evaluation.validate import load_batches
from cass_deploy.io_utils import Output, sha256_file, write_json
from cass_deploy.model.adapter import ModelSource, load_model
from cass_deploy.model.interface import DET_OUTPUTS, HEAD_OUTPUTS, INPUT_NAME, model_stages, stage_names_in
from cass_deploy.model.pruner import band_boundaries
from cass_deploy.runtime.artefacts import make_runner, resolve_candidates, run_batches
from cass_deploy.runtime.torch_runner import TorchRunner

# fp32: identical keep sets outside ties and score error <= 1e-4; fp16 / int8: mean keep-set IoU.
# Detections (SPEC 6b outputs) are compared by matching, not raw maps: the share of the reference's
# best detections (its first det_top_share of the N rows) that the candidate has anywhere in its
# rows (same class, IoU >= det_iou), the same the other way round, the mean IoU of matched pairs
# and their largest score error.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {
        "tie_tol": 1e-4,
        "min_keep_iou": 1.0,
        "min_image_keep_iou": 1.0,
        "max_score_abs": 1e-4,
        "det_top_share": 0.5,
        "det_iou": 0.5,
        "min_det_match": 0.99,
        "min_det_matched_iou": 0.99,
        "max_det_score_abs": 1e-3,
        "det_min_score": 0.0,
    },
    "fp16": {
        "tie_tol": 5e-3,
        "min_keep_iou": 0.99,
        "min_image_keep_iou": 0.0,
        "max_score_abs": math.inf,
        "det_top_share": 0.5,
        "det_iou": 0.5,
        "min_det_match": 0.95,
        "min_det_matched_iou": 0.9,
        "max_det_score_abs": 0.05,
        "det_min_score": 0.0,
    },
    "int8": {
        "tie_tol": 5e-2,
        "min_keep_iou": 0.97,
        "min_image_keep_iou": 0.0,
        "max_score_abs": math.inf,
        "det_top_share": 0.5,
        "det_iou": 0.5,
        "min_det_match": 0.8,
        "min_det_matched_iou": 0.75,
        "max_det_score_abs": math.inf,
        # int8 detections are compared from score 0.1 up: below it an (under-)trained model's
        # rows are near-ties of the heat-map prior whose order int8 rounding reshuffles
        "det_min_score": 0.1,
    },
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
    detection_max_abs: dict[str, float]
    detection_max_rel: dict[str, float]
    detections: dict[str, float]  # matching of the SPEC 6b outputs
    thresholds: dict[str, float]
    stages: list[dict[str, Any]]  # per pruning stage (SPEC 6c; multi-stage only)
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
    stage_keys = stage_names_in(list(ref))
    for key in [n for st in stage_keys for n in (st.get("scores"), st.get("keep_mask"))]:
        if key not in cand:
            raise InputError(f"candidate {name} has no {key!r} output; it has {sorted(cand)}")
    per_groups = groups if isinstance(groups, list) else [groups] * len(stage_keys)
    stages, prev = [], None
    for st, g in zip(stage_keys, per_groups):
        stages.append(stage_fidelity(name, ref, cand, st, prev, thresholds["tie_tol"], g, threshold_logit))
        rm, cm = np.asarray(ref[st["keep_mask"]], bool), np.asarray(cand[st["keep_mask"]], bool)
        prev = rm & cm if prev is None else prev & rm & cm
    worst = min(range(len(stages)), key=lambda i: stages[i]["keep_iou_mean"])
    iou, plain = stages[worst]["iou"], stages[worst]["plain"]
    det_abs, det_rel = {}, {}
    dets = compare_detections(ref, cand, thresholds) if all(k in ref and k in cand for k in DET_OUTPUTS) else {}
    for key in ("heatmap", "box"):
        if key in ref and key in cand:
            e = np.abs(ref[key].astype(np.float64) - cand[key].astype(np.float64))
            det_abs[key] = float(e.max())
            det_rel[key] = float((e / np.maximum(np.abs(ref[key]), 1e-3)).max())
    rep = CandidateReport(
        name=name,
        precision=precision,
        images=int(iou.shape[0]),
        keep_iou_mean=float(iou.mean()),
        keep_iou_min=min(float(st["iou"].min()) for st in stages),
        plain_iou_mean=float(plain.mean()),
        mask_agreement=min(st["mask_agreement"] for st in stages),
        score_max_abs=max(st["score_max_abs"] for st in stages),
        score_max_rel=max(st["score_max_rel"] for st in stages),
        tied_patches_mean=float(sum(st["tied_patches_mean"] for st in stages)),
        detection_max_abs=det_abs,
        detection_max_rel=det_rel,
        detections=dets,
        thresholds=dict(thresholds),
        stages=[{k: v for k, v in st.items() if k not in ("iou", "plain")} for st in stages] if len(stages) > 1 else [],
    )
    t = thresholds
    bad = [k for k, v in cand.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        rep.failures.append(f"non-finite values (NaN/inf) in the candidate's {', '.join(sorted(bad))}")
    if rep.keep_iou_mean < t["min_keep_iou"] - 1e-12:
        where = f" at stage {stages[worst]['stage']}" if len(stages) > 1 else ""
        rep.failures.append(f"mean tie-aware keep-set IoU{where} {rep.keep_iou_mean:.4f} < {t['min_keep_iou']}")
    if rep.keep_iou_min < t["min_image_keep_iou"] - 1e-12:
        at = min(stages, key=lambda st: float(st["iou"].min()))
        where = f"stage {at['stage']}, " if len(stages) > 1 else ""
        rep.failures.append(
            f"{where}image {int(np.argmin(at['iou']))}: tie-aware keep-set IoU {rep.keep_iou_min:.4f} < "
            f"{t['min_image_keep_iou']} (keep sets differ outside ties)"
        )
    if rep.score_max_abs > t["max_score_abs"]:
        rep.failures.append(f"max score error {rep.score_max_abs:.3g} > {t['max_score_abs']:.3g}")
    if dets:
        for key, limit, what in (
            ("match", "min_det_match", "of the reference's detections found"),
            ("precision", "min_det_match", "of the candidate's detections in the reference"),
            ("matched_iou_mean", "min_det_matched_iou", "mean IoU of matched detections"),
        ):
            if dets[key] < t[limit] - 1e-12:
                rep.failures.append(f"{dets[key]:.4f} {what} < {t[limit]}")
        if dets["score_max_abs"] > t["max_det_score_abs"]:
            rep.failures.append(f"max detection score error {dets['score_max_abs']:.3g} > {t['max_det_score_abs']:.3g}")
    return rep


def stage_fidelity(
    name: str,
    ref: Mapping[str, np.ndarray],
    cand: Mapping[str, np.ndarray],
    keys: Mapping[str, str],
    given: np.ndarray | None,
    tie_tol: float,
    groups: np.ndarray | None = None,
    threshold_logit: float | None = None,
) -> dict[str, Any]:
    """Keep-set fidelity of one pruning stage (``keys``: its ``scores`` / ``keep_mask`` output
    names). ``given`` [N, P] bool: the patches both models kept at the earlier stages (SPEC 6c: a
    later stage is compared given the earlier stage's kept set), None for the first stage; only
    those patches are compared. Returns per-image ``iou`` / ``plain`` [N] and the summaries."""
    rs, cs = ref[keys["scores"]].astype(np.float64), cand[keys["scores"]].astype(np.float64)
    if rs.shape != cs.shape:
        raise InputError(f"candidate {name}: {keys['scores']} shape {cs.shape} differs from the reference's {rs.shape}")
    rm, cm = np.asarray(ref[keys["keep_mask"]], bool), np.asarray(cand[keys["keep_mask"]], bool)
    live = np.ones(rs.shape, bool) if given is None else given
    iou, plain = tie_aware_iou(rs, rm & live, cm & live, tie_tol, groups, threshold_logit)
    bound = boundary_scores(rs, rm & live, groups, threshold_logit)
    tied = ((np.abs(rs - bound) <= tie_tol) & live).sum(1)
    err = np.where(live, np.abs(rs - cs), 0.0)
    scale = np.maximum(np.abs(rs), 1e-6)
    suffix = keys["keep_mask"].rpartition("_")[2]
    return {
        "stage": int(suffix) if suffix.isdigit() else 1,
        "iou": iou,
        "plain": plain,
        "keep_iou_mean": float(iou.mean()),
        "keep_iou_min": float(iou.min()),
        "plain_iou_mean": float(plain.mean()),
        "mask_agreement": float(((rm == cm) | ~live).mean()),
        "score_max_abs": float(err.max()),
        "score_max_rel": float((err / scale).max()),
        "tied_patches_mean": float(tied.mean()),
        "kept_mean": float(rm.sum(1).mean()),
    }


def _det_lists(out: Mapping[str, np.ndarray], b: int, top_share: float, floor: float) -> tuple[np.ndarray, ...]:
    n = int(np.asarray(out["num_dets"]).reshape(-1)[b])
    rows = int(np.asarray(out["det_scores"]).shape[1])
    boxes = np.asarray(out["det_boxes"][b, :n], np.float64)
    scores = np.asarray(out["det_scores"][b, :n], np.float64)
    labels = np.asarray(out["det_classes"][b, :n], np.int64)
    return boxes, scores, labels, (np.arange(n) < math.ceil(top_share * rows)) & (scores >= floor)


def _one_way(a: tuple, b: tuple, iou_thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a's best detections (``above``) matched (greedy, same class, IoU >= iou_thr) among all of b's
    -> (matched [n_a_above] bool, IoU of each match, |score a - score b| of each match)."""
    boxes_a, scores_a, labels_a, above = a
    boxes_b, scores_b, labels_b, _ = b
    boxes_a, scores_a, labels_a = boxes_a[above], scores_a[above], labels_a[above]
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.zeros(len(boxes_a), bool), np.zeros(0), np.zeros(0)
    iou = box_iou(torch.from_numpy(boxes_b), torch.from_numpy(boxes_a))  # rows: b by score (sorted outputs)
    allowed = torch.from_numpy(labels_b[:, None] == labels_a[None, :])
    owner = greedy_match(iou, iou_thr, allowed).numpy()  # [n_a] row of b or -1
    hit = owner >= 0
    pair_iou = iou.numpy()[owner[hit], np.nonzero(hit)[0]]
    return hit, pair_iou, np.abs(scores_a[hit] - scores_b[owner[hit]])


def compare_detections(
    ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray], thresholds: Mapping[str, float]
) -> dict[str, float]:
    """Detections of two models in SPEC 6b's layout, compared by matching (not raw maps).

    Per image, each of the reference's best detections (its first ``det_top_share`` of the N rows,
    up to ``num_dets``) is matched to the candidate's (all its valid rows; same class, IoU >=
    ``det_iou``, greedy by score) and vice versa, so a detection that only crosses the score
    threshold or the last row in one of them (a tie) costs nothing. Rows scoring below either
    model's :func:`score_floor` are left out: two exports with different score thresholds (an
    ONNX from elsewhere records none) are compared where both report detections. Returns
    ``match`` (share of the reference's found), ``precision`` (share of the candidate's found in
    the reference), ``matched_iou_mean`` / ``matched_iou_min`` and ``score_max_abs`` over matched
    pairs, the ``score_floor`` used and the counts.
    """
    share, iou_thr = thresholds["det_top_share"], thresholds["det_iou"]
    floor = max(score_floor(ref), score_floor(cand), thresholds.get("det_min_score", 0.0))
    hits_r, hits_c, ious, errs = [], [], [], []
    for b in range(int(np.asarray(ref["num_dets"]).shape[0])):
        r, c = _det_lists(ref, b, share, floor), _det_lists(cand, b, share, floor)
        hit, pair_iou, err = _one_way(r, c, iou_thr)
        hits_r.append(hit)
        ious.append(pair_iou)
        errs.append(err)
        hits_c.append(_one_way(c, r, iou_thr)[0])
    hr, hc, iu, er = (np.concatenate(v) if v else np.zeros(0) for v in (hits_r, hits_c, ious, errs))
    return {
        "score_floor": floor,
        "n_reference": int(hr.size),
        "n_candidate": int(hc.size),
        "match": float(hr.mean()) if hr.size else 1.0,
        "precision": float(hc.mean()) if hc.size else 1.0,
        "matched_iou_mean": float(iu.mean()) if iu.size else 1.0,
        "matched_iou_min": float(iu.min()) if iu.size else 1.0,
        "score_max_abs": float(er.max()) if er.size else 0.0,
    }


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


def verify_to(
    reference: str | None,
    candidates: Sequence[str],
    *,
    json_out: str | Path | None = None,
    source: ModelSource | None = None,
    save_polygraphy: str | Path | None = None,
    force: bool = False,
    **verify_args: Any,
) -> tuple[VerifyReport, list[str]]:
    """``cass-deploy verify``: the outputs (``--json``, ``--save-polygraphy``) checked before
    anything runs, a reference required, :func:`run_verify`, then the report with its notes
    written to ``json_out`` atomically -> (report, notes)."""
    target = Output(json_out, force=force, flag="--json").check() if json_out else None
    if save_polygraphy:
        Output(save_polygraphy, force=force, kind="dir", flag="--save-polygraphy").check()
    if source is None and reference is None:
        raise InputError("verify needs --reference CHECKPOINT or --model SPEC --weights FILE")
    report, notes = run_verify(
        reference, candidates, source=source, save_polygraphy=save_polygraphy, force=force, **verify_args
    )
    if target is not None:
        with target.writing() as tmp:
            write_json(tmp, {**report.to_dict(), "notes": notes}, force=True)
    return report, notes


def run_verify(
    reference: str | None,
    candidates: Sequence[str],
    *,
    images: int = 16,
    data: str = "synthetic",
    providers: Sequence[str] = ("cpu",),
    seed: int = 0,
    source: ModelSource | None = None,
    grid: Sequence[int] | None = None,
    save_polygraphy: str | Path | None = None,
    force: bool = False,
    resize: bool | str = False,
    **threshold_overrides: float | None,
) -> tuple[VerifyReport, list[str]]:
    """Reference model vs each candidate on ``images`` images -> (report, notes).

    The reference is a checkpoint (``reference``) or a ``--model`` adapter (``source``); the
    candidates are export directories, ``.onnx`` files (another toolchain's too: ``grid`` gives
    the patch grid when its metadata has none) or engines. Keep masks are compared tie-aware,
    the SPEC 6b detections by matching (:func:`compare_detections`).

    ``save_polygraphy``: a directory for the reference inputs and torch outputs of the first
    candidate in Polygraphy's JSON format (:mod:`cass_deploy.evaluation.reference_outputs`), for
    ``polygraphy run model.engine --trt --load-inputs ... --load-outputs ...`` and ``accept``.
    ``resize``: images of a dataset directory must have the candidate's input size unless
    ``"letterbox"`` (``True``) or ``"stretch"`` (as ``validate``'s ``--resize``).
    """

    if images < 1:
        raise InputError(f"--images must be >= 1, got {images}")
    if source is None:
        if reference is None:
            raise InputError("verify needs --reference CHECKPOINT or --model SPEC --weights FILE")
        source = ModelSource(checkpoint=Path(reference))
    notes: list[str] = []
    cands = resolve_candidates(candidates, providers, notes, grid=grid)
    reports = []
    compared = 0
    cache: dict[tuple, dict[str, np.ndarray]] = {}
    models: dict[tuple, Any] = {}  # one load per geometry / pruner, shared by candidates
    for c in cands:
        m = c.meta
        step = m.batch_step
        n = (images // step) * step
        if n == 0:
            raise InputError(f"--images {images} is smaller than the candidate's fixed batch {step}")
        ckpt, key = _reference_model(source, m, models)
        _check_reference(c, ckpt, source, notes)
        key = (*key, m.parts, n, step)
        if key not in cache:
            cache[key] = _reference_outputs(ckpt.model, m, data, n, seed, resize)
        ref = cache[key]
        with make_runner(c, providers) as runner:
            cand = run_batches(runner, ref["images"], step)
        thr = thresholds_for(m.precision, **threshold_overrides)
        groups, logit = _tie_groups(ckpt.model)
        name = f"{c.kind}:{c.path}"
        reports.append(compare_outputs(name, m.precision, ref, cand, thr, groups, logit))
        if save_polygraphy is not None and not compared:  # the first candidate's reference
            origin = {
                "checkpoint": str(reference) if reference is not None else source.describe(),
                "checkpoint_sha256": ckpt.sha256,
                "candidate": str(c.path),
                "onnx_sha256": sha256_file(c.path) if c.kind == "onnx" else None,
                "image_size": list(m.image_size),
                "data": str(data),
                "seed": seed,
            }
            index = _save_reference(save_polygraphy, ref, n, step, m.precision, origin, groups, logit, force)
            notes.append(
                f"saved the reference of {c.path} for Polygraphy in {save_polygraphy}: {index['commands']['engine']}"
            )
        compared = max(compared, n)
    return VerifyReport(reference=source.describe(), images=compared, candidates=reports), notes


def _reference_model(source: ModelSource, m: Any, models: dict[tuple, Any]) -> tuple[Any, tuple]:
    """The reference model for a candidate of metadata ``m`` -> (loaded model, its key in ``models``).

    A checkpoint takes the candidate's pruner and size; an adapter or another toolchain's file is as
    built, an adapter with the candidate's keep ratio (or per-stage schedule, SPEC 6c) as exported.
    Loaded once per key into ``models``, with the candidate's detection outputs (max detections,
    raw head maps, score threshold) when it is a full model."""
    size = m.image_size
    out_names = [o["name"] for o in m.outputs]
    raw_head = set(HEAD_OUTPUTS) <= set(out_names)
    max_dets = next((o["shape"][1] for o in m.outputs if o["name"] == "det_scores" and "shape" in o), None)
    thresh = m.extra.get("det_score_thresh")
    as_exported = source.checkpoint is not None and not m.extra.get("foreign")
    stages = (m.extra.get("stages") or []) if not m.extra.get("foreign") else []
    keep = tuple(st["keep_ratio"] for st in stages) if stages else m.keep_ratio
    mkey = (size, m.pruner_mode, m.keep_ratio, raw_head, max_dets, thresh) if as_exported else (raw_head, max_dets)
    mkey = mkey if as_exported or m.extra.get("foreign") else (*mkey, keep)
    if mkey not in models:
        loaded = (
            load_model(source, pruner_mode=m.pruner_mode, keep_ratio=m.keep_ratio, image_size=size)
            if as_exported
            else load_model(source, keep_ratio=None if m.extra.get("foreign") else keep)
        )
        if hasattr(loaded.model, "set_outputs") and m.parts == "full":
            loaded.model.set_outputs(
                max_dets=max_dets if isinstance(max_dets, int) else None, raw_head=raw_head, score_thresh=thresh
            )
        models[mkey] = loaded
    return models[mkey], mkey


def _check_reference(c: Any, ckpt: Any, source: ModelSource, notes: list[str]) -> None:
    """InputError unless the reference takes the candidate's input size; a note when the candidate
    was exported from other weights (by the checkpoint sha256 its manifest records)."""
    size = c.meta.image_size
    if tuple(ckpt.model.image_size) != tuple(size):
        raise InputError(
            f"candidate {c.path} takes {size[0]}x{size[1]} images but the reference "
            f"{source.describe()} takes {ckpt.model.image_size[0]}x{ckpt.model.image_size[1]}"
        )
    src = c.meta.source_checkpoint_sha256
    if src and src != ckpt.sha256:
        notes.append(
            f"{c.path}: exported from a different checkpoint / weights (sha256 {src[:12]}…) than the "
            f"reference {source.describe()} ({ckpt.sha256[:12]}…)"
        )


def _reference_outputs(model: Any, m: Any, data: str, n: int, seed: int, resize: bool | str) -> dict[str, np.ndarray]:
    """The reference's outputs on the first ``n`` images of ``data`` at the candidate's input size, in
    batches of its ``batch_step`` -> ``{"images": float32 [n, 3, H, W], output name: [n, ...]}``."""
    # validate's loader: another image size is an error naming both unless --resize (SPEC 6b)
    imgs = load_batches(data, m.image_size, n, batch_size=n, seed=seed, resize=resize)[0]["images"].numpy()
    if len(imgs) < n:
        raise InputError(f"dataset {data!r} has {len(imgs)} images, fewer than the {n} asked for")
    imgs = imgs.astype(np.float32)
    with TorchRunner(model, part=m.parts) as ref_runner:
        return {"images": imgs, **run_batches(ref_runner, imgs, m.batch_step)}


def _tie_groups(model: Any) -> tuple[Any, float | None]:
    """(groups, threshold logit) of the model's pruner for the tie-aware comparison: its own
    ``tie_groups()``; with several stages (SPEC 6c) the band groups of each stage's pruner."""
    groups, logit = model.tie_groups() if hasattr(model, "tie_groups") else (None, None)
    if len(model_stages(model)) > 1:
        groups, logit = [band_groups(st.pruner_mode, st.grid) for st in model_stages(model)], None
    return groups, logit


def _save_reference(
    folder: str | Path,
    ref: Mapping[str, np.ndarray],
    n: int,
    step: int,
    precision: str,
    origin: dict[str, Any],
    groups: Any,
    logit: float | None,
    force: bool,
) -> dict[str, Any]:
    """The reference inputs and outputs (``ref``: ``images`` and every output, [n, ...]) in batches of
    ``step`` for Polygraphy (:func:`save_reference_outputs`); returns its index."""
    return save_reference_outputs(
        folder,
        [{INPUT_NAME: ref["images"][i : i + step]} for i in range(0, n, step)],
        [{k: v[i : i + step] for k, v in ref.items() if k != "images"} for i in range(0, n, step)],
        precision=precision,
        source=origin,
        groups=None if isinstance(groups, list) else groups,
        threshold_logit=logit,
        force=force,
    )


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
        "detections found / IoU / score err",
        "result",
    ):
        t.add_column(col, overflow="fold")
    for c in report.candidates:
        t.add_row(
            c.name,
            c.precision,
            f"{c.keep_iou_mean:.4f} / {c.keep_iou_min:.4f}"
            + "".join(
                f"\nstage {st['stage']}: {st['keep_iou_mean']:.4f} / {st['keep_iou_min']:.4f}" for st in c.stages
            ),
            f"{c.plain_iou_mean:.4f}",
            f"{c.mask_agreement:.4f}",
            f"{c.score_max_abs:.2e}",
            _det_cell(c),
            "[green]pass[/]" if c else "[red]FAIL[/]: " + "; ".join(c.failures),
        )
    return t


def _det_cell(c: CandidateReport) -> str:
    d = c.detections
    if d:
        return f"{d['match']:.3f} ({d['n_reference']}) / {d['matched_iou_mean']:.4f} / {d['score_max_abs']:.1e}"
    if c.detection_max_abs:
        return f"heatmap max abs {c.detection_max_abs.get('heatmap', float('nan')):.2e}"
    return "-"
