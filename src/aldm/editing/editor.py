"""The latent edit of one scan (model space): what ``aldm edit`` does to each variant.

1. R, the region of change (:mod:`aldm.editing.region`), from the old and the new label map;
2. the scan's latent z0 = (mu(x) - latent mean) / latent std (the VAE encoder, Eq. 3.1), known wherever a
   latent cell holds no voxel of R;
3. reverse diffusion under the *new* label map (Eq. 3.8, 3.10) that generates the cells touching R and keeps the
   rest on a forward-noised trajectory of z0 (:mod:`aldm.diffusion.inpainting`; RePaint's resampling with
   ``jumps`` > 1);
4. the VAE decoder on the sampled latent, with the new label map where it draws sub-regions;
5. the decoder's mean intensity offset from the scan over R's margin (tissue the edit regenerates but does not
   change) removed per channel (:func:`harmonised`);
6. out = x outside R (the input's own voxels, bit for bit), w * decoded + (1 - w) * x inside it, w the seam
   ramp of :func:`~aldm.editing.region.blend_weight`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..conditions import needs_brain
from ..diffusion.inpainting import KnownLatent
from ..diffusion.settings import GenerationSettings
from ..errors import AldmError
from .region import blend_weight, change_region, changed_voxels, distance_to, latent_keep, voxel_spacing

DEFAULT_MARGIN_MM = 6.0
MAX_JUMPS = 20


@dataclass(frozen=True)
class EditSettings:
    """How an edit is made beside the sampler's settings: ``margin_mm`` of R around the tumours (and the width
    of the seam ramp), ``jumps`` RePaint resampling rounds per step (1: none; more costs that many times the
    network evaluations), ``harmonise``: remove the decoder's intensity offset (:func:`harmonised`)."""

    margin_mm: float = DEFAULT_MARGIN_MM
    jumps: int = 1
    harmonise: bool = True

    def __post_init__(self):
        """Refuse a negative or non-finite margin and jumps outside 1..:data:`MAX_JUMPS`."""
        m = self.margin_mm
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise AldmError(f"--margin must be a distance in mm of at least 0, got {m!r}")
        if isinstance(self.jumps, bool) or not isinstance(self.jumps, int) or not 1 <= self.jumps <= MAX_JUMPS:
            raise AldmError(f"--resample must be a whole number from 1 to {MAX_JUMPS}, got {self.jumps!r}")


@dataclass
class EditedVolume:
    """One edit in model space: ``image`` (C, S, S, S) float32, ``labels`` (S, S, S) uint8 the new label map,
    ``region`` (S, S, S) bool R, ``weight`` (S, S, S) float32 the blend, ``decoded`` (C, S, S, S) the decoder's
    volume before blending."""

    image: np.ndarray
    labels: np.ndarray
    region: np.ndarray
    weight: np.ndarray
    decoded: np.ndarray


def edit_volume(pipe, subject, new: np.ndarray, settings: GenerationSettings, edit: EditSettings, seed: int,
                changed: np.ndarray | None = None, step_callback=None) -> EditedVolume:
    """Edit ``subject`` (an :class:`~aldm.editing.subjects.EditSubject`: its model-space ``image`` (C, S, S, S) in
    [-1, 1], ``labels``, ``brain`` and ``model_affine``, for millimetres) from its label map to ``new`` (S, S, S)
    with an :class:`~aldm.pipeline.ALDMPipeline` ``pipe`` (module docstring); ``seed``: the sampler's noise;
    ``changed`` (S, S, S) bool: the voxels to draw afresh (default both tumours; a healthy fill names its
    region); ``step_callback(step, steps)`` after each network evaluation round."""
    image, brain, spacing = subject.image, subject.brain, voxel_spacing(subject.model_affine)
    changed = changed_voxels(subject.labels, new) if changed is None else changed
    distance = distance_to(changed, spacing)
    region = change_region(distance, brain, edit.margin_mm)
    if not region.any():
        raise AldmError("the edit changes no voxel (no tumour before or after it)")
    weight = blend_weight(region, distance, spacing, edit.margin_mm)
    keep = latent_keep(region, pipe.profile.latent_size).to(pipe.device)
    known = KnownLatent(pipe.encode(image[None]), keep, edit.jumps)
    condition = torch.from_numpy(new[None, None].astype(np.float32))
    brains = torch.from_numpy(brain[None, None].astype(np.float32)) if needs_brain(pipe.condition) else None
    out = pipe(condition, settings, generator=[seed], brain=brains, known=known, step_callback=step_callback)
    decoded = out["image"][0].numpy()
    if edit.harmonise:
        decoded = harmonised(decoded, image, region & ~changed)
    blended = weight * decoded + (1.0 - weight) * image
    edited = np.where(region[None], blended, image).astype(np.float32)
    return EditedVolume(image=edited, labels=new, region=region, weight=weight, decoded=decoded)


def harmonised(decoded: np.ndarray, image: np.ndarray, band: np.ndarray) -> np.ndarray:
    """``decoded`` (C, S, S, S) less its mean offset from ``image`` over ``band`` (S, S, S) bool, per channel.

    The band is R's margin: voxels whose latent the edit regenerated but whose tissue it did not change, so the
    decoded volume should reproduce the scan there; what it does not reproduce on average is the decoder's
    bias on this scan (a VAE decodes real anatomy a little darker or brighter), which would otherwise show as
    a patch of other brightness. Without a band (no margin) nothing is corrected."""
    if not band.any():
        return decoded
    offsets = (decoded[:, band] - image[:, band]).mean(axis=1)
    return (decoded - offsets[:, None, None, None]).astype(np.float32)
