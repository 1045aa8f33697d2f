"""FID as in §4.3: axial slices with T1/T2/FLAIR as the three channels, Inception pool3 features.

Two definitions, both reported and named:

* ``fid_patient_mean`` — the paper's: for each test patient, the FID between the features of its
  real slices and those of the synthetic volume generated from its mask; averaged over patients
  (with ~112 slices in 2048 dimensions each per-patient covariance is singular: the value is
  biased upwards and comparable only at equal slice counts);
* ``fid_pooled`` — what the paper's reference code computed: one FID over all slices of all
  patients.
"""

from __future__ import annotations

import numpy as np
import torch

from .frechet import frechet_distance_features


@torch.inference_mode()
def slice_features(volume: np.ndarray, model, batch_size: int = 32, axis: int = 3) -> np.ndarray:
    """(3, X, Y, Z) volume in [-1, 1] -> (n_slices, 2048) features of its axial slices (along ``axis``).

    Slices entirely background (-1 in every channel) are skipped: they carry no anatomy and would
    otherwise dominate both distributions identically.
    """
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32)).movedim(axis, 0)  # (n, 3, X, Y)
    keep = (vol > -0.999).flatten(1).any(1)
    vol = ((vol[keep] + 1.0) / 2.0).clamp(0, 1)
    device = next(model.parameters()).device
    feats = [model(vol[i:i + batch_size].to(device)).cpu() for i in range(0, len(vol), batch_size)]
    return torch.cat(feats).numpy().astype(np.float64) if feats else np.zeros((0, 2048))


def fid_scores(real: dict, synthetic: dict) -> dict:
    """``real`` / ``synthetic``: patient -> (n, F) features. Returns both FID definitions and per-patient values."""
    per_patient = {}
    for patient in synthetic:
        if patient in real and len(real[patient]) >= 2 and len(synthetic[patient]) >= 2:
            per_patient[patient] = frechet_distance_features(real[patient], synthetic[patient])
    pooled = frechet_distance_features(np.concatenate(list(real.values())), np.concatenate(list(synthetic.values())))
    return {
        "fid_patient_mean": float(np.mean(list(per_patient.values()))) if per_patient else None,
        "fid_pooled": pooled,
        "fid_per_patient": per_patient,
    }
