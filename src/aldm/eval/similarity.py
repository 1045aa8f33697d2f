"""Structural similarity (§4.3(1)(b)), diversity and memorisation, on volumes (3, S, S, S) in [-1, 1].

* :func:`ssim_2d_slices`: the paper's paired SSIM — per axial slice (T1/T2/FLAIR as channels),
  averaged over the slices of one patient (MONAI ``SSIMMetric``, Gaussian window 11, sigma 1.5,
  data range 2);
* :func:`ssim_3d`: the same on whole volumes;
* :func:`ms_ssim_diversity`: mean pairwise MS-SSIM within a set of volumes (lower = more diverse);
  reported for synthetic samples next to the same number for real volumes;
* :func:`memorisation`: each synthetic volume's nearest neighbour among the few-shot training
  volumes versus among held-out real ones; a near-copy is closer to a training volume than any
  held-out real volume is to another real volume (distance = 1 - Pearson correlation in the brain).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric, SSIMMetric

DATA_RANGE = 2.0  # images in [-1, 1]


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def ssim_2d_slices(real: np.ndarray, synthetic: np.ndarray, axis: int = 3) -> float:
    """Mean SSIM over the axial slices of two volumes (C, X, Y, Z); slices along ``axis`` (Z by default)
    become a batch of C-channel 2D images."""
    a = _t(real).movedim(axis, 0)
    b = _t(synthetic).movedim(axis, 0)
    metric = SSIMMetric(spatial_dims=2, data_range=DATA_RANGE)
    return float(metric(b, a).mean())


def ssim_3d(real: np.ndarray, synthetic: np.ndarray) -> float:
    """SSIM of two volumes (C, X, Y, Z) with a 3D Gaussian window."""
    metric = SSIMMetric(spatial_dims=3, data_range=DATA_RANGE)
    return float(metric(_t(synthetic)[None], _t(real)[None]).mean())


def ms_ssim_diversity(volumes: list[np.ndarray], max_pairs: int = 100, seed: int = 0) -> float:
    """Mean MS-SSIM over (up to ``max_pairs`` random) pairs of volumes (C, S, S, S); 3 scales so
    that 64^3-112^3 volumes fit the 11-voxel window at the coarsest scale."""
    if len(volumes) < 2:
        raise ValueError("diversity needs at least two volumes")
    pairs = list(itertools.combinations(range(len(volumes)), 2))
    rng = np.random.default_rng(seed)
    if len(pairs) > max_pairs:
        pairs = [pairs[i] for i in rng.choice(len(pairs), max_pairs, replace=False)]
    size = volumes[0].shape[-1]
    kernel = 11 if size >= 44 else 5
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=DATA_RANGE, kernel_size=kernel,
                                  weights=(0.3, 0.4, 0.3))
    values = [float(metric(_t(volumes[i])[None], _t(volumes[j])[None]).mean()) for i, j in pairs]
    return float(np.mean(values))


def _flat(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float64)[:, brain].ravel()
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-12)


def correlation_distance(a: np.ndarray, b: np.ndarray, brain: np.ndarray) -> float:
    """1 - Pearson correlation of two volumes (C, ...) over the voxels where ``brain`` is true."""
    return float(1.0 - _flat(a, brain) @ _flat(b, brain))


def memorisation(synthetic: list[np.ndarray], training: list[np.ndarray], held_out: list[np.ndarray],
                 brain: np.ndarray) -> dict:
    """Nearest-neighbour distances of synthetic volumes to the few-shot training set and to held-out
    real volumes, and the fraction of near-copies (closer to a training volume than the closest pair
    of distinct real volumes in training + held-out)."""
    if not training or len(held_out) < 1:
        raise ValueError("memorisation needs training and held-out volumes")
    # every volume centred and normalised once: a distance is then 1 - one dot product
    flat = [_flat(v, brain) for v in list(training) + list(held_out) + list(synthetic)]
    n_train, n_real = len(training), len(training) + len(held_out)
    real, train, held, synth = flat[:n_real], flat[:n_train], flat[n_train:n_real], flat[n_real:]

    def distance(a, b):
        return float(1.0 - a @ b)

    real_nn = min(distance(real[i], real[j]) for i, j in itertools.combinations(range(len(real)), 2))
    to_train = [min(distance(s, t) for t in train) for s in synth]
    to_held = [min(distance(s, h) for h in held) for s in synth]
    return {
        "nn_distance_training_mean": float(np.mean(to_train)),
        "nn_distance_held_out_mean": float(np.mean(to_held)),
        "real_closest_pair_distance": real_nn,
        "near_copy_fraction": float(np.mean([d < real_nn for d in to_train])),
        "closer_to_training_fraction": float(np.mean([a < b for a, b in zip(to_train, to_held)])),
    }
