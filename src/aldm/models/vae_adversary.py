"""The VAE's adversarial patch loss (not in the paper; the autoencoder recipe of the published 3D
latent-diffusion work: Rombach et al., CVPR 2022; Pinaya et al., "Brain imaging generation with latent
diffusion models", DGM4MICCAI 2022; MONAI's 3D LDM tutorial).

L1 and the gradient loss of Eq. 3.4 are minimised by the conditional mean of the detail a latent
cannot pin down, which is blur. A patch discriminator D that tells real from reconstructed cubes of
a few voxels, and a term that asks the decoder to fool it, push the reconstructions back onto the
manifold of sharp images. Here D is MONAI's ``PatchDiscriminator`` (strided 4^3 convolutions,
LeakyReLU, batch norm; one logit per patch) and the losses are MONAI's ``PatchAdversarialLoss`` with
the least-squares criterion (Mao et al., ICCV 2017), as in MONAI's tutorial:

* discriminator: 0.5 * [(D(x) - 1)^2 + D(x_hat)^2] averaged over patches;
* decoder: (D(x_hat) - 1)^2 averaged over patches, weighted by ``VAEConfig.adv_weight``.

Both switch on after ``adv_start_fraction`` of the steps (a discriminator that sees random decoder
output first learns nothing useful and can destabilise the reconstruction).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import VAEConfig
from ..errors import AldmError


def patch_discriminator(config: VAEConfig) -> nn.Module:
    """MONAI's 3D ``PatchDiscriminator`` for the VAE's ``config.in_channels`` modalities: (B, C, S, S, S)
    -> a list of every layer's features, the last being the patch logits (B, 1, s', s', s')."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=3, num_layers_d=config.disc_layers, channels=config.disc_channels,
                              in_channels=config.in_channels, out_channels=1)


def check_discriminator_fits(config: VAEConfig, edge: int) -> None:
    """An AldmError when ``disc_layers`` strided layers would shrink an ``edge``^3 training cube below the
    4^3 the discriminator's last two convolutions need."""
    if config.adv_weight and edge / 2 ** config.disc_layers < 4:
        raise AldmError(f"vae.disc_layers = {config.disc_layers} is too deep for {edge}^3 training volumes "
                        f"(they would shrink to {edge / 2 ** config.disc_layers:g}^3); use at most "
                        f"{int(math.log2(edge / 4))}")


def adversary_start(config: VAEConfig, total_steps: int) -> int:
    """The first step (0-based) at which the discriminator trains and the decoder's term counts."""
    return math.ceil(config.adv_start_fraction * total_steps)


def _patch_logits(discriminator: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return discriminator(x)[-1]


def decoder_adversarial_loss(discriminator: nn.Module, x_hat: torch.Tensor) -> torch.Tensor:
    """The decoder's least-squares term, mean (D(x_hat) - 1)^2 over patches; x_hat (B, C, S, S, S)."""
    from monai.losses import PatchAdversarialLoss

    loss = PatchAdversarialLoss(criterion="least_squares")
    return loss(_patch_logits(discriminator, x_hat), target_is_real=True, for_discriminator=False)


def discriminator_loss(discriminator: nn.Module, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """0.5 * [mean (D(x) - 1)^2 + mean D(x_hat)^2]; x, x_hat (B, C, S, S, S), x_hat detached by the caller."""
    from monai.losses import PatchAdversarialLoss

    loss = PatchAdversarialLoss(criterion="least_squares")
    real = loss(_patch_logits(discriminator, x), target_is_real=True, for_discriminator=True)
    fake = loss(_patch_logits(discriminator, x_hat), target_is_real=False, for_discriminator=True)
    return 0.5 * (real + fake)
