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
    if np.allclose(matrix, np.diag(np.diag(matrix)), rtol=0.0, atol=1e-12):
        return _axis_aligned_resample(np.asarray(volume, dtype=np.float32), np.diag(matrix), offset, shape, order,
                                      fill)
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


def _axis_coordinates(scale: float, offset: float, size: int, length: int, order: int):
    """Input indices and weights along one axis for output voxels 0..size-1 at input coordinate
    ``scale * i + offset``: (lower index, upper index, upper weight, inside), as ``ndimage``'s ``constant`` mode
    reads them (a coordinate outside [0, length - 1] is outside; order 0 rounds halves up)."""
    coords = scale * np.arange(size, dtype=np.float64) + offset
    inside = (coords >= 0.0) & (coords <= length - 1)
    if order == 0:
        nearest = np.clip(np.floor(coords + 0.5), 0, length - 1).astype(np.intp)
        return nearest, nearest, np.zeros(size, dtype=np.float32), inside
    lower = np.clip(np.floor(coords), 0, max(length - 2, 0)).astype(np.intp)
    upper = np.minimum(lower + 1, length - 1)
    return lower, upper, (coords - lower).astype(np.float32), inside


def _axis_aligned_resample(volume: np.ndarray, scales: np.ndarray, offset: np.ndarray, shape: tuple, order: int,
                           fill: float) -> np.ndarray:
    """:func:`to_native` for a diagonal native -> model matrix (resize and crop modes; flips included): the
    trilinear (order 1) or nearest (order 0) interpolation done one axis at a time inside the box of output voxels
    that fall in the model cube, which is ``ndimage.affine_transform``'s interpolation in ``constant`` mode to
    float32 rounding (on a 240 x 240 x 155 grid: trilinear ~13x, nearest ~2x faster). (S, S, S) float32 -> ``shape``
    float32."""
    result = np.full(shape, np.float32(fill), dtype=np.float32)
    box, out = [], volume
    for axis in range(3):
        lower, upper, weight, inside = _axis_coordinates(float(scales[axis]), float(offset[axis]), shape[axis],
                                                         volume.shape[axis], order)
        if not inside.any():
            return result
        first, last = np.flatnonzero(inside)[[0, -1]]
        box.append(slice(first, last + 1))
        lower, upper, weight = lower[first:last + 1], upper[first:last + 1], weight[first:last + 1]
        a = np.take(out, lower, axis=axis)
        if order == 1:
            view = [1, 1, 1]
            view[axis] = -1
            a += (np.take(out, upper, axis=axis) - a) * weight.reshape(view)
        out = a
    result[tuple(box)] = out
    return result
