"""The scan an edit starts from, in model space and on its native grid.

A subject is named on the command line as

* ``cache:DIR:ID``: subject ID of the prepared cache DIR (its model-space volumes; its native files are the
  ones the cache's manifest names, read when the edit is written on the native grid);
* a folder holding one case: BraTS 2021 (``<case>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``),
  BraTS 2023 (``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``) or aldm's folder layout (``t1.nii.gz``, ...,
  ``mask.nii.gz``); without a label map the scan is healthy. It is brought to model space with the
  preprocessing of the model's own cache (:mod:`aldm.data.preprocess`), so it matches what the model learnt.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..artifacts.cache import PreparedCache
from ..artifacts.run import Run
from ..conditions import SEG_FILE, brats_label_map
from ..data.preprocess import NativeVolume, PrepConfig, brain_mask, preprocess
from ..errors import AldmError
from ..io.atomic import sha256_file
from ..io.nifti import load_nifti
from ..modalities import file_stem

# file name endings of each channel and of the label map in the case layouts a subject folder may use
CASE_SUFFIXES = {"T1": ("t1", "_t1", "-t1n"), "T1c": ("t1c", "_t1ce", "-t1c"), "T2": ("t2", "_t2", "-t2w"),
                 "FLAIR": ("flair", "_flair", "-t2f"), "seg": ("mask", "seg", "_seg", "-seg")}


@dataclass
class EditSubject:
    """A scan to edit. ``image`` (C, S, S, S) float32 in [-1, 1] (channels: the model's modalities), ``labels``
    and ``brain`` (S, S, S) uint8; the geometry of its native grid and the intensity ranges that map model
    space back to it; ``native_files`` {modality: path} of its native images; ``checksums`` {path: SHA-256}
    of every input read; ``cache``: the prepared cache it comes from, if any."""

    name: str
    source: str
    image: np.ndarray
    labels: np.ndarray
    brain: np.ndarray
    model_affine: np.ndarray
    native_shape: tuple
    native_affine: np.ndarray
    intensity_ranges: list
    native_files: dict = field(default_factory=dict)
    checksums: dict = field(default_factory=dict)
    cache: str = ""  # the prepared cache it comes from ("" for a case on disk)
    _native: dict = field(default_factory=dict, repr=False, compare=False)  # native volumes already read

    def native_images(self, modalities) -> np.ndarray:
        """(C, X, Y, Z) float32: the native images of ``modalities``, as stored (scaling applied); read once."""
        key = tuple(modalities)
        if key not in self._native:
            self._native[key] = self._read_native_images(modalities)
        return self._native[key]

    def native_labels(self) -> np.ndarray:
        """(X, Y, Z) uint8: the subject's own native label map (zeros for a healthy scan); read once."""
        if SEG_FILE not in self._native:
            path = self.native_files.get(SEG_FILE)
            labels = np.zeros(self.native_shape, dtype=np.uint8)
            if path:
                values, _ = load_nifti(path, scaled=False)
                labels = brats_label_map(values, path)
            self._native[SEG_FILE] = labels
        return self._native[SEG_FILE]

    def _read_native_images(self, modalities) -> np.ndarray:
        images = []
        for modality in modalities:
            path = self.native_files.get(modality)
            if not path or not os.path.isfile(path):
                raise AldmError(f"{path or self.source}: the native {modality} image is gone; write the edit in "
                                "model space only (--model-space-only) or restore it")
            data, _ = load_nifti(path)
            images.append(data[..., 0] if data.ndim == 4 else data)
        return np.stack(images).astype(np.float32)


def model_prep_config(run: Run) -> PrepConfig:
    """How the model's cache was prepared (a case on disk is brought to model space the same way)."""
    settings = PreparedCache(run.data).settings
    if not settings:
        return PrepConfig(size=run.profile.image_size, modalities=tuple(run.modalities))
    return PrepConfig(size=int(settings["size"]), mode=settings["mode"], spacing=float(settings["spacing"]),
                      percentiles=tuple(settings["percentiles"]), modalities=tuple(run.modalities))


def load_subject(spec: str, modalities, prep: PrepConfig) -> EditSubject:
    """The subject named by ``spec`` (``cache:DIR:ID`` or a case folder, module docstring) with the channels
    ``modalities``; ``prep``: how a case on disk is brought to model space."""
    if spec.startswith("cache:"):
        folder, _, subject = spec[len("cache:"):].rpartition(":")
        if not folder or not subject:
            raise AldmError(f"{spec}: name a cache subject as cache:DIR:ID")
        return from_cache(folder, subject, modalities)
    if os.path.isdir(spec):
        return from_case(spec, modalities, prep)
    raise AldmError(f"{spec}: not a case folder nor a cache subject (cache:DIR:ID)")


def from_cache(folder: str, subject: str, modalities) -> EditSubject:
    """Subject ``subject`` of the prepared cache ``folder``, its channels reordered to ``modalities``."""
    cache = PreparedCache(folder).require()
    row = cache.subject_rows([subject])[0]
    data = cache.load(row)
    have = list(cache.modalities)
    missing = [m for m in modalities if m not in have]
    if missing:
        raise AldmError(f"{cache.file(row['file'])}: subject {subject} has no {', '.join(missing)}, which the model "
                        "needs")
    picked = [have.index(m) for m in modalities]
    return EditSubject(
        name=subject, source=f"cache:{os.path.abspath(folder)}:{subject}", image=data["image"][picked],
        labels=data["labels"][0], brain=data["brain"][0], model_affine=np.asarray(json.loads(row["model_affine"])),
        native_shape=tuple(json.loads(row["native_shape"])), native_affine=np.asarray(json.loads(row["native_affine"])),
        intensity_ranges=[json.loads(row["intensity_ranges"])[i] for i in picked],
        native_files={**{m: row.get(file_stem(m), "") for m in modalities}, SEG_FILE: row.get("mask", "")},
        checksums={cache.file(row["file"]): row["sha256"]},
        cache=os.path.abspath(folder))


def case_files(folder: str, modalities) -> tuple[dict, str | None]:
    """({modality: path}, label map path or None) of the case in ``folder``; an AldmError naming a missing
    channel."""
    names = sorted(f for f in os.listdir(folder) if f.endswith((".nii.gz", ".nii")))
    stems = {f.split(".")[0].lower(): f for f in names}

    def find(key):
        """The file whose name is, or ends in, one of ``key``'s endings."""
        endings = CASE_SUFFIXES[key]
        hits = [f for s, f in stems.items() if any(s == e or (e[0] in "_-" and s.endswith(e)) for e in endings)]
        return os.path.join(folder, hits[0]) if hits else None

    images = {m: find(m) for m in modalities}
    missing = [m for m, p in images.items() if p is None]
    if missing:
        raise AldmError(f"{folder}: no {', '.join(missing)} image (the model needs {', '.join(modalities)}; looked "
                        f"for {', '.join(CASE_SUFFIXES[missing[0]])}.nii.gz endings)")
    return images, find("seg")


def twin_of(folder: str, subject: EditSubject, prep: PrepConfig) -> EditSubject:
    """The twin of ``subject`` in ``folder`` (its scan with another tumour, or none: a case folder, its label map
    when it has one) in ``subject``'s model space and intensity units; an AldmError when it lies on another
    grid."""
    modalities = [m for m in subject.native_files if m != SEG_FILE]  # the subject's channels, in order
    twin = from_case(folder, modalities, prep, ranges=subject.intensity_ranges)
    if twin.native_shape != tuple(subject.native_shape) or not np.allclose(twin.model_affine, subject.model_affine,
                                                                             atol=1e-3):
        raise AldmError(f"{folder}: a twin on another grid than {subject.source}")
    return twin


def from_case(folder: str, modalities, prep: PrepConfig, ranges: list | None = None) -> EditSubject:
    """The case in ``folder`` brought to model space with ``prep`` (scaled by ``ranges`` when given, else by its
    own percentiles); every file checked (one line naming it)."""
    images, seg_path = case_files(folder, modalities)
    arrays, affine = [], None
    for modality in modalities:
        data, this_affine = load_nifti(images[modality])
        data = data[..., 0] if data.ndim == 4 else data
        if affine is not None and (data.shape != arrays[0].shape or not np.allclose(this_affine, affine, atol=1e-3)):
            raise AldmError(f"{images[modality]}: another grid than {os.path.basename(images[modalities[0]])} "
                            f"(shape {data.shape} vs {arrays[0].shape}, or another affine)")
        if not np.isfinite(data).all():
            raise AldmError(f"{images[modality]}: non-finite voxels (NaN or Inf)")
        arrays.append(data)
        affine = this_affine if affine is None else affine
    labels = np.zeros(arrays[0].shape, dtype=np.uint8)
    if seg_path is not None:
        values, seg_affine = load_nifti(seg_path, scaled=False)
        if values.shape != arrays[0].shape or not np.allclose(seg_affine, affine, atol=1e-3):
            raise AldmError(f"{seg_path}: a label map on another grid or affine than the images")
        labels = brats_label_map(values, seg_path)
    volume = NativeVolume(images=np.stack(arrays).astype(np.float32), labels=labels, affine=affine)
    out = preprocess(volume, PrepConfig(**{**prep.as_dict(), "modalities": tuple(modalities),
                                           "percentiles": tuple(prep.percentiles)}), ranges)
    files = [*images.values(), *([seg_path] if seg_path else [])]
    brain = out["brain"][0] if brain_mask(volume.images).any() else None
    if brain is None or not brain.any():
        raise AldmError(f"{images[modalities[0]]}: no brain voxels (an empty image)")
    return EditSubject(
        name=os.path.basename(os.path.normpath(folder)), source=os.path.abspath(folder), image=out["image"],
        labels=out["labels"][0], brain=brain, model_affine=out["affine"], native_shape=tuple(labels.shape),
        native_affine=np.asarray(affine), intensity_ranges=out["intensity_ranges"],
        native_files={**images, **({SEG_FILE: seg_path} if seg_path else {})},
        checksums={os.path.abspath(p): sha256_file(p) for p in files})
