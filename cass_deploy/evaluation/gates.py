"""Release gates of ``validate``: thresholds on recall, drop, retention and mAP -> pass / fail.

Gate semantics. Every threshold is a fraction in [0, 1] (recall and retention points as
fractions: ``max_recall_drop=0.02`` allows two recall points). Comparisons allow a 1e-9 float
tolerance. A gate on a field without ground-truth objects cannot be evaluated: it is reported as
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

from cass_deploy.errors import ConfigError, GateFailed, InputError
from cass_deploy.evaluation.scoring import GROUPS, ValidationResult, counts

TOLERANCE = 1e-9


@dataclass
class Gates:
    """Pass/fail thresholds for ``validate``, each a fraction in [0, 1] or None (off).

    min_near_recall: near-field recall must reach it. max_recall_drop: for every field (far, mid,
    near) and "all", reference recall minus candidate recall must not exceed it (needs a
    reference). min_near_retention: the near field's mean retention must reach it (pruned models
    only). min_map50: mAP@0.5 must reach it.
    """

    min_near_recall: float | None = None
    max_recall_drop: float | None = None
    min_near_retention: float | None = None
    min_map50: float | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
                raise ConfigError(f"gate {f.name} must be a fraction in [0, 1], got {v!r}")

    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))


@dataclass
class GateCheck:
    """The outcome of one gate on one field. ``skipped`` checks pass and say why in ``message``."""

    name: str
    field: str | None
    value: float | None
    threshold: float
    passed: bool
    message: str
    skipped: bool = False
    reference: float | None = None

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def all_passed(checks: Sequence[GateCheck]) -> bool:
    """True when no check failed (skipped checks do not fail)."""
    return all(c.passed for c in checks)


def raise_if_failed(checks: Sequence[GateCheck]) -> None:
    """GateFailed (exit 1) naming every failing check's numbers; nothing when all passed."""
    failed = [c.message for c in checks if not c.passed]
    if failed:
        raise GateFailed("validation gate(s) failed: " + "; ".join(failed))


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


def check_gates(result: ValidationResult, reference: ValidationResult | None, gates: Gates) -> list[GateCheck]:
    """Evaluate every active gate -> one GateCheck per gate and field (see module docstring)."""
    checks: list[GateCheck] = []

    def minimum(
        name: str, fld: str | None, what: str, value: float | None, thr: float, detail: str, empty_reason: str
    ) -> None:
        if value is None:
            checks.append(GateCheck(name, fld, None, thr, True, f"{name} skipped: {empty_reason}", skipped=True))
            return
        ok = value >= thr - TOLERANCE
        verdict = "meets" if ok else "is below"
        checks.append(
            GateCheck(name, fld, value, thr, ok, f"{what} {value:.4f}{detail} {verdict} the minimum {thr:.4f}")
        )

    if gates.min_near_recall is not None:
        r = result.by_field["near"]
        minimum(
            "min_near_recall",
            "near",
            "near-field recall",
            r.recall,
            gates.min_near_recall,
            f" ({counts(r)} found)",
            "no ground-truth objects in field 'near'",
        )
    if gates.max_recall_drop is not None:
        if reference is None:
            raise ConfigError(
                "max_recall_drop compares recall with a reference model; give a reference "
                "(the dense model or a saved reference result)"
            )
        check_compatible(result, reference)
        thr = gates.max_recall_drop
        for g in GROUPS:
            cand, ref = result.by_field[g], reference.by_field[g]
            if cand.recall is None or ref.recall is None:
                checks.append(
                    GateCheck(
                        "max_recall_drop",
                        g,
                        None,
                        thr,
                        True,
                        f"max_recall_drop skipped: no ground-truth objects in field {g!r}",
                        skipped=True,
                        reference=ref.recall,
                    )
                )
                continue
            drop = ref.recall - cand.recall
            ok = drop <= thr + TOLERANCE
            verdict = "within" if ok else "more than"
            checks.append(
                GateCheck(
                    "max_recall_drop",
                    g,
                    drop,
                    thr,
                    ok,
                    f"{g} recall dropped by {drop:.4f} ({ref.recall:.4f} -> {cand.recall:.4f}, "
                    f"{counts(ref)} -> {counts(cand)}), {verdict} the allowed {thr:.4f}",
                    reference=ref.recall,
                )
            )
    if gates.min_near_retention is not None:
        if not result.pruned:
            raise ConfigError(
                f"min_near_retention needs a pruned model, but {result.name!r} returned no keep "
                f"mask (a dense model keeps every patch)"
            )
        r = result.by_field["near"]
        minimum(
            "min_near_retention",
            "near",
            "near-field mean retention",
            r.retention_mean,
            gates.min_near_retention,
            f" ({r.n_retention} objects)",
            "no ground-truth objects with patches in field 'near'",
        )
    if gates.min_map50 is not None:
        if result.map50 is None:
            raise ConfigError("min_map50 needs mAP@0.5, which was not computed for this run")
        minimum("min_map50", None, "mAP@0.5", result.map50, gates.min_map50, "", "")
    return checks
