"""The anatomical prior c = f(m) (paper §3, "Problem Formulation"; §3.2.3) — one implementation.

Training and sampling both call these functions, so the control signals can never differ between
them (the paper's reference code computed them differently in the two places).

* :func:`control_maps`: the ControlNet input [binary mask, edge map, soft distance], computed at
  image resolution and area-pooled to the resolution asked for (e.g. the 28^3 latent grid);
* :func:`mask_statistics`: global mask statistics feeding FiLM (Eq. 3.7);
* :func:`latent_tumour_weight_mask`: the tumour region dilated by a 3x3x3 element in latent
  space, for the tumour-weighted diffusion loss (Eq. 3.9);
* :func:`condition_control`, :func:`condition_statistics`: the same two signals for each binary mask a
  condition names (:mod:`aldm.conditions`: the whole tumour for the paper's ``mask``; the BraTS regions
  WT / TC / ET, and the brain, for ``regions`` / ``regions+brain``), concatenated in that order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..conditions import BRAIN, REGIONS, condition_masks, needs_brain
from ..errors import AldmError

CONTROL_CHANNELS = ("mask", "edge", "soft_distance")
STATISTICS = ("volume_fraction", "centroid_d", "centroid_h", "centroid_w", "spread_d", "spread_h", "spread_w",
              "present")
#: width of the soft distance's sigmoid, as a fraction of the volume's edge length (4.5 voxels at 112)
SOFT_DISTANCE_WIDTH = 0.04


def _binary(mask: torch.Tensor) -> torch.Tensor:
    if mask.ndim != 5 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, D, H, W), got {tuple(mask.shape)}")
    return (mask > 0.5).float()


def edge_map(mask: torch.Tensor) -> torch.Tensor:
    """Morphological gradient (3x3x3 dilation minus erosion) of a binary mask (B, 1, D, H, W)."""
    m = _binary(mask)
    dilated = F.max_pool3d(m, 3, stride=1, padding=1)
    eroded = -F.max_pool3d(-m, 3, stride=1, padding=1)
    return dilated - eroded


def soft_distance(mask: torch.Tensor) -> torch.Tensor:
    """Sigmoid of the signed Euclidean distance to the tumour boundary, (B, 1, D, H, W) in [0, 1].

    1 deep inside the tumour, 0.5 on its boundary, decaying to 0 away from it; all 0 for an
    empty mask. Width ``SOFT_DISTANCE_WIDTH * D`` voxels.
    """
    m = _binary(mask).cpu().numpy().astype(bool)
    tau = SOFT_DISTANCE_WIDTH * mask.shape[2]
    out = np.zeros(m.shape, dtype=np.float32)
    for b in range(m.shape[0]):
        inside = m[b, 0]
        if not inside.any():
            continue
        outside_dist = ndimage.distance_transform_edt(~inside)
        inside_dist = ndimage.distance_transform_edt(inside)
        signed = np.where(inside, -(inside_dist - 0.5), outside_dist - 0.5)
        out[b, 0] = 1.0 / (1.0 + np.exp(np.clip(signed / tau, -60, 60)))
    return torch.from_numpy(out).to(mask.device)


def control_maps(mask: torch.Tensor, size: int | tuple | None = None) -> torch.Tensor:
    """ControlNet input (B, 3, *size): [mask, edge, soft distance] of a mask (B, 1, D, H, W).

    Computed at the mask's resolution, then area-averaged to ``size`` (default: unchanged), so
    the latent-resolution maps are fractions of tumour / edge in each latent cell.
    """
    m = _binary(mask)
    maps = torch.cat([m, edge_map(m), soft_distance(m)], dim=1)
    if size is not None and tuple(maps.shape[2:]) != _triple(size):
        maps = F.adaptive_avg_pool3d(maps, _triple(size))
    return maps


def mask_statistics(mask: torch.Tensor) -> torch.Tensor:
    """Global mask statistics (B, 8) for FiLM (Eq. 3.7): see :data:`STATISTICS`.

    Volume fraction; centroid and spread (std) of tumour voxels along D, H, W in [-1, 1] units;
    1 if the mask has any tumour. All zero for an empty mask (the null condition also is zero).
    """
    m = _binary(mask)[:, 0]
    b = m.shape[0]
    total = m.flatten(1).sum(1)
    frac = total / m[0].numel()
    present = (total > 0).float()
    safe = total.clamp(min=1.0)
    stats = [frac]
    centroids, spreads = [], []
    for axis, n in enumerate(m.shape[1:]):
        coord = torch.linspace(-1.0, 1.0, n, device=m.device)
        shape = [1, 1, 1]
        shape[axis] = n
        c = coord.view(1, *shape)
        mean = (m * c).flatten(1).sum(1) / safe
        var = (m * (c - mean.view(b, 1, 1, 1)) ** 2).flatten(1).sum(1) / safe
        centroids.append(mean * present)
        spreads.append(var.clamp(min=0).sqrt() * present)
    return torch.stack(stats + centroids + spreads + [present], dim=1)


def latent_tumour_weight_mask(mask: torch.Tensor, size: int | tuple) -> torch.Tensor:
    """Tumour region at latent resolution, dilated by a 3x3x3 structuring element (Eq. 3.9).

    A latent cell is tumour if any of its image voxels is; returns (B, 1, *size) in {0, 1}.
    """
    m = F.adaptive_max_pool3d(_binary(mask), _triple(size))
    return F.max_pool3d(m, 3, stride=1, padding=1)


def _triple(size) -> tuple:
    return (size,) * 3 if isinstance(size, int) else tuple(size)


def region_masks(labels: torch.Tensor, names=tuple(REGIONS)) -> torch.Tensor:
    """Binary masks (B, len(names), D, H, W) float of the BraTS regions ``names`` (WT, TC, ET) of label maps
    (B, 1, D, H, W) in {0, 1, 2, 4}."""
    if labels.ndim != 5 or labels.shape[1] != 1:
        raise ValueError(f"labels must be (B, 1, D, H, W), got {tuple(labels.shape)}")
    rounded = torch.round(labels)
    return torch.cat([torch.isin(rounded, torch.tensor(REGIONS[n], dtype=rounded.dtype, device=labels.device))
                      .float() for n in names], dim=1)


def condition_mask_stack(labels: torch.Tensor, condition: str, brain: torch.Tensor | None = None) -> torch.Tensor:
    """The binary masks (B, M, D, H, W) a ``condition`` sees (:func:`aldm.conditions.condition_masks`) of label
    maps (B, 1, D, H, W) and, for a condition with the brain, brain masks (B, 1, D, H, W). Under ``mask``
    the one channel is labels > 0 — the paper's binary mask, whatever the label values."""
    names = condition_masks(condition)
    if condition == "mask":
        return _binary(labels)
    masks = region_masks(labels, [n for n in names if n != BRAIN])
    if needs_brain(condition):
        if brain is None:
            raise AldmError(f"condition {condition!r} needs the brain mask beside the label map")
        masks = torch.cat([masks, _binary(brain).to(masks.device)], dim=1)
    return masks


def condition_control(labels: torch.Tensor, condition: str, size: int | tuple | None = None,
                      brain: torch.Tensor | None = None) -> torch.Tensor:
    """Control maps (B, 3 M, *size) of a condition: :func:`control_maps` of each of its M masks, concatenated
    ([mask, edge, soft distance] of WT, then TC, ET, brain); under ``mask`` exactly ``control_maps(labels)``."""
    masks = condition_mask_stack(labels, condition, brain)
    return torch.cat([control_maps(masks[:, i:i + 1], size) for i in range(masks.shape[1])], dim=1)


def condition_statistics(labels: torch.Tensor, condition: str, brain: torch.Tensor | None = None) -> torch.Tensor:
    """FiLM statistics (B, 8 M) of a condition: :func:`mask_statistics` of each of its M masks, concatenated
    (an empty region gives zeros, as the null condition)."""
    masks = condition_mask_stack(labels, condition, brain)
    return torch.cat([mask_statistics(masks[:, i:i + 1]) for i in range(masks.shape[1])], dim=1)
