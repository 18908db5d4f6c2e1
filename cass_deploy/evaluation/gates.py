"""Release gates of ``validate``: thresholds on recall, drop, retention and mAP -> pass / fail /
inconclusive, decided on the 95 % intervals of SPEC §7a by default.

Gate semantics. Every threshold is a fraction in [0, 1] (recall and retention points as
fractions: ``max_recall_drop=0.02`` allows two recall points). Comparisons allow a 1e-9 float
tolerance. Recall carries a Wilson interval; a drop against the reference a paired bootstrap
interval over images (``recall_drops``; unpaired, Newcombe's hybrid score interval, only when a
saved reference lacks per-image counts, and then it says so).

``gate_on="bound"`` (default):

- ``max_recall_drop d`` passes when the drop's upper bound is <= d and fails when its lower bound
  is > d. Otherwise the interval straddles d: when it is *wider than d* the set cannot resolve the
  tolerance — *inconclusive*, with the number of objects of that field that would shrink the
  interval to d (``stats.objects_to_resolve``) — else the set could resolve d and the drop is not
  shown within it: fail.
- ``min_near_recall r`` passes when the recall's lower bound is >= r and fails when its upper
  bound is < r; an interval around r is *inconclusive*, with the objects at which the observed
  recall's Wilson interval would exclude r (``stats.wilson_objects_to_decide``).

``gate_on="point"``: the point estimates decide (the intervals are still reported).
Retention and mAP gates decide on their point values (a mean of per-object fractions and a
ranking metric; no interval is claimed for them).

An inconclusive check fails closed (``passed`` False, exit 1) unless ``allow_inconclusive``.
A gate on a field without ground-truth objects cannot be evaluated: it is reported as
``skipped`` with the reason in its message and does not fail (the result table shows n_gt = 0, so
nothing passes silently). A gate that can never be evaluated for this run — a drop without a
reference, retention of a model that does not prune, mAP that was not computed — is a
ConfigError, not a skip.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cass_deploy.config import FIELDS
from cass_deploy.errors import ConfigError, GateFailed, InputError
from cass_deploy.evaluation.scoring import GROUPS, FieldReport, ValidationResult, counts
from cass_deploy.evaluation.stats import (
    objects_to_resolve,
    paired_bootstrap_drop,
    wilson_interval,
    wilson_objects_to_decide,
)
from cass_deploy.resampling import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, check_confidence, check_resamples

TOLERANCE = 1e-9
GATE_ON = ("bound", "point")
#: the thresholds of ``Gates`` (the other fields say how they are decided)
THRESHOLDS = ("min_near_recall", "max_recall_drop", "min_near_retention", "min_map50")


@dataclass
class Gates:
    """Pass/fail thresholds for ``validate``, each a fraction in [0, 1] or None (off), and how
    they are decided (module docstring).

    min_near_recall: near-field recall must reach it. max_recall_drop: for every field (far, mid,
    near) and "all", reference recall minus candidate recall must not exceed it (needs a
    reference). min_near_retention: the near field's mean retention must reach it (pruned models
    only). min_map50: mAP@0.5 must reach it. gate_on: "bound" (the interval's bound decides) or
    "point". allow_inconclusive: an inconclusive check passes (it is still reported as such).
    confidence, resamples, seed: of the intervals (Wilson, paired bootstrap).
    """

    min_near_recall: float | None = None
    max_recall_drop: float | None = None
    min_near_retention: float | None = None
    min_map50: float | None = None
    gate_on: str = "bound"
    allow_inconclusive: bool = False
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        for name in THRESHOLDS:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
                raise ConfigError(f"gate {name} must be a fraction in [0, 1], got {v!r}")
        if self.gate_on not in GATE_ON:
            raise ConfigError(f"--gate-on must be one of {list(GATE_ON)}, got {self.gate_on!r}")
        check_confidence(self.confidence)
        check_resamples(self.resamples)

    def active(self) -> bool:
        return any(getattr(self, name) is not None for name in THRESHOLDS)


PASS, FAIL, INCONCLUSIVE, SKIPPED = "pass", "fail", "inconclusive", "skipped"


@dataclass
class GateCheck:
    """The outcome of one gate on one field. ``skipped`` checks pass and say why in ``message``.

    status: pass / fail / inconclusive / skipped; ``passed`` is what the exit code follows (an
    inconclusive check passes only when allowed). lo, hi: the interval of ``value`` (None for
    point-only gates); objects_needed: for an inconclusive check, how many objects of the field
    would resolve it (None when no finite set would, e.g. a tolerance of 0); n_objects: how many
    it has.
    """

    name: str
    field: str | None
    value: float | None
    threshold: float
    passed: bool
    message: str
    skipped: bool = False
    reference: float | None = None
    status: str = ""
    lo: float | None = None
    hi: float | None = None
    objects_needed: int | None = None
    n_objects: int | None = None

    def __post_init__(self) -> None:
        if not self.status:
            self.status = SKIPPED if self.skipped else (PASS if self.passed else FAIL)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RecallDrop:
    """Reference recall minus candidate recall of one group, with its interval.

    method: "paired bootstrap" (over images, both models on the same images) or "unpaired"
    (Newcombe's hybrid score interval from the two Wilson intervals, when per-image counts are
    missing). point / lo / hi are None for a group without objects.
    """

    group: str
    point: float | None
    lo: float | None
    hi: float | None
    method: str
    n_objects: int
    reference: float | None
    candidate: float | None
    confidence: float = DEFAULT_CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _float(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _newcombe(ref: FieldReport, cand: FieldReport, confidence: float) -> tuple[float, float]:
    """Newcombe (1998) method 10 for p_ref - p_cand of independent samples, from Wilson bounds."""
    l1, u1 = wilson_interval(ref.n_matched, ref.n_gt, confidence)
    l2, u2 = wilson_interval(cand.n_matched, cand.n_gt, confidence)
    p1, p2 = ref.n_matched / ref.n_gt, cand.n_matched / cand.n_gt
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _per_image(res: ValidationResult) -> tuple[np.ndarray, np.ndarray] | None:
    pi = res.per_image
    if not pi or list(pi.get("fields", [])) != list(FIELDS):
        return None
    totals = np.asarray(pi["totals"], dtype=np.float64).reshape(-1, len(FIELDS))
    hits = np.asarray(pi["hits"], dtype=np.float64).reshape(-1, len(FIELDS))
    return hits, totals


def recall_drops(
    result: ValidationResult,
    reference: ValidationResult,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, RecallDrop]:
    """The recall drop (reference - result) of every field and "all" with its interval.

    Paired bootstrap over images (one resample matrix for all groups) when both results carry
    per-image counts; the unpaired interval otherwise. InputError when the two were not evaluated
    on the same objects (see :func:`check_compatible`).
    """
    check_compatible(result, reference)
    a, b = _per_image(reference), _per_image(result)
    paired = a is not None and b is not None
    if paired:
        (ref_hits, totals), (cand_hits, cand_totals) = a, b
        if totals.shape != cand_totals.shape or not (totals == cand_totals).all():
            raise InputError(
                "the reference and the candidate counted different objects per image; "
                "they were not evaluated on the same images in the same order"
            )
        # far, mid, near and "all" in one call: [n_images, 4]
        add_all = lambda x: np.concatenate([x, x.sum(1, keepdims=True)], axis=1)
        point, lo, hi = paired_bootstrap_drop(
            add_all(ref_hits),
            add_all(cand_hits),
            add_all(totals),
            resamples=resamples,
            seed=seed,
            confidence=confidence,
        )
    out = {}
    for i, g in enumerate(GROUPS):
        ref, cand = reference.by_field[g], result.by_field[g]
        if ref.n_gt == 0:
            out[g] = RecallDrop(g, None, None, None, "none (no objects)", 0, None, None, confidence)
            continue
        if paired:
            p, low, high = _float(point[i]), _float(lo[i]), _float(hi[i])
            method = "paired bootstrap"
        else:
            p = ref.n_matched / ref.n_gt - cand.n_matched / cand.n_gt
            low, high = _newcombe(ref, cand, confidence)
            method = "unpaired (Newcombe; no per-image counts in a result)"
        out[g] = RecallDrop(g, p, low, high, method, ref.n_gt, ref.recall, cand.recall, confidence)
    return out


def decide_max(
    point: float, lo: float, hi: float, threshold: float, gate_on: str, n_objects: int
) -> tuple[str, int | None]:
    """An upper-limit gate (the drop must be <= threshold) -> (status, objects needed)."""
    if gate_on == "point":
        return (PASS if point <= threshold + TOLERANCE else FAIL), None
    if hi <= threshold + TOLERANCE:
        return PASS, None
    if lo > threshold + TOLERANCE:
        return FAIL, None
    width = hi - lo
    if width > threshold + TOLERANCE:
        need = objects_to_resolve(n_objects, width, threshold) if threshold > 0 else None
        return INCONCLUSIVE, need
    return FAIL, None


def decide_min(point: float, lo: float, hi: float, threshold: float, gate_on: str) -> tuple[str, int | None]:
    """A lower-limit gate (the value must be >= threshold) -> (status, objects needed)."""
    if gate_on == "point":
        return (PASS if point >= threshold - TOLERANCE else FAIL), None
    if lo >= threshold - TOLERANCE:
        return PASS, None
    if hi < threshold - TOLERANCE:
        return FAIL, None
    need = wilson_objects_to_decide(point, threshold)
    return INCONCLUSIVE, (need if need > 0 else None)


def _needed_text(status: str, need: int | None, n: int, what: str) -> str:
    if status != INCONCLUSIVE:
        return ""
    if need is None:
        return f"; inconclusive: no finite set of {what} objects resolves it (has {n})"
    return f"; inconclusive: {n} {what} objects cannot resolve it, about {need} would be needed"


def all_passed(checks: Sequence[GateCheck]) -> bool:
    """True when no check failed (skipped checks do not fail)."""
    return all(c.passed for c in checks)


def raise_if_failed(checks: Sequence[GateCheck]) -> None:
    """GateFailed (exit 1) naming every failing check's numbers; nothing when all passed.
    An inconclusive check that was not allowed fails closed and says how to accept it."""
    failed = [c.message for c in checks if not c.passed]
    if failed:
        hint = (
            " (an inconclusive gate fails closed: validate on more images, or pass --allow-inconclusive)"
            if any(c.status == INCONCLUSIVE and not c.passed for c in checks)
            else ""
        )
        raise GateFailed("validation gate(s) failed: " + "; ".join(failed) + hint)


def check_compatible(result: ValidationResult, reference: ValidationResult) -> None:
    """InputError unless both results measured the same objects with the same rules."""
    for attr in ("fields", "iou_thr", "classes"):
        a, b = getattr(result, attr), getattr(reference, attr)
        if a != b:
            raise InputError(
                f"the reference was evaluated with {attr}={b!r} but the candidate with {attr}={a!r}; "
                f"re-run both with the same settings"
            )
    for g in GROUPS:
        a, b = result.by_field[g].n_gt, reference.by_field[g].n_gt
        if a != b:
            raise InputError(
                f"the reference counted {b} ground-truth objects in field {g!r}, the candidate {a}; "
                f"they were not evaluated on the same data"
            )


def check_gates(
    result: ValidationResult,
    reference: ValidationResult | None,
    gates: Gates,
    drops: dict[str, RecallDrop] | None = None,
    measure: str = "recall",
) -> list[GateCheck]:
    """Evaluate every active gate -> one GateCheck per gate and field (see module docstring).
    ``drops``: :func:`recall_drops` when already computed (else computed here when needed);
    ``measure``: what the messages call the measure (``"agreement with teacher T"`` label-free)."""
    checks: list[GateCheck] = []
    if gates.min_near_recall is not None:
        checks.append(_near_recall_check(result, gates, measure))
    if gates.max_recall_drop is not None:
        checks += _recall_drop_checks(result, reference, gates, drops, measure)
    if gates.min_near_retention is not None:
        if not result.pruned:
            raise ConfigError(
                f"min_near_retention needs a pruned model, but {result.name!r} returned no keep "
                f"mask (a dense model keeps every patch)"
            )
        r = result.by_field["near"]
        checks.append(
            _minimum_check(
                "min_near_retention",
                "near",
                "near-field mean retention",
                r.retention_mean,
                gates.min_near_retention,
                f" ({r.n_retention} objects)",
                "no ground-truth objects with patches in field 'near'",
            )
        )
    if gates.min_map50 is not None:
        if result.map50 is None:
            raise ConfigError("min_map50 needs mAP@0.5, which was not computed for this run")
        checks.append(_minimum_check("min_map50", None, "mAP@0.5", result.map50, gates.min_map50, "", ""))
    return checks


def _minimum_check(
    name: str, fld: str | None, what: str, value: float | None, thr: float, detail: str, empty_reason: str
) -> GateCheck:
    """A lower-limit gate decided on its point value; skipped (``empty_reason``) when ``value`` is None."""
    if value is None:
        return GateCheck(name, fld, None, thr, True, f"{name} skipped: {empty_reason}", skipped=True)
    ok = value >= thr - TOLERANCE
    verdict = "meets" if ok else "is below"
    return GateCheck(name, fld, value, thr, ok, f"{what} {value:.4f}{detail} {verdict} the minimum {thr:.4f}")


def _interval_check(
    name: str,
    fld: str,
    value: float,
    thr: float,
    decision: tuple[str, int | None],
    interval: tuple[float | None, float | None],
    n_objects: int,
    message: str,
    gates: Gates,
    reference: float | None = None,
) -> GateCheck:
    """A gate decided on an interval: ``decision`` (status, objects needed) from :func:`decide_min`
    / :func:`decide_max` on ``interval`` (lo, hi) of ``value``. It passes when it passed, or when it
    is inconclusive and ``gates.allow_inconclusive``."""
    status, need = decision
    passed = status == PASS or (status == INCONCLUSIVE and gates.allow_inconclusive)
    check = GateCheck(name, fld, value, thr, passed, message, reference=reference, status=status)
    check.lo, check.hi = interval
    check.objects_needed, check.n_objects = need, n_objects
    return check


def _confidence_text(gates: Gates) -> str:
    return f"{100 * gates.confidence:g} %"


def _near_recall_check(result: ValidationResult, gates: Gates, measure: str) -> GateCheck:
    """``min_near_recall``: the near field's recall (Wilson interval) against the minimum."""
    r = result.by_field["near"]
    thr = gates.min_near_recall
    if r.recall is None:
        return _minimum_check("min_near_recall", "near", "", None, thr, "", "no ground-truth objects in field 'near'")
    status, need = decide_min(r.recall, r.recall_lo, r.recall_hi, thr, gates.gate_on)
    ci = f" [{_confidence_text(gates)} {r.recall_lo:.4f}, {r.recall_hi:.4f}]"
    if gates.gate_on == "bound":
        verdict = {
            PASS: "lower bound meets",
            FAIL: "upper bound is below",
            INCONCLUSIVE: "interval straddles",
        }[status]
    else:
        verdict = "meets" if status == PASS else "is below"
    message = (
        f"near-field {measure} {r.recall:.4f} ({counts(r)} found){ci} {verdict} the minimum {thr:.4f}"
        + _needed_text(status, need, r.n_gt, "near-field")
    )
    interval = (r.recall_lo, r.recall_hi)
    return _interval_check("min_near_recall", "near", r.recall, thr, (status, need), interval, r.n_gt, message, gates)


def _recall_drop_checks(
    result: ValidationResult,
    reference: ValidationResult | None,
    gates: Gates,
    drops: dict[str, RecallDrop] | None,
    measure: str,
) -> list[GateCheck]:
    """``max_recall_drop``: one check per field and "all", on the drop's interval (``drops``, else
    :func:`recall_drops` with the gates' confidence, resamples and seed)."""
    if reference is None:
        raise ConfigError(
            "max_recall_drop compares recall with a reference model; give a reference "
            "(the dense model or a saved reference result)"
        )
    if drops is None:
        drops = recall_drops(result, reference, confidence=gates.confidence, resamples=gates.resamples, seed=gates.seed)
    return [_recall_drop_check(g, result.by_field[g], reference.by_field[g], drops[g], gates, measure) for g in GROUPS]


def _recall_drop_check(
    g: str, cand: FieldReport, ref: FieldReport, dr: RecallDrop, gates: Gates, measure: str
) -> GateCheck:
    """``max_recall_drop`` on group ``g``: reference recall minus candidate recall against the limit."""
    thr = gates.max_recall_drop
    if cand.recall is None or ref.recall is None or dr.point is None:
        return GateCheck(
            "max_recall_drop",
            g,
            None,
            thr,
            True,
            f"max_recall_drop skipped: no ground-truth objects in field {g!r}",
            skipped=True,
            reference=ref.recall,
        )
    drop = dr.point
    status, need = decide_max(drop, dr.lo, dr.hi, thr, gates.gate_on, dr.n_objects)
    if gates.gate_on == "bound":
        verdict = {
            PASS: "upper bound within",
            FAIL: "more than" if dr.lo > thr + TOLERANCE else "upper bound more than",
            INCONCLUSIVE: f"interval {dr.hi - dr.lo:.4f} wide, wider than",
        }[status]
    else:
        verdict = "within" if status == PASS else "more than"
    paired = "" if dr.method == "paired bootstrap" else f", {dr.method}"
    message = (
        f"{g} {measure} dropped by {drop:.4f} ({ref.recall:.4f} -> {cand.recall:.4f}, "
        f"{counts(ref)} -> {counts(cand)}) [{_confidence_text(gates)} {dr.lo:.4f}, {dr.hi:.4f}{paired}], "
        f"{verdict} the allowed {thr:.4f}" + _needed_text(status, need, dr.n_objects, f"{g}-field")
    )
    decision, interval = (status, need), (dr.lo, dr.hi)
    return _interval_check(
        "max_recall_drop", g, drop, thr, decision, interval, dr.n_objects, message, gates, ref.recall
    )
