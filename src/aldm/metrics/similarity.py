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


def memorisation(synthetic: list[np.ndarray], training: list[np.ndarray], held_out: list[np.ndarray],
                 brain: np.ndarray) -> dict:
    """Nearest-neighbour distances (1 - Pearson r inside ``brain``) of synthetic volumes to the few-shot
    training set and to held-out real volumes, and two copy rates:

    * ``near_copy_fraction``: closer to a training volume than the closest pair of distinct real volumes
      in training + held-out;
    * ``held_out_copy_fraction`` (the held-out criterion): closer to a training volume than any held-out
      real volume is to its nearest training volume. Held-out patients show how close an independent
      draw from the population comes to the training set; a sample closer than all of them is a copy.
      ``held_out_nn_training`` gives that distribution (min, median), and
      ``below_held_out_median_fraction`` the share of samples nearer to training than its median (about
      0.5 for a generator that draws like the population, 1.0 for one that copies)."""
    if not training or len(held_out) < 1:
        raise ValueError("memorisation needs training and held-out volumes")
    # every volume centred and normalised once: all pairwise distances (1 - Pearson r) are one matrix product
    flat = np.stack([_flat(v, brain) for v in [*training, *held_out, *synthetic]])
    distance = 1.0 - flat @ flat.T
    n_train, n_real = len(training), len(training) + len(held_out)
    real_nn = float(distance[:n_real, :n_real][np.triu_indices(n_real, k=1)].min())
    to_train = distance[n_real:, :n_train].min(axis=1)
    to_held = distance[n_real:, n_train:n_real].min(axis=1)
    held_to_train = distance[n_train:n_real, :n_train].min(axis=1)
    return {
        "held_out_copy_fraction": float(np.mean(to_train < held_to_train.min())),
        "held_out_nn_training": {"min": float(held_to_train.min()), "median": float(np.median(held_to_train))},
        "below_held_out_median_fraction": float(np.mean(to_train < np.median(held_to_train))),
        "nn_distance_training_mean": float(np.mean(to_train)),
        "nn_distance_held_out_mean": float(np.mean(to_held)),
        "real_closest_pair_distance": real_nn,
        "near_copy_fraction": float(np.mean(to_train < real_nn)),
        "closer_to_training_fraction": float(np.mean(to_train < to_held)),
    }
