"""New label maps from a subject's own: what ``aldm edit`` is asked to do.

Every operation works on model-space BraTS label maps (S, S, S) uint8 {0, 1, 2, 4} and keeps the labels'
values (nearest-neighbour moves, no blending of labels):

* ``labels``: a label map file, on the subject's native grid or on the model grid;
* ``move DX,DY,DZ``: the tumour translated by that many millimetres (RAS: +x right, +y anterior, +z superior),
  rounded to whole voxels;
* ``grow F`` / ``shrink F``: the tumour scaled by F about its centre of mass (F > 1 grows, F < 1 shrinks its
  diameter), up to the brain's edge;
* ``transplant OTHER``: another patient's label map in place of this one's tumour, where it lies in that
  patient's model space when it fits inside this brain, else moved whole to where it fits;
* ``remove``: no tumour (healthy tissue generated where it was).

:func:`checked_new_labels` refuses, in one line naming where the map came from, an edit that changes nothing,
a tumour reaching outside the brain, or one pushed off the volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..conditions import brats_label_map
from ..data.masks import relocate_mask
from ..errors import AldmError
from ..io.nifti import load_nifti

OPERATIONS = ("labels", "move", "grow", "shrink", "transplant", "remove")
OUTSIDE_BRAIN_TOLERANCE = 0.01  # of the new tumour's voxels: resampling a native map may put a few there


@dataclass(frozen=True)
class LabelEdit:
    """One operation of :data:`OPERATIONS`: ``shift_mm`` (3,) for move, ``factor`` for grow / shrink, ``path``
    for labels (a NIfTI file) and transplant (a cache subject ``cache:DIR:ID`` or a label map file)."""

    kind: str
    shift_mm: tuple | None = None
    factor: float | None = None
    path: str | None = None

    def __post_init__(self):
        """Refuse an unknown operation or an argument it cannot take."""
        if self.kind not in OPERATIONS:
            raise AldmError(f"unknown edit {self.kind!r}; choose one of {', '.join(OPERATIONS)}")
        if self.kind == "move" and (self.shift_mm is None or len(self.shift_mm) != 3
                                    or not all(np.isfinite(self.shift_mm))):
            raise AldmError(f"--move takes three distances in mm, DX,DY,DZ; got {self.shift_mm!r}")
        if self.kind in ("grow", "shrink"):
            f = self.factor
            ok = f is not None and np.isfinite(f) and ((f > 1) if self.kind == "grow" else (0 < f < 1))
            if not ok:
                want = "above 1 (1.3: a diameter 30 % larger)" if self.kind == "grow" else \
                    "between 0 and 1 (0.7: a diameter 30 % smaller)"
                raise AldmError(f"--{self.kind} takes a factor {want}, got {f!r}")
        if self.kind in ("labels", "transplant") and not self.path:
            raise AldmError(f"--{self.kind} needs a file or a cache subject")

    def describe(self) -> str:
        """A short name of the operation, for folder names and records (``moveX10Y0Z-5mm``, ``grow1.3``)."""
        if self.kind == "move":
            return "move" + "".join(f"{axis}{v:g}" for axis, v in zip("XYZ", self.shift_mm)) + "mm"
        if self.kind in ("grow", "shrink"):
            return f"{self.kind}{self.factor:g}"
        if self.kind == "transplant":
            return "transplant-" + self.path.rstrip("/").replace("\\", "/").split("/")[-1].split(":")[-1]
        return self.kind


def moved(labels: np.ndarray, shift_mm, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``labels`` translated by ``shift_mm`` (world mm) rounded to whole voxels of the grid of ``affine``, the
    voxel shift applied); an AldmError when part of the tumour would leave the volume."""
    shift = np.rint(np.linalg.solve(np.asarray(affine)[:3, :3], np.asarray(shift_mm, dtype=np.float64)))
    idx = np.argwhere(labels > 0)
    target = idx + shift.astype(int)
    if (target < 0).any() or (target >= np.array(labels.shape)).any():
        raise AldmError(f"--move {','.join(f'{v:g}' for v in shift_mm)}: the tumour would leave the volume")
    out = np.zeros_like(labels)
    out[tuple(target.T)] = labels[tuple(idx.T)]
    return out, shift


def placed_inside(labels: np.ndarray, brain: np.ndarray, seed: int) -> np.ndarray:
    """``labels`` where they are when >= 99 % of the tumour is inside ``brain``, else moved whole to a place
    inside it (:func:`aldm.data.masks.relocate_mask`, drawn from ``seed``)."""
    tumour = labels > 0
    if tumour.any() and (brain[tumour] > 0).mean() >= 0.99:
        return labels
    return relocate_mask(labels, brain, np.random.default_rng(seed))


def label_file_in_model_space(path: str, model_affine: np.ndarray, size: int, native_shape,
                              native_affine) -> np.ndarray:
    """The label map of ``path`` on the model grid: a file on the subject's native grid is resampled (nearest),
    one on the model grid (S^3, the model affine) is taken as it is; any other grid is an AldmError."""
    values, affine = load_nifti(path, scaled=False)
    labels = brats_label_map(values, path)
    if labels.shape == (size,) * 3 and np.allclose(affine, model_affine, atol=1e-3):
        return labels
    if native_shape is not None and labels.shape == tuple(native_shape) and \
            np.allclose(affine, native_affine, atol=1e-3):
        matrix = np.linalg.inv(np.asarray(native_affine)) @ np.asarray(model_affine)
        return ndimage.affine_transform(labels, matrix[:3, :3], offset=matrix[:3, 3], output_shape=(size,) * 3,
                                        order=0, mode="constant", cval=0)
    grid = f"shape {tuple(native_shape)}" if native_shape is not None else "its model grid"
    raise AldmError(f"{path}: a label map of shape {labels.shape} on another grid or affine than the subject "
                    f"({grid}, or the model grid {size}^3); resample it onto the subject's grid first")


def checked_new_labels(old: np.ndarray, new: np.ndarray, brain: np.ndarray, where: str) -> np.ndarray:
    """``new`` inside ``brain`` (the few voxels resampling put outside it dropped); an AldmError naming ``where``
    when the edit changes nothing or more than :data:`OUTSIDE_BRAIN_TOLERANCE` of the new tumour lies outside
    the brain."""
    tumour = new > 0
    if tumour.any():
        outside = float((brain[tumour] == 0).mean())
        if outside > OUTSIDE_BRAIN_TOLERANCE:
            raise AldmError(f"{where}: {outside:.0%} of the new tumour lies outside the brain; keep it inside")
        new = np.where(brain > 0, new, 0).astype(np.uint8)
    if np.array_equal(new, old):
        raise AldmError(f"{where}: the new label map is the subject's own; nothing to edit")
    return new
