"""FRD — the Fréchet Radiomics Distance (Osuala et al.; PyPI ``frd-score``), per modality, in 3D.

Radiomics features (PyRadiomics, the maintained ``pyradiomics-bhklab`` fork) of each real and
synthetic volume, optionally restricted to a mask (the brain by default), are normalised and
compared with the Fréchet distance. It needs no downloaded weights, so it is the distance that
always runs offline. Install with ``pip install "aldm[frd]"``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile

import nibabel as nib
import numpy as np

from ..errors import AldmError

MODALITY_INDEX = {"t1": 0, "t2": 1, "flair": 2}


def _frd_module():
    try:
        from frd_score import frd
    except ImportError as exc:
        raise AldmError('FRD needs the frd-score and pyradiomics-bhklab packages: pip install "aldm[frd]"') from exc
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return frd


def frd_scores(real: list[np.ndarray], synthetic: list[np.ndarray], real_masks: list[np.ndarray] | None = None,
               synthetic_masks: list[np.ndarray] | None = None, modalities=("t1", "t2", "flair")) -> dict:
    """FRD per modality between volume sets (3, S, S, S) in [-1, 1]; masks (S, S, S) restrict the features.

    Returns {"frd_<modality>": value, "frd_mean": mean over the modalities}.
    """
    frd = _frd_module()
    if len(real) < 2 or len(synthetic) < 2:
        raise AldmError("FRD needs at least two real and two synthetic volumes")
    out = {}
    with tempfile.TemporaryDirectory(prefix="aldm-frd-") as tmp:
        def write(kind, i, array, dtype):
            path = os.path.join(tmp, f"{kind}{i:04d}.nii.gz")
            nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), np.eye(4)), path)
            return path

        masks = None
        if real_masks is not None and synthetic_masks is not None:
            masks = [[write("rm", i, m, np.uint8) for i, m in enumerate(real_masks)],
                     [write("sm", i, m, np.uint8) for i, m in enumerate(synthetic_masks)]]
        for modality in modalities:
            c = MODALITY_INDEX[modality]
            paths = [[write(f"r{modality}", i, v[c], np.float32) for i, v in enumerate(real)],
                     [write(f"s{modality}", i, v[c], np.float32) for i, v in enumerate(synthetic)]]
            with contextlib.redirect_stdout(io.StringIO()):
                value = frd.compute_frd(paths, paths_masks=masks, num_workers=1)
            out[f"frd_{modality}"] = float(value)
    out["frd_mean"] = float(np.mean([out[f"frd_{m}"] for m in modalities]))
    return out
