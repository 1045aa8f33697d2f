"""NIfTI writing with the on-disk conventions of the real downloads."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from .atomic import atomic_path


def save_nifti(path: str, array: np.ndarray, affine: np.ndarray, dtype=np.float32) -> None:
    """Write ``array`` (X, Y, Z) with ``affine`` (voxel -> world mm, RAS+ NIfTI convention) atomically.

    ``dtype`` is the on-disk type. Float data stored as ``np.int16`` gets a ``scl_slope``
    (nibabel chooses it), as UCSF-PDGM ships its images; integer data is stored as is.
    """
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.set_data_dtype(dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
