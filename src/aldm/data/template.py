"""Real anatomy that ships offline: the MNI ICBM152 2009a template from nilearn's wheel.

nilearn carries the 1 mm T1, grey-matter and white-matter maps
(``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, 197x233x189, RAS affine).
The T1 is already brain-masked; CSF is derived as brain minus GM minus WM.

The native grid of the real datasets (UPENN-GBM, UCSF-PDGM, BraTS) is 240x240x155 at 1 mm,
skull-stripped, with an LPS voxel orientation; :data:`NATIVE_AFFINE` places the template's
brain in the middle of that grid (world coordinates = MNI millimetres).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import AldmError

NATIVE_SHAPE = (240, 240, 155)
#: voxel (i, j, k) -> world mm; axes point Left, Posterior, Superior (LPS), like the real downloads.
NATIVE_AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 120.0], [0.0, -1.0, 0.0, 104.0], [0.0, 0.0, 1.0, -71.0], [0.0, 0.0, 0.0, 1.0]]
)


@dataclass(frozen=True)
class Template:
    """Tissue maps on the MNI grid, float32 in [0, 1], shape (197, 233, 189) each.

    ``t1`` is the template T1 scaled to [0, 1]; ``brain`` is a binary brain mask.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


def _template_dir() -> str:
    try:
        import nilearn
    except ImportError as exc:  # pragma: no cover - nilearn is a hard dependency
        raise AldmError("nilearn is not installed: the phantom anatomy comes from its MNI152 template") from exc
    return os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the MNI152 2009a maps once per process and derive the brain mask and CSF."""
    folder = _template_dir()
    arrays = {}
    affine = None
    for name in ("t1", "gm", "wm"):
        path = os.path.join(folder, f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
        if not os.path.exists(path):
            raise AldmError(f"{path}: MNI152 template missing from the nilearn wheel")
        img = nib.load(path)
        arrays[name] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        affine = img.affine
    brain = ndimage.binary_fill_holes(arrays["t1"] > 0.02)
    brain = ndimage.binary_opening(brain, iterations=1)
    csf = np.clip(brain - arrays["gm"] - arrays["wm"], 0.0, 1.0).astype(np.float32)
    return Template(
        t1=arrays["t1"],
        gm=arrays["gm"],
        wm=arrays["wm"],
        csf=csf,
        brain=brain.astype(np.float32),
        affine=np.asarray(affine, dtype=np.float64),
    )
