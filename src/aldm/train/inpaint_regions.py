"""Random regions to fill, for training a ControlNet that reads the known latent (``UNetConfig.inpaint_context``).

An inpainting model learns to draw a region from its surroundings by seeing, during training, latents with a
region hidden (Rombach et al. 2022 trained Stable Diffusion's inpainting model on random masks). The regions here
are the ones scan editing asks for (:mod:`aldm.editing`), at latent resolution:

- nothing known (the whole latent generated), with probability ``p_plain``: the model stays a generator, and
  ``aldm generate`` (which passes no known latent) keeps working as before;
- the subject's own tumour, dilated by 1-2 cells: a tumour redrawn (moved, grown, shrunk) in its place;
- another subject's tumour, dilated by 0-2 cells: a transplant, or healthy tissue filled where a tumour was;
- an ellipsoid in the brain with radii of 1.5 cells to a fifth of the latent: a healthy-tissue fill.

The condition (control maps and statistics) stays the subject's own label map, so the model learns that inside
the region the label map decides and outside it the scan does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dilate(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """``mask`` (..., s, s, s) in {0, 1} dilated by a (2 cells + 1)^3 cube."""
    if cells <= 0:
        return mask
    shape = mask.shape
    m = mask.reshape(-1, 1, *shape[-3:])
    return F.max_pool3d(m, 2 * cells + 1, stride=1, padding=cells).reshape(shape)


def ellipsoid_in(brain: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """An axis-aligned ellipsoid (1, s, s, s) centred on a random cell of ``brain`` (1, s, s, s) with radii drawn
    from [1.5, max(2, s / 5)] cells; the whole latent when the brain is empty."""
    s = brain.shape[-1]
    cells = brain.reshape(-1).nonzero().flatten()
    if cells.numel() == 0:
        return torch.ones_like(brain)
    centre = cells[torch.randint(cells.numel(), (1,), generator=g)].item()
    cz, cy, cx = centre // (s * s), (centre // s) % s, centre % s
    radii = 1.5 + torch.rand(3, generator=g) * (max(2.0, s / 5) - 1.5)
    grid = torch.arange(s, dtype=torch.float32)
    z, y, x = torch.meshgrid(grid - cz, grid - cy, grid - cx, indexing="ij")
    inside = (z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2 <= 1.0
    return inside.float()[None]


def draw_unknown(tumours: torch.Tensor, brains: torch.Tensor, idx: torch.Tensor, g: torch.Generator,
                 p_plain: float = 0.5) -> torch.Tensor:
    """The region each training example generates, (B, 1, s, s, s) float, 1 where unknown.

    ``tumours`` (N, 1, s, s, s): every training subject's latent tumour cells; ``brains`` (N, 1, s, s, s): its
    brain cells; ``idx`` (B,): the subjects of the batch. Draws as the module docstring says; a drawn region that
    turns out empty (a subject without a tumour) becomes an ellipsoid.
    """
    out = []
    n = tumours.shape[0]
    for i in idx.tolist():
        u = torch.rand(1, generator=g).item()
        if u < p_plain:
            out.append(torch.ones_like(tumours[i]))
            continue
        kind = torch.randint(3, (1,), generator=g).item()
        if kind == 0:
            region = dilate(tumours[i], 1 + torch.randint(2, (1,), generator=g).item())
        elif kind == 1:
            other = torch.randint(n, (1,), generator=g).item()
            region = dilate(tumours[other], torch.randint(3, (1,), generator=g).item())
        else:
            region = ellipsoid_in(brains[i], g)
        if region.sum() == 0:
            region = ellipsoid_in(brains[i], g)
        out.append(region)
    return torch.stack(out)
