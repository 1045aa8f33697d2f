"""Synthetic samples on disk: the folder ``aldm generate`` writes, and checking it.

``OUT/sample-IIII_<mask subject>/`` holds ``model/{t1,t2,flair,mask}.nii.gz`` (model space),
``native/...`` (the mask subject's native grid and intensities, when written) and ``sample.json``
(how it was made + the SHA-256 of every file). A sample is written in a ``.tmp-`` folder renamed at
the end, so an interrupted run leaves no half-written sample. ``OUT/samples.csv`` indexes the
finished samples (``manifest.csv`` in folders written before version 0.2; still read). It is not the
prepared cache's ``manifest.csv`` (:mod:`aldm.data.cache`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np

from ..data.geometry import to_native, unscale_intensities
from ..errors import AldmError
from ..modalities import MASK_FILE, MODALITY_FILES
from .atomic import WRITE_ERRORS, WriteFailed, atomic_write_text, sha256_file, write_failure
from .nifti import save_nifti

SAMPLE_DONE = "sample.json"
SAMPLES_INDEX = "samples.csv"
LEGACY_SAMPLES_INDEX = "manifest.csv"
INDEX_COLUMNS = ["sample", "index", "mask_subject", "mask_source", "context_subject", "mask_cache", "seed",
                 "guidance_scale", "steps", "sampler", "precision", "model", "model_hash", "stage"]


def write_sample(out_dir: str, name: str, image: np.ndarray, item, meta: dict, native: bool = True) -> None:
    """All files of one sample, into a temp folder renamed at the end (no half-written samples).

    ``image`` (3, S, S, S) in [-1, 1]; ``item`` an :class:`aldm.data.masks.MaskItem` (mask, model affine,
    native geometry and intensity ranges); ``meta`` goes into ``sample.json`` with the files' checksums.
    ``native``: also write the volumes resampled to the mask subject's native grid and intensities."""
    final = os.path.join(out_dir, name)
    tmp = os.path.join(out_dir, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(os.path.join(tmp, "model"))
        for c, mod in enumerate(MODALITY_FILES):
            save_nifti(os.path.join(tmp, "model", f"{mod}.nii.gz"), image[c], item.model_affine)
        save_nifti(os.path.join(tmp, "model", f"{MASK_FILE}.nii.gz"), item.mask[0], item.model_affine, np.uint8)
        if native and item.native_shape is not None:
            os.makedirs(os.path.join(tmp, "native"))
            native = to_native(image, item.model_affine, item.native_shape, item.native_affine, order=1, fill=-1.0)
            background = native[0] <= -0.999
            if item.intensity_ranges:
                native = unscale_intensities(native, item.intensity_ranges)
                native[:, background] = 0.0  # skull-stripped convention of the downloads
            for c, mod in enumerate(MODALITY_FILES):
                save_nifti(os.path.join(tmp, "native", f"{mod}.nii.gz"), native[c], item.native_affine)
            mask = to_native(item.mask[0].astype(np.float32), item.model_affine, item.native_shape, item.native_affine,
                             order=0)
            save_nifti(os.path.join(tmp, "native", f"{MASK_FILE}.nii.gz"), mask.astype(np.uint8), item.native_affine,
                       np.uint8)
        meta = {**meta, "sha256": {os.path.relpath(os.path.join(d, f), tmp): sha256_file(os.path.join(d, f))
                                   for d, _, files in sorted(os.walk(tmp)) for f in sorted(files)}}
        atomic_write_text(os.path.join(tmp, SAMPLE_DONE), json.dumps(meta, indent=2) + "\n")
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        if isinstance(exc, WriteFailed):  # name the sample, not its temporary folder
            raise WriteFailed(str(exc).replace(tmp, final)) from exc
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
            raise write_failure(final, exc) from exc
        raise
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)


def verify_samples(out_dir: str) -> tuple[int, list[str]]:
    """(finished samples, problems) of an ``aldm generate`` folder: files missing or not matching the
    checksums their sample.json records, and half-written ``.tmp-`` folders a kill left behind."""
    if not os.path.isdir(out_dir):
        raise AldmError(f"{out_dir}: not a folder")
    problems, n = [], 0
    for name in sorted(os.listdir(out_dir)):
        folder = os.path.join(out_dir, name)
        if name.startswith(".tmp-"):
            problems.append(f"{folder}: unfinished sample (interrupted); re-run aldm generate to finish it")
            continue
        if not (name.startswith("sample-") and os.path.isdir(folder)):
            continue
        try:
            with open(os.path.join(folder, SAMPLE_DONE), encoding="utf-8") as fh:
                sums = json.load(fh).get("sha256", {})
        except (OSError, ValueError):
            problems.append(f"{os.path.join(folder, SAMPLE_DONE)}: missing or damaged")
            continue
        n += 1
        for rel, digest in sums.items():
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                problems.append(f"{path}: missing")
            elif sha256_file(path) != digest:
                problems.append(f"{path}: checksum mismatch (damaged or modified)")
    if n == 0 and not problems:
        raise AldmError(f"{out_dir}: no generated samples (sample-*/{SAMPLE_DONE})")
    return n, problems




def is_samples_folder(folder: str) -> bool:
    """Whether ``folder`` is an ``aldm generate`` output (its index, or the index name of older versions
    with the generation columns)."""
    if os.path.isfile(os.path.join(folder, SAMPLES_INDEX)):
        return True
    legacy = os.path.join(folder, LEGACY_SAMPLES_INDEX)
    if not os.path.isfile(legacy):
        return False
    with open(legacy, newline="", encoding="utf-8") as fh:
        return "sample" in (csv.DictReader(fh).fieldnames or [])


def write_samples_index(out_dir: str, rows: list[dict]) -> None:
    """``samples.csv``: one row per finished sample (its ``sample.json`` without the checksums)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(os.path.join(out_dir, SAMPLES_INDEX), buf.getvalue())


def read_samples_index(folder: str) -> list[dict]:
    """The rows of a generate folder's index (``samples.csv``; ``manifest.csv`` of older versions)."""
    if not is_samples_folder(folder):
        raise AldmError(f"{folder}: no {SAMPLES_INDEX}; not an aldm generate output folder")
    name = SAMPLES_INDEX if os.path.isfile(os.path.join(folder, SAMPLES_INDEX)) else LEGACY_SAMPLES_INDEX
    with open(os.path.join(folder, name), newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
