"""Volumes for the viewer: synthetic samples and their real counterparts as compact uint8 arrays.

The page renders slices, window/level and the 3D view itself, so it fetches each volume once:
``uint8`` bytes in C order of a RAS+ array (X, Y, Z) with the shape in the ``X-Volume-Shape``
header. Intensities in model space lie in [-1, 1] and map linearly to 0..255; the ``mask`` channel is the
tumour's BraTS label map 0/1/2/4 where one is known (a real subject's; a sample's ``seg.nii.gz``), else the
0/1 conditioning mask.

Every path is built from validated names and then checked to lie inside its root
(:func:`inside`), so no request can reach a file outside the server's output folder or a cache.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from ..artifacts.cache import PreparedCache
from ..conditions import SEG_FILE
from ..errors import AldmError
from ..io.nifti import load_nifti
from ..modalities import KNOWN_MODALITIES, file_stems, volume_files

CHANNEL_PATTERN = "^(" + "|".join(volume_files(KNOWN_MODALITIES)) + ")$"  # any channel name aldm knows


def inside(root: str, *parts: str) -> str:
    """``root/parts...`` resolved (symlinks included); AldmError when it leaves ``root``."""
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, path]) != base:
        raise AldmError(f"{os.path.join(*parts)}: outside the served folder")
    return path


def to_uint8(volume: np.ndarray) -> np.ndarray:
    """[-1, 1] intensities -> 0..255 (values outside are clipped)."""
    return np.round((np.clip(volume, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def synthetic_volume(sample_dir: str, channel: str) -> np.ndarray:
    """A sample's model-space channel as uint8 (X, Y, Z), RAS+; ``mask``: its label map when it has one."""
    path = os.path.join(sample_dir, "model", f"{channel}.nii.gz")
    seg = os.path.join(sample_dir, "model", f"{SEG_FILE}.nii.gz")
    if channel == "mask" and os.path.isfile(seg):
        path = seg
    array, affine = load_nifti(path, scaled=False)  # header checked first; any damage is one AldmError
    data = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(array, affine)).dataobj, dtype=np.float32)
    if channel != "mask":
        return to_uint8(data)
    return np.rint(data).astype(np.uint8) if path == seg else (data > 0).astype(np.uint8)


def reference_volume(cache: str, subject: str, channel: str) -> np.ndarray:
    """The real subject's model-space channel from a prepared cache as uint8 (X, Y, Z); ``mask`` gives
    its BraTS label map (0/1/2/4). Cache arrays are already RAS+ (see aldm.data.preprocess)."""
    prepared = PreparedCache(cache)
    rows = prepared.by_subject()
    if subject not in rows:
        raise AldmError(f"{cache}: no subject {subject!r}")
    stems = file_stems(prepared.modalities)
    if channel != "mask" and channel not in stems:
        raise AldmError(f"{cache}: holds no {channel} (its modalities: {', '.join(stems)})")
    data = prepared.load(rows[subject])
    if channel == "mask":
        return np.asarray(data["labels"][0], dtype=np.uint8)
    return to_uint8(data["image"][stems.index(channel)])
