"""Mapping model-space volumes back onto a subject's native grid.

Every cached subject stores its model-space affine (model voxel -> native world, RAS mm), built by
the preprocessing transforms. A volume generated in model space is resampled onto any native grid
by composing affines: native voxel -> world -> model voxel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def to_native(volume: np.ndarray, model_affine: np.ndarray, native_shape, native_affine: np.ndarray,
              order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Resample a model-space ``volume`` (S, S, S) or (C, S, S, S) onto ``native_shape``.

    ``order`` 1 (trilinear) for images, 0 (nearest) for masks and labels; voxels that fall outside
    the model cube get ``fill``. Returns float32 (X, Y, Z) or (C, X, Y, Z).
    """
    native_to_model = np.linalg.inv(np.asarray(model_affine, dtype=np.float64)) @ np.asarray(native_affine)
    matrix, offset = native_to_model[:3, :3], native_to_model[:3, 3]
    shape = tuple(int(s) for s in native_shape)
    if volume.ndim == 4:
        return np.stack([to_native(v, model_affine, shape, native_affine, order, fill) for v in volume])
    return ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32), matrix, offset=offset, output_shape=shape, order=order,
        mode="constant", cval=fill,
    ).astype(np.float32)


def unscale_intensities(volume: np.ndarray, ranges) -> np.ndarray:
    """Invert the [-1, 1] percentile scaling per channel: (C, ...) -> native intensity units."""
    out = np.empty_like(volume, dtype=np.float32)
    for c, (lo, hi) in enumerate(ranges):
        out[c] = (volume[c] + 1.0) / 2.0 * (hi - lo) + lo
    return out
