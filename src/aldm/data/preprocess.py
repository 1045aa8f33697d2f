"""Loading, verification (nnU-Net style) and preprocessing of one subject into model space.

``load_and_verify(record)`` reads the T1, T2, FLAIR and mask NIfTIs once and lists every problem
as one line naming the file. ``preprocess(volume, config)`` maps a verified subject to the model
space with MONAI transforms:

1. reorient to RAS;
2. crop to the brain (union of non-zero voxels of the three modalities);
3. ``resize`` mode (the paper reference): resample the brain box at 1 mm, then resize it to a
   ``size``^3 cube (anisotropic scaling); ``crop-pad`` mode: resample to ``spacing`` mm and
   centre-crop or pad the brain box to ``size``^3 (isotropic, no distortion);
4. scale each modality by its 1st-99th percentile of brain voxels to [-1, 1], background -1.

The model-space affine (model voxel -> native world mm) travels through every transform
(MONAI MetaTensor), so a generated volume maps back onto the native grid exactly
(:func:`aldm.data.geometry.to_native`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    Orientationd,
    Resized,
    ResizeWithPadOrCropd,
    Spacingd,
)

from ..errors import AldmError
from ..io.nifti import load_nifti
from ..modalities import DEFAULT_MODALITIES
from .cohorts import ALLOWED_LABELS, DEFAULT_ALLOWED_LABELS, MODES, SubjectRecord


@dataclass(frozen=True)
class PrepConfig:
    """How volumes are brought to model space; saved with the cache."""

    size: int = 112
    mode: str = "resize"
    spacing: float = 1.5  # crop-pad mode only (mm); 112 x 1.5 mm = 168 mm covers an adult brain
    percentiles: tuple = (1.0, 99.0)
    modalities: tuple = DEFAULT_MODALITIES  # the cache's channels, in order (aldm.modalities)

    def as_dict(self) -> dict:
        """The settings as JSON-able data (saved as the cache's ``prepare.json``)."""
        return {"size": self.size, "mode": self.mode, "spacing": self.spacing, "percentiles": list(self.percentiles),
                "modalities": list(self.modalities)}


@dataclass
class NativeVolume:
    """A verified subject on its native grid: images (C, X, Y, Z) float32 in the order of its modalities,
    labels (X, Y, Z) uint8 tumour sub-regions, affine 4x4 (voxel -> world, RAS mm)."""

    images: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


def _load(path: str, problems: list) -> tuple[np.ndarray, np.ndarray] | None:
    """Read one NIfTI fully, its header checked first (:func:`aldm.io.nifti.load_nifti`: a declared size
    over the limit or beyond the file is refused before any voxel is read); on failure append a one-line
    problem and return None."""
    try:
        data, affine = load_nifti(path)
    except AldmError as exc:
        problems.append(str(exc))
        return None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        problems.append(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
        return None
    return data, affine


def load_and_verify(record: SubjectRecord, modalities=DEFAULT_MODALITIES) -> tuple[NativeVolume | None, list[str]]:
    """Load a subject's files and check them; returns (volume or None, problems)."""
    problems = list(record.problems)
    if problems:
        return None, problems
    loaded = {m: _load(record.images[m], problems) for m in modalities}
    mask = _load(record.mask, problems)
    if problems:
        return None, problems
    ref_shape, ref_affine = loaded[modalities[0]][0].shape, loaded[modalities[0]][1]
    for name, path, (data, affine) in [(m, record.images[m], loaded[m]) for m in modalities] + [
        ("mask", record.mask, mask)
    ]:
        if data.shape != ref_shape:
            problems.append(f"{path}: shape {data.shape} differs from T1's {ref_shape}")
            continue
        diff = float(np.abs(affine - ref_affine).max())
        if diff > 1e-3:
            problems.append(f"{path}: affine differs from T1's (max difference {diff:.3g})")
        bad = int((~np.isfinite(data)).sum())
        if bad:
            problems.append(f"{path}: {bad} non-finite voxels (NaN or Inf)")
            continue
        if name != "mask" and float(data.max()) == float(data.min()):
            problems.append(f"{path}: {name} image is constant ({float(data.min()):g})")
    if problems:
        return None, problems
    seg = mask[0]
    if not np.all(seg == np.round(seg)):
        problems.append(f"{record.mask}: mask has non-integer values")
        return None, problems
    allowed = ALLOWED_LABELS.get(record.dataset, DEFAULT_ALLOWED_LABELS)
    found = {int(v) for v in np.unique(seg)}
    if found - allowed:
        problems.append(f"{record.mask}: unexpected labels {sorted(found - allowed)} (expected {sorted(allowed)})")
        return None, problems
    if found <= {0}:
        problems.append(f"{record.mask}: empty tumour mask")
        return None, problems
    labels = seg.astype(np.uint8)
    if record.dataset == "brats2023":
        labels[labels == 3] = 4  # BraTS 2023 enhancing tumour -> the 2021 / UPENN / UCSF label 4
    images = np.stack([loaded[m][0] for m in modalities])
    return NativeVolume(images=images, labels=labels, affine=ref_affine), problems


def _transforms(config: PrepConfig) -> Compose:
    keys = ("image", "labels", "brain")
    modes_resample = ("bilinear", "nearest", "nearest")
    steps = [
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        CropForegroundd(keys=keys, source_key="brain", margin=1, allow_smaller=True),
    ]
    cube = (config.size,) * 3
    if config.mode == "resize":
        steps += [
            Spacingd(keys=keys, pixdim=(1.0, 1.0, 1.0), mode=modes_resample),
            # 'nearest-exact' samples voxel centres like the affine does; plain 'nearest' shifts
            # labels by up to half a voxel (measured: ~2 mm at 64^3).
            Resized(keys=keys, spatial_size=cube, mode=("trilinear", "nearest-exact", "nearest-exact"),
                    anti_aliasing=False),
        ]
    elif config.mode == "crop-pad":
        steps += [
            Spacingd(keys=keys, pixdim=(config.spacing,) * 3, mode=modes_resample),
            ResizeWithPadOrCropd(keys=keys, spatial_size=cube),
        ]
    else:
        raise ValueError(f"unknown preprocessing mode {config.mode!r}; choose one of {MODES}")
    return Compose(steps)


def brain_mask(images: np.ndarray) -> np.ndarray:
    """Brain voxels of skull-stripped images (3, X, Y, Z): non-zero in any modality."""
    return np.any(images != 0, axis=0)


def scale_to_unit(images: np.ndarray, brain: np.ndarray, percentiles=(1.0, 99.0),
                  ranges: list | None = None) -> tuple[np.ndarray, list]:
    """Map each channel's [p_low, p_high] of brain voxels to [-1, 1] (clipped); background -1. ``ranges``:
    [(low, high) per channel] to use instead of the percentiles (another scan's, to compare in its units).

    Returns (scaled float32 array, [(p_low, p_high) per channel]) so the mapping can be inverted.
    """
    given, ranges = ranges, []
    out = np.full(images.shape, -1.0, dtype=np.float32)
    for c in range(images.shape[0]):
        vals = images[c][brain]
        if given is not None:
            lo, hi = given[c]
        else:
            lo, hi = (np.percentile(vals, percentiles) if vals.size else (0.0, 1.0))
        hi = hi if hi > lo else lo + 1.0
        out[c][brain] = np.clip((vals - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)
        ranges.append((float(lo), float(hi)))
    return out, ranges


def preprocess(volume: NativeVolume, config: PrepConfig, ranges: list | None = None) -> dict:
    """Model-space arrays of a verified subject (``ranges``: intensity ranges to scale by instead of its own
    percentiles, :func:`scale_to_unit`).

    Returns ``image`` float32 (C, S, S, S) in [-1, 1]; ``mask`` uint8 (1, S, S, S) binary tumour;
    ``labels`` uint8 (1, S, S, S) sub-regions {0, 1, 2, 4}; ``brain`` uint8 (1, S, S, S);
    ``affine`` float64 (4, 4) model voxel -> native world (RAS mm); ``intensity_ranges``;
    ``brain_box`` native voxel index bounds [[lo, hi) per axis] of the brain.
    """
    brain = brain_mask(volume.images)
    affine = torch.as_tensor(volume.affine, dtype=torch.float64)
    data = {
        "image": MetaTensor(torch.from_numpy(volume.images), affine=affine),
        "labels": MetaTensor(torch.from_numpy(volume.labels[None].astype(np.float32)), affine=affine),
        "brain": MetaTensor(torch.from_numpy(brain[None].astype(np.float32)), affine=affine),
    }
    out = _transforms(config)(data)
    image = out["image"].numpy().astype(np.float32)
    model_brain = out["brain"].numpy()[0] > 0.5
    scaled, ranges = scale_to_unit(image, model_brain, config.percentiles, ranges)
    labels = np.rint(out["labels"].numpy()).astype(np.uint8)
    nz = np.argwhere(brain)
    return {
        "image": scaled,
        "mask": (labels > 0).astype(np.uint8),
        "labels": labels,
        "brain": model_brain[None].astype(np.uint8),
        "affine": np.asarray(out["image"].affine, dtype=np.float64),
        "intensity_ranges": ranges,
        "brain_box": [[int(a), int(b) + 1] for a, b in zip(nz.min(0), nz.max(0))],
    }
