"""``aldm edit``: the edits of one scan, written as a sample folder that export, evaluation and the web viewer read.

``OUT/sample-IIII_<subject>_<operation>/`` holds, like a generated sample (:mod:`aldm.artifacts.samples`),
``model/{<channel>,mask,seg,region}.nii.gz`` and ``native/...`` (the subject's native grid and intensities),
``sample.json``, and ``edit.json``: the edit's record (the inputs' checksums, the operation, the region of change
and the settings). Variant i uses seed ``seed + i``. Outside the region of change every voxel of the native
images and label map is the input's own; inside it the edit is blended in (:mod:`aldm.editing.editor`).
Each variant is written atomically; a re-run of the same command skips finished variants, one with other
settings is refused (``--overwrite`` starts afresh).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..artifacts.run import Run
from ..artifacts.samples import SampleRecord, SampleSet
from ..conditions import SEG_FILE, scaled_labels
from ..data.geometry import to_native, unscale_intensities
from ..diffusion.settings import GenerationSettings
from ..errors import AldmError
from ..io.atomic import sha256_file
from ..io.lock import exclusive_writer
from ..modalities import MASK_FILE, file_stems
from ..pipeline import load_pipeline
from .editor import EditedVolume, EditSettings, edit_volume
from .operations import LabelEdit, checked_new_labels, label_file_in_model_space, moved, placed_inside
from .subjects import EditSubject, load_subject, model_prep_config

REGION_FILE = "region"
EDIT_RECORD = "edit.json"
# what a re-run must ask the same as the edits already there
REQUEST_FIELDS = ("model_hash", "guidance", "sampler", "steps", "seed", "mask_subject", "mask_source", "modalities")


@dataclass(frozen=True)
class EditRequest:
    """One ``aldm edit``: the ``model`` run, the ``subject`` (:func:`aldm.editing.subjects.load_subject`), the
    ``operation``, the ``out`` folder, ``n`` variants (seeds ``settings.seed + i``), the sampler's and the edit's
    settings, ``native`` (write the native grid too), ``overwrite``, the ``device``."""

    model: str
    subject: str
    operation: LabelEdit
    out: str
    n: int = 1
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    edit: EditSettings = field(default_factory=EditSettings)
    native: bool = True
    overwrite: bool = False
    device: str | None = None


def edit_scan(request: EditRequest, log=None, pipeline=None, on_progress=None) -> list[SampleRecord]:
    """Make and write the edits of ``request`` (module docstring); returns every variant's record. ``pipeline``:
    the model's pipeline already loaded (the web server keeps one); ``on_progress(done, total, step, steps)``
    after every sampler step and every written variant (``done`` / ``total`` count this call's variants)."""
    if request.n < 1:
        raise AldmError(f"--n must be at least 1, got {request.n}")
    run = Run(request.model).require_generator()
    if run.kind != "aldm":
        raise AldmError(f"{request.model}: a {run.kind} run; editing a scan needs an ALDM run (a latent model)")
    subject = load_subject(request.subject, run.modalities, model_prep_config(run))
    _refuse_writing_inputs(request.out, subject)
    new = new_label_map(subject, request.operation, run, request.settings.seed)
    pipe = pipeline or load_pipeline(request.model, device=request.device, precision=request.settings.precision)
    settings = pipe.validate(request.settings)
    if subject.image.shape[-1] != pipe.profile.image_size:
        raise AldmError(f"{subject.source}: a {subject.image.shape[-1]}^3 subject, but the model works at "
                        f"{pipe.profile.image_size}^3; prepare the scan with the model's settings")
    samples = SampleSet(request.out)
    plan = [_planned(i, subject, request, pipe, settings) for i in range(request.n)]
    with exclusive_writer(request.out, "edit folder"):
        if request.overwrite:
            samples.remove_samples()
        samples.prepare()
        samples.check_request(plan, REQUEST_FIELDS)
        inputs = {**subject.checksums, **{p: sha256_file(p) for p in subject.native_files.values()
                                          if request.native and p and os.path.isfile(p)}}
        todo = [record for record in plan if not samples.is_finished(record.sample)]
        for done, record in enumerate(todo):
            start = time.perf_counter()
            step_callback = None if on_progress is None else (
                lambda step, steps, done=done: on_progress(done, len(todo), step, steps))
            edited = edit_volume(pipe, subject, new, settings, request.edit, record.seed, step_callback=step_callback)
            seconds = time.perf_counter() - start
            volumes = edit_volumes(subject, edited, pipe.modalities, request.native)
            document = _edit_record(subject, request, edited, inputs, seconds)
            samples.write_sample(record, volumes, {EDIT_RECORD: document})
            if log is not None:
                log(f"aldm edit: {samples.sample_dir(record.sample)} ({seconds:.1f} s)")
            if on_progress is not None:
                on_progress(done + 1, len(todo), 0, 0)
        records = [samples.read_record(p.sample) for p in plan]
        samples.write_index(records)
    return records


def _refuse_writing_inputs(out: str, subject: EditSubject) -> None:
    """An AldmError when ``out`` is a folder an input lies in (the input is never written to)."""
    folders = {os.path.realpath(os.path.dirname(p)) for p in [*subject.checksums, *subject.native_files.values()] if p}
    if os.path.realpath(out) in folders:
        raise AldmError(f"{out}: holds the input scan; write the edit to another --out folder")


def new_label_map(subject: EditSubject, operation: LabelEdit, run: Run, seed: int) -> np.ndarray:
    """The label map (S, S, S) ``operation`` asks for, checked (:func:`checked_new_labels`); a ``mask`` model
    is refused a label map with sub-regions from a file."""
    old, where = subject.labels, f"--{operation.kind}"
    if operation.kind in ("move", "grow", "shrink") and not (old > 0).any():
        raise AldmError(f"{subject.source}: has no tumour to {operation.kind}; give a label map (--labels) or "
                        "--transplant one")
    if operation.kind == "labels":
        where = operation.path
        new = label_file_in_model_space(operation.path, subject.model_affine, old.shape[0], subject.native_shape,
                                        subject.native_affine)
        if run.profile.condition == "mask" and len(set(np.unique(new).tolist()) - {0}) > 1:
            raise AldmError(f"{operation.path}: a label map with sub-regions, but {run.path} is conditioned on the "
                            "binary tumour mask (condition 'mask'); give a binary mask or use a regions model")
    elif operation.kind == "move":
        new, _ = moved(old, operation.shift_mm, subject.model_affine)
    elif operation.kind in ("grow", "shrink"):
        # a tumour grows up to the brain's edge
        new = np.where(subject.brain > 0, scaled_labels(old, operation.factor), 0)
    elif operation.kind == "transplant":
        where = operation.path
        other = load_subject(operation.path, run.modalities, model_prep_config(run)).labels
        if not (other > 0).any():
            raise AldmError(f"{operation.path}: has no tumour to transplant")
        new = placed_inside(other, subject.brain, seed)
    else:
        new = np.zeros_like(old)
    return checked_new_labels(old, new.astype(np.uint8), subject.brain, where)


def _planned(i: int, subject: EditSubject, request: EditRequest, pipe, settings: GenerationSettings) -> SampleRecord:
    """The record variant ``i`` will have."""
    op = request.operation.describe()
    e = request.edit
    source = f"edit:{op}:margin={e.margin_mm:g}mm:jumps={e.jumps}" + ("" if e.harmonise else ":raw")
    return SampleRecord(
        sample=f"sample-{i:04d}_{subject.name}_{op}", index=i, mask_subject=subject.name, mask_source=source,
        context_subject=subject.name, mask_cache=subject.cache or subject.source, seed=settings.seed + i,
        **settings.recorded(pipe.kind), precision=pipe.precision, model=os.path.abspath(request.model),
        model_hash=pipe.model_hash, stage=pipe.info.get("stage", ""), modalities=list(pipe.modalities),
        condition=pipe.profile.condition)


def edit_volumes(subject: EditSubject, edited: EditedVolume, modalities, native: bool) -> dict:
    """The files of one edit for :meth:`SampleSet.write_sample`: model space (the edited channels, the new mask,
    label map and region) and, with ``native``, the subject's native grid: the native images with the decoded
    edit blended in inside the region (resampled weight), the native label map with the new one inside it."""
    stems = file_stems(modalities)
    a = subject.model_affine
    volumes = {"model": {**{m: (edited.image[c], a, np.float32) for c, m in enumerate(stems)},
                         MASK_FILE: ((edited.labels > 0).astype(np.uint8), a, np.uint8),
                         SEG_FILE: (edited.labels, a, np.uint8),
                         REGION_FILE: (edited.region.astype(np.uint8), a, np.uint8)}}
    if native:
        volumes["native"] = _native_volumes(subject, edited, modalities, stems)
    return volumes


def _native_volumes(subject: EditSubject, edited: EditedVolume, modalities, stems) -> dict:
    """The native-grid files of an edit (see :func:`edit_volumes`)."""
    shape, affine, grid = subject.native_shape, subject.native_affine, subject.model_affine
    source = subject.native_images(modalities)
    region = to_native(edited.region.astype(np.float32), grid, shape, affine, order=0) > 0.5
    weight = np.where(region, to_native(edited.weight, grid, shape, affine, order=1), 0.0)
    decoded = unscale_intensities(to_native(edited.decoded, grid, shape, affine, order=1, fill=-1.0),
                                  subject.intensity_ranges)
    images = np.where(region[None], weight * decoded + (1.0 - weight) * source, source).astype(np.float32)
    new = np.rint(to_native(edited.labels.astype(np.float32), grid, shape, affine, order=0)).astype(np.uint8)
    old = subject.native_labels()
    labels = np.where(region, new, old).astype(np.uint8)
    return {**{m: (images[c], affine, np.float32) for c, m in enumerate(stems)},
            MASK_FILE: ((labels > 0).astype(np.uint8), affine, np.uint8), SEG_FILE: (labels, affine, np.uint8),
            REGION_FILE: (region.astype(np.uint8), affine, np.uint8)}


def _edit_record(subject: EditSubject, request: EditRequest, edited: EditedVolume, inputs: dict,
                 seconds: float) -> dict:
    """What ``edit.json`` holds: the inputs and their checksums, the operation, the region and the settings."""
    region = np.argwhere(edited.region)
    return {
        "subject": subject.source, "model": os.path.abspath(request.model), "operation": request.operation.kind,
        "operation_name": request.operation.describe(),
        "argument": {"shift_mm": request.operation.shift_mm, "factor": request.operation.factor,
                     "path": request.operation.path},
        "inputs_sha256": inputs, "margin_mm": request.edit.margin_mm, "jumps": request.edit.jumps,
        "harmonise": request.edit.harmonise,
        "region_voxels": int(edited.region.sum()),
        "region_box": [[int(a), int(b) + 1] for a, b in zip(region.min(0), region.max(0))],
        "tumour_voxels_before": int((subject.labels > 0).sum()), "tumour_voxels_after": int((edited.labels > 0).sum()),
        "seconds": round(seconds, 3),
    }
