"""What a label-conditioned VAE decoder (``VAEConfig.decoder_regions``) sees of the tumour: the nested BraTS
regions of the label map as binary masks, area-averaged to each decoder stage's grid and concatenated to its
input (brainSPADE's manner, Fernandez et al., SASHIMI 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decoder_region_maps(labels: torch.Tensor) -> torch.Tensor:
    """The nested BraTS regions (:data:`aldm.conditions.REGIONS`: WT, TC, ET) of label maps ``labels``
    (B, 1, D, H, W) in {0, 1, 2, 4} as binary float masks (B, 3, D, H, W): what a ``decoder_regions`` decoder
    sees (a region missing from a label map is an empty channel)."""
    from ..data.control import region_masks

    return region_masks(labels.float())


def with_regions(h: torch.Tensor, regions: torch.Tensor | None) -> torch.Tensor:
    """h (B, C, d, h, w) with ``regions`` (B, 3, D, H, W) area-averaged to h's grid concatenated as 3 more
    channels (the fraction of each coarse voxel in each region); h itself when ``regions`` is None."""
    if regions is None:
        return h
    if regions.shape[2:] != h.shape[2:]:
        regions = F.adaptive_avg_pool3d(regions, h.shape[2:])
    return torch.cat([h, regions.to(h.dtype)], dim=1)
