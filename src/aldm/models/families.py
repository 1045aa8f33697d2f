"""The model families a generating run can hold, by the name its ``run.json`` gives them (``Run.kind``).

* ``aldm``: the paper's latent diffusion model (LDM and few-shot runs);
* the comparison models, trained with ``aldm train baseline MODEL``: the GANs of §4.2 (``cgan``, ``cgan3m``,
  ``vaegan``, one generator pass per volume) and ``pixelddpm``, the pixel-space diffusion peer in the manner
  of Med-DDPM (:mod:`aldm.models.pixel_ddpm`).

Diffusion models (ALDM and the pixel DDPM) take a sampler, its steps and a guidance scale; the GANs none of them.
"""

from __future__ import annotations

GANS = ("cgan", "cgan3m", "vaegan")
PIXEL_DDPM = "pixelddpm"
BASELINES = (*GANS, PIXEL_DDPM)  # what ``aldm train baseline`` and an experiment's "baselines" take
BASELINE_NAMES = {"cgan": "CGAN", "cgan3m": "3M-CGAN", "vaegan": "VAE-GAN", PIXEL_DDPM: "Pixel DDPM"}
DIFFUSION_KINDS = ("aldm", PIXEL_DDPM)


def training_stage(kind: str, fewshot: bool) -> str:
    """The profile's config of a comparison model's stage: ``train_pixel[_fewshot]`` for the pixel DDPM,
    ``train_baseline[_fewshot]`` for a GAN."""
    return ("train_pixel" if kind == PIXEL_DDPM else "train_baseline") + ("_fewshot" if fewshot else "")


def is_diffusion(kind: str) -> bool:
    """Whether a model of ``kind`` samples by reverse diffusion (so guidance, sampler and steps apply)."""
    return kind in DIFFUSION_KINDS
