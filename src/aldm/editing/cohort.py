"""An edited cohort: N volumes made by transplanting the tumours of a few real patients into each other's scans —
real anatomy everywhere, each tumour where another patient's label map puts it — for training a segmenter
("K real + N edited", :mod:`aldm.experiments.segmentation`).

Volume i is patient ``subjects[i mod K]``'s scan with the label map of patient
``subjects[(i mod K + 1 + (i div K) mod (K - 1)) mod K]`` (never its own) placed inside its brain (where it lies
in the donor's model space when it fits, else moved whole; :func:`aldm.editing.operations.placed_inside`), with
seed ``settings.seed + i``. Written as a sample folder (model space), each volume atomically; a re-run continues.
"""

from __future__ import annotations

import os

from ..artifacts.samples import SampleRecord, SampleSet
from ..diffusion.settings import GenerationSettings
from ..errors import AldmError
from ..io.lock import exclusive_writer
from .editor import EditSettings, edit_volume
from .operations import placed_inside
from .session import edit_volumes
from .subjects import from_cache


def donor_of(i: int, k: int) -> tuple[int, int]:
    """(host index, donor index) of volume ``i`` among ``k`` patients (module docstring)."""
    host = i % k
    return host, (host + 1 + (i // k) % (k - 1)) % k


def edited_cohort(pipe, cache: str, subjects: list[str], out: str, n: int, settings: GenerationSettings,
                  edit: EditSettings = EditSettings()) -> SampleSet:
    """Write the ``n`` volumes of the module docstring for ``subjects`` of ``cache`` into ``out`` with the ALDM
    pipeline ``pipe``; returns the sample folder."""
    if len(subjects) < 2:
        raise AldmError("an edited cohort needs at least two patients (each receives another's tumour)")
    settings = pipe.validate(settings)
    patients = [from_cache(cache, name, pipe.modalities) for name in subjects]
    samples = SampleSet(out)
    with exclusive_writer(out, "edited cohort"):
        samples.prepare()
        for i in range(n):
            h, d = donor_of(i, len(patients))
            host, donor = patients[h], patients[d]
            record = SampleRecord(
                sample=f"sample-{i:04d}_{host.name}_transplant-{donor.name}", index=i, mask_subject=donor.name,
                mask_source=f"edit:transplant-{donor.name}", context_subject=host.name,
                mask_cache=os.path.abspath(cache), seed=settings.seed + i, **settings.recorded(pipe.kind),
                precision=pipe.precision, model_hash=pipe.model_hash, stage=pipe.info.get("stage", ""),
                modalities=list(pipe.modalities), condition=pipe.profile.condition)
            if samples.is_finished(record.sample):
                continue
            new = placed_inside(donor.labels, host.brain, settings.seed + i)
            edited = edit_volume(pipe, host, new, settings, edit, settings.seed + i)
            samples.write_sample(record, edit_volumes(host, edited, pipe.modalities, native=False))
        samples.write_index([samples.read_record(name) for name in samples.finished_names()])
    return samples
