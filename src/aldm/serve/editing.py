"""Scan edits in the web UI: which patients a model offers, the edit a job asks for (validated when it is
submitted, like a generation request) and running it (:mod:`aldm.editing`)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..artifacts.cache import PreparedCache
from ..artifacts.run import Run
from ..diffusion.settings import GenerationSettings
from ..editing.operations import LabelEdit
from ..editing.session import EditRequest, edit_scan, new_label_map
from ..editing.subjects import load_subject, model_prep_config
from ..errors import AldmError
from .models import ModelEntry

SUBJECT = r"^[A-Za-z0-9._-]{1,160}$"


class EditSpec(BaseModel):
    """An edit of a held-out patient (GET /api/models/{id}/subjects): ``operation`` with its argument —
    ``shift_mm`` [dx, dy, dz] for move, ``factor`` for grow (> 1) / shrink (< 1), ``donor`` (another listed
    patient) for transplant."""

    model_config = ConfigDict(extra="forbid")
    subject: str = Field(pattern=SUBJECT, description="a patient from GET /api/models/{id}/subjects")
    operation: Literal["move", "grow", "shrink", "remove", "transplant"]
    shift_mm: list[float] | None = Field(None, min_length=3, max_length=3, description="move: mm, RAS")
    factor: float | None = Field(None, ge=0.1, le=3, description="grow (> 1) or shrink (< 1) the diameter")
    donor: str | None = Field(None, pattern=SUBJECT, description="transplant: the patient whose tumour goes in")

    @field_validator("shift_mm")
    @classmethod
    def _finite_shift(cls, value):
        if value is not None and not all(math.isfinite(v) and abs(v) <= 200 for v in value):
            raise ValueError("shift_mm must be three finite distances of at most 200 mm")
        return value


def edit_subjects(entry: ModelEntry) -> list[str]:
    """The patients a model offers for editing: its held-out test subjects (never the few-shot ones), or every
    subject of its cache for a model without a split."""
    if not entry.data:
        return []
    split = Run(entry.path).split()
    if split is not None:
        return list(split["test"])
    return [r["subject"] for r in PreparedCache(entry.data).rows()]


def label_edit(entry: ModelEntry, spec: EditSpec) -> LabelEdit:
    """The :class:`~aldm.editing.operations.LabelEdit` of ``spec`` (an AldmError for what it cannot be)."""
    offered = set(edit_subjects(entry))
    for name in (spec.subject, spec.donor):
        if name is not None and name not in offered:
            raise AldmError(f"{name} is not one of the patients model {entry.id} offers")
    if spec.operation == "transplant":
        if spec.donor is None:
            raise AldmError("transplant needs a donor patient")
        return LabelEdit("transplant", path=f"cache:{entry.data}:{spec.donor}")
    if spec.operation == "move":
        return LabelEdit("move", shift_mm=tuple(spec.shift_mm) if spec.shift_mm else None)
    if spec.operation in ("grow", "shrink"):
        return LabelEdit(spec.operation, factor=spec.factor)
    return LabelEdit("remove")


def check_edit(entry: ModelEntry, spec: EditSpec, seed: int) -> None:
    """Refuse (AldmError) what the edit job would fail on: a non-ALDM model, a patient not offered, an argument
    the operation cannot take, a tumour leaving the brain, an edit that changes nothing."""
    if entry.kind != "aldm":
        raise AldmError(f"model {entry.id} is a {entry.kind}; editing a scan needs an ALDM model")
    operation = label_edit(entry, spec)
    run = Run(entry.path)
    subject = load_subject(f"cache:{entry.data}:{spec.subject}", run.modalities, model_prep_config(run))
    new_label_map(subject, operation, run, seed)


def run_edit_job(entry: ModelEntry, pipe, job: dict, out: str, on_progress) -> None:
    """The edit of ``job`` (its "edit" spec, n variants, sampler settings) written to ``out``."""
    spec = EditSpec(**job["edit"])
    request = EditRequest(model=entry.path, subject=f"cache:{entry.data}:{spec.subject}",
                          operation=label_edit(entry, spec), out=out, n=job["n"],
                          settings=GenerationSettings(guidance=job["guidance"], sampler=job["sampler"],
                                                      steps=job["steps"], seed=job["seed"]))
    edit_scan(request, pipeline=pipe, on_progress=on_progress)
