"""The region of change R of an edit and the weights that blend the edit into the scan.

R is the union of the old and the new tumour (or any set of voxels to draw afresh), dilated by a margin in
millimetres (the model grid's own spacing, which ``resize`` preprocessing makes anisotropic), inside the brain.
Outside R the output is the input, voxel for voxel. Inside R the edit is blended in with a weight that rises
from 0 at R's border to 1 at the margin's inner edge, so the seam is a ramp across the margin rather than a
step; the voxels drawn afresh (the tumours) are always at weight 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """The (3,) voxel edge lengths in mm of a grid with ``affine`` (voxel -> world)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def changed_voxels(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """(S, S, S) bool: the voxels an edit from label map ``old`` to ``new`` must draw afresh — both tumours."""
    return (old > 0) | (new > 0)


def distance_to(changed: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(S, S, S) float: each voxel's distance in mm to the nearest ``changed`` voxel (0 on them; inf everywhere
    when none changed)."""
    if not changed.any():
        return np.full(changed.shape, np.inf)
    return ndimage.distance_transform_edt(~changed, sampling=spacing)


def change_region(distance: np.ndarray, brain: np.ndarray, margin_mm: float) -> np.ndarray:
    """R (S, S, S) bool: voxels within ``margin_mm`` of the changed ones (``distance``: :func:`distance_to`),
    inside ``brain``."""
    return (distance <= margin_mm) & (brain > 0)


def blend_weight(region: np.ndarray, distance: np.ndarray, spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """w (S, S, S) float32 in [0, 1]: 0 outside ``region``, 1 on the changed voxels (``distance`` 0), between
    them linear in the distance to them over ``margin_mm`` (a step when the margin is 0)."""
    if margin_mm <= 0:
        return region.astype(np.float32)
    ramp = np.clip(1.0 - distance / (margin_mm + float(spacing.min())), 0.0, 1.0)
    return np.where(region, ramp, 0.0).astype(np.float32)


def boundary_shell(region: np.ndarray) -> np.ndarray:
    """(S, S, S) bool: the voxels within one voxel of R's border, on both sides (where a seam would show)."""
    return ndimage.binary_dilation(region) & ~ndimage.binary_erosion(region)


def latent_keep(region: np.ndarray, latent_size: int) -> torch.Tensor:
    """(1, 1, s, s, s) float: 1 for the latent cells that hold no voxel of ``region`` (S, S, S) — the known part
    of the latent — and 0 for every cell that touches R."""
    r = torch.from_numpy(region.astype(np.float32))[None, None]
    touched = F.adaptive_max_pool3d(r, latent_size)
    return 1.0 - touched
