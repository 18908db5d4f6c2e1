"""``cass-deploy validate``'s one library call: labelled or label-free, then the JSON.

Label-free (agreement with a teacher, :mod:`cass_deploy.evaluation.label_free`) when a teacher is
named, ``--labels none`` is given or the data has no labels (a folder of frames, a video);
otherwise recall against the labels (:func:`cass_deploy.evaluation.validate.run_validate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cass_deploy.data.frames import is_unlabelled
from cass_deploy.errors import InputError
from cass_deploy.evaluation import label_free as lf
from cass_deploy.evaluation import validate as vr
from cass_deploy.io_utils import Output, write_json
from cass_deploy.model.adapter import ModelSource


def is_label_free(data: str, teacher: str | None, teacher_source: ModelSource | None, labels: str | None) -> bool:
    """Label-free when a teacher is named, ``--labels none``, or ``data`` has no labels."""
    return bool(teacher or teacher_source or labels == "none" or is_unlabelled(data))


def validate_to(
    model: str | None,
    *,
    data: str,
    json_out: str | Path | None = None,
    force: bool = False,
    labels: str | None = None,
    reference: str | None = None,
    teacher: str | None = None,
    teacher_source: ModelSource | None = None,
    label_free: Mapping[str, Any] | None = None,
    class_map: Mapping[str, str | None] | None = None,
    **options: Any,
) -> Any:
    """``--json`` checked before anything runs, the labelled or label-free validation, then its
    record written atomically -> the run (:class:`~cass_deploy.evaluation.validate.ValidateRun`
    or :class:`~cass_deploy.evaluation.label_free.LabelFreeRun`; gate failures are in it, not
    raised). ``label_free``: the label-free options (teacher names and score, every, fps, draw);
    ``options``: those both take (images, fields, gates, providers, ...)."""
    extra = dict(label_free or {})
    target = Output(json_out, force=force, flag="--json").check() if json_out else None
    if is_label_free(data, teacher, teacher_source, labels):
        run = lf.run_label_free(
            model, data=data, teacher=teacher, teacher_source=teacher_source, class_map=class_map, **extra, **options
        )
    else:
        if extra.get("every") is not None or extra.get("fps") is not None:
            raise InputError("--every / --fps sample a video, which is validated label-free (see --teacher)")
        run = vr.run_validate(model, data=data, reference=reference, class_map=class_map, **options)
    if target is not None:
        with target.writing() as tmp:
            write_json(tmp, run.to_dict(), force=True)
    return run


__all__ = ["is_label_free", "validate_to"]
