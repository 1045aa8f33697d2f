"""The BraTS inpainting metrics (BraTS 2023-2026 "Local Synthesis of Healthy Brain Tissue via Inpainting"):
SSIM, PSNR and MSE inside the filled region, after the challenge's percentile normalisation.

Written from the challenge's definition (Kofler et al., arXiv 2305.08992; its reference is the PyPI package
``inpainting``, which the tests use as an oracle and aldm never imports):

1. the prediction and the ground truth are multiplied by the mask (0 outside the region);
2. both are clipped and scaled to [0, 1] by the 0.5th and 99.5th percentiles of the *voided* image (the input
   with the region set to 0, background included), the lower one raised to 0;
3. SSIM: the 2D SSIM map (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, reflect padding, data range the
   larger of the two images' ranges) of each plane along the first array axis, averaged over the mask's voxels
   — the challenge passes a (1, X, Y, Z) volume to a 2D SSIM, which reads X as channels;
4. MSE over the mask's voxels; PSNR = 10 log10(range^2 / MSE) with both clamped to the ground truth's range in
   the mask (min to max).

Intensities must be non-negative with background 0, as in the downloads; model-space volumes in [-1, 1] are
shifted to [0, 2] first (:func:`model_space_scores`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PERCENTILES = (0.5, 99.5)
WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03


def normalised(volume: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``volume`` clipped and scaled to [0, 1] by ``reference``'s 0.5th / 99.5th percentiles (lower >= 0)."""
    lo, hi = np.percentile(reference, PERCENTILES)
    lo = max(float(lo), 0.0)
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _gaussian_window(channels: int) -> torch.Tensor:
    """The (channels, 1, 11, 11) normalised Gaussian window of SSIM."""
    x = torch.arange(WINDOW, dtype=torch.float32) - (WINDOW - 1) / 2
    g = torch.exp(-0.5 * (x / SIGMA) ** 2)
    g = g / g.sum()
    return torch.outer(g, g).expand(channels, 1, WINDOW, WINDOW).contiguous()


def ssim_map(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The slice-wise 2D SSIM map (X, Y, Z) of two (X, Y, Z) volumes (module docstring, step 3)."""
    p = torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32))[None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None]
    data_range = max(float(p.max() - p.min()), float(t.max() - t.min()))
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    pad = (WINDOW - 1) // 2
    p, t = (F.pad(v, (pad, pad, pad, pad), mode="reflect") for v in (p, t))
    stack = torch.cat([p, t, p * p, t * t, p * t])
    mu_p, mu_t, pp, tt, pt = F.conv2d(stack, _gaussian_window(p.shape[1]), groups=p.shape[1]).split(1)
    var_p = torch.clamp(pp - mu_p**2, min=0.0)
    var_t = torch.clamp(tt - mu_t**2, min=0.0)
    cov = pt - mu_p * mu_t
    ssim = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return ssim[0].numpy()


def inpainting_scores(prediction: np.ndarray, target: np.ndarray, voided: np.ndarray, mask: np.ndarray) -> dict:
    """{'ssim', 'psnr', 'mse'} of ``prediction`` against ``target`` inside ``mask`` (all (X, Y, Z); intensities
    >= 0, background 0), normalised by ``voided`` (the input with the region set to 0): the challenge's metrics
    (module docstring)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the inpainting mask is empty")
    pred = normalised(prediction * mask, voided)
    true = normalised(target * mask, voided)
    ssim = float(ssim_map(pred, true)[mask].mean())
    p, t = pred[mask].astype(np.float64), true[mask].astype(np.float64)
    mse = float(np.mean((p - t) ** 2))
    lo, hi = float(t.min()), float(t.max())
    clamped = float(np.mean((np.clip(p, lo, hi) - t) ** 2))
    psnr = float(10 * np.log10((hi - lo) ** 2 / clamped)) if clamped > 0 and hi > lo else float("inf")
    return {"ssim": ssim, "psnr": psnr, "mse": mse}


def model_space_scores(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict:
    """:func:`inpainting_scores` of model-space volumes (X, Y, Z) in [-1, 1] (background -1): shifted to [0, 2],
    the voided image being ``target`` with the region set to 0."""
    shifted_target = target + 1.0
    voided = np.where(mask, 0.0, shifted_target)
    return inpainting_scores(prediction + 1.0, shifted_target, voided, mask)
