"""The 3D VAE of §3.1: x (B, 3, S, S, S) in [-1, 1] <-> z (B, zC, S/4, S/4, S/4).

Encoder: 3x3x3 convolutions with instance norm and SiLU; two strided convolutions (S -> S/2 -> S/4);
residual refinement blocks at the latent resolution; 1x1 heads for mu and log-variance (clamped),
the diagonal Gaussian posterior of Eq. 3.1. Decoder: mirror image with trilinear upsampling +
convolution twice (no transposed convolutions) and a final tanh. Losses: Eq. 3.2-3.4.

With ``VAEConfig.decoder_regions`` (not in the paper) the decoder is label-conditioned: the three nested BraTS
regions of the tumour's label map (:func:`decoder_region_maps`, (B, 3, S, S, S)) are concatenated to the input of
each decoder stage at its resolution — area-averaged to S/4 and S/2, exact at S — so a thin sub-region that four
times fewer latent voxels cannot hold (the enhancing rim on T1c) is drawn where the label map says.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conditions import REGIONS
from ..config import VAEConfig
from ..errors import AldmError
from .blocks import instance_norm, upsample_trilinear
from .decoder_regions import decoder_region_maps, with_regions
from .split_decode import decode_in_slabs


class ConvNormAct(nn.Sequential):
    """3x3x3 convolution -> instance norm -> SiLU, (B, c_in, D, H, W) -> (B, c_out, D', H', W'); the
    layers are reachable by name (``conv``, ``norm``) while the weights keep their positional keys."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1), instance_norm(c_out), nn.SiLU())

    @property
    def conv(self) -> nn.Conv3d:
        """The 3x3x3 convolution."""
        return self[0]

    @property
    def norm(self) -> nn.GroupNorm:
        """The instance norm (GroupNorm with one channel per group)."""
        return self[1]


class RefineBlock(nn.Module):
    """Residual conv-IN-SiLU-conv-IN block at the latent resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1), instance_norm(channels), nn.SiLU(),
            nn.Conv3d(channels, channels, 3, padding=1), instance_norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, s, s, s) -> same shape: SiLU(x + body(x))."""
        return F.silu(x + self.body(x))


class VAE3D(nn.Module):
    """The 3D VAE of §3.1 (module docstring): ``encode`` x (B, 3, S, S, S) -> (mu, logvar) each
    (B, zC, S/4, S/4, S/4) (Eq. 3.1); ``decode`` z -> x_hat in [-1, 1]; ``forward`` does both with the
    reparameterisation. Decoder stages by name: ``decoder_in``, ``up1``, ``mid`` (``level_blocks``), ``up2``,
    ``out``."""

    def __init__(self, config: VAEConfig, cond_channels: int = 0):
        """``cond_channels`` > 0 makes the decoder conditional: decode(z, cond) concatenates a
        (B, cond_channels, s, s, s) condition to z (the VAE-GAN baseline); ALDM's VAE uses 0.
        ``config.decoder_regions``: every decoder stage also takes the tumour's region maps (module docstring)."""
        super().__init__()
        self.config = config
        c0, c1, c2 = config.channels
        r = self.region_channels = len(REGIONS) if config.decoder_regions else 0
        self.encoder = nn.Sequential(
            ConvNormAct(config.in_channels, c0),
            ConvNormAct(c0, c1, stride=2),
            *[RefineBlock(c1) for _ in range(config.level_blocks)],
            ConvNormAct(c1, c2, stride=2),
            *[RefineBlock(c2) for _ in range(config.refine_blocks)],
        )
        self.mu = nn.Conv3d(c2, config.latent_channels, 1)
        self.logvar = nn.Conv3d(c2, config.latent_channels, 1)
        self.decoder_in = nn.Sequential(ConvNormAct(config.latent_channels + cond_channels + r, c2),
                                        *[RefineBlock(c2) for _ in range(config.refine_blocks)])
        self.up1 = ConvNormAct(c2 + r, c1)
        # residual blocks at S/2 after up1 (VAEConfig.level_blocks); empty for the paper's decoder
        self.mid = nn.Sequential(*[RefineBlock(c1) for _ in range(config.level_blocks)])
        self.up2 = ConvNormAct(c1 + r, c0)
        self.out = nn.Conv3d(c0 + r, config.in_channels, 3, padding=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3.1: (mu, log sigma^2), each (B, zC, S/4, S/4, S/4); log-variance clamped."""
        h = self.encoder(x)
        lo, hi = self.config.logvar_clamp
        return self.mu(h), self.logvar(h).clamp(lo, hi)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterisation z = mu + sigma * eps."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None, slab: int = 0,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, zC, s, s, s) [+ cond (B, cond_channels, s, s, s)] -> x_hat (B, 3, 4s, 4s, 4s) in [-1, 1].

        ``labels`` (B, 1, 4s, 4s, 4s), BraTS label maps {0, 1, 2, 4}: needed by a decoder with
        ``decoder_regions`` (an AldmError without them), ignored by the paper's. ``slab`` > 0: the
        full-resolution stage runs over depth slabs of that many planes
        (:func:`aldm.models.split_decode.decode_in_slabs`: the same volume at about half the peak memory;
        inference only, no autograd graph)."""
        regions = self.regions_of(labels, z)
        if slab:
            return decode_in_slabs(self, z, cond, slab, regions)
        h = self.decoder_in(with_regions(z if cond is None else torch.cat([z, cond], dim=1), regions))
        h = self.mid(self.up1(with_regions(upsample_trilinear(h), regions)))
        h = self.up2(with_regions(upsample_trilinear(h), regions))
        return torch.tanh(self.out(with_regions(h, regions)))

    def regions_of(self, labels: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor | None:
        """The decoder's region maps (B, 3, 4s, 4s, 4s) of ``labels`` in z's dtype and layout (None for the
        paper's decoder); an AldmError when this decoder needs them and none (or the wrong size) are given."""
        if not self.region_channels:
            return None
        size = tuple(4 * n for n in z.shape[2:])
        if labels is None:
            raise AldmError("this VAE's decoder draws the tumour's sub-regions (vae.decoder_regions): decoding needs "
                            "the label map")
        if labels.ndim != 5 or labels.shape[1] != 1 or tuple(labels.shape[2:]) != size \
                or labels.shape[0] != z.shape[0]:
            raise AldmError(f"the decoder's label maps must be ({z.shape[0]}, 1, {', '.join(map(str, size))}), "
                            f"got {tuple(labels.shape)}")
        return decoder_region_maps(labels.to(z.device)).to(z.dtype)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, labels: torch.Tensor | None = None):
        """x (B, 3, S, S, S) [+ labels (B, 1, S, S, S) for a ``decoder_regions`` VAE] -> (x_hat, mu, logvar)
        with z = mu + sigma * eps."""
        mu, logvar = self.encode(x)
        return self.decode(self.sample(mu, logvar, generator), labels=labels), mu, logvar


def kl_weight(step: int, total_steps: int, weight: float, warmup_fraction: float) -> float:
    """Eq. 3.3: lambda_KL(t) = lambda_KL * t / (rho T) for t <= rho T, then lambda_KL."""
    ramp = warmup_fraction * total_steps
    if ramp <= 0 or step > ramp:
        return weight
    return weight * step / ramp


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), averaged over latent elements (Eq. 3.2)."""
    return 0.5 * torch.mean(mu.square() + logvar.exp() - 1.0 - logvar)


def gradient_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3.4: sum over axes a in {x, y, z} of mean |grad_a x_hat - grad_a x| (forward differences)."""
    total = x.new_zeros(())
    for dim in (2, 3, 4):
        total = total + torch.mean(torch.abs(torch.diff(x_hat, dim=dim) - torch.diff(x, dim=dim)))
    return total


def spectral_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MONAI's ``JukeboxLoss`` (Dhariwal et al. 2020, §3.3): mean squared difference of the amplitudes of the
    orthonormal FFT over channels and space, (B, C, D, H, W) -> scalar; weight-free, it penalises the
    missing high frequencies (blur) that L1 forgives. Computed in fp32 (no bf16 FFT)."""
    from monai.losses import JukeboxLoss

    return JukeboxLoss(spatial_dims=3)(x_hat.float(), x.float())


def ssim_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 - 3D SSIM (MONAI's ``SSIMLoss``: Gaussian window of 7 voxels, sigma 1.5, data range 2 of model space
    [-1, 1]) averaged over channels and the batch, (B, C, D, H, W) -> scalar; it scores local means,
    contrasts and structure, which L1 weighs by intensity alone. Computed in fp32."""
    from monai.losses import SSIMLoss

    return SSIMLoss(spatial_dims=3, data_range=2.0, win_size=7)(x_hat.float(), x.float())


def region_weight(labels: torch.Tensor, tumour_weight: float) -> torch.Tensor:
    """Voxel weights (B, 1, S, S, S) of BraTS label maps ``labels`` (B, 1, S, S, S) in {0, 1, 2, 4}:
    1 + ``tumour_weight`` x the number of nested BraTS regions (:data:`aldm.conditions.REGIONS`: WT, TC, ET)
    holding the voxel — background 1, oedema 1 + w, necrosis 1 + 2 w, enhancing 1 + 3 w."""
    return 1.0 + tumour_weight * decoder_region_maps(labels).sum(dim=1, keepdim=True)


def vae_loss(x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, config: VAEConfig,
             step: int, total_steps: int, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Eq. 3.2 + 3.4 with the KL warm-up of Eq. 3.3, plus ``spectral_weight`` x :func:`spectral_loss` and
    ``ssim_weight`` x :func:`ssim_loss` when those weights are set (not in the paper); returns (loss, parts
    for logging). ``weight`` (B, 1, S, S, S), e.g. :func:`region_weight`: the L1 term becomes the
    weight-averaged absolute error (the same as the plain mean when every weight is equal)."""
    error = torch.abs(x - x_hat)
    rec = torch.mean(error) if weight is None else torch.sum(error * weight) / (torch.sum(weight) * x.shape[1])
    kl = kl_divergence(mu, logvar)
    grad = gradient_loss(x_hat, x)
    beta = kl_weight(step, total_steps, config.kl_weight, config.kl_warmup_fraction)
    loss = config.rec_weight * rec + beta * kl + config.grad_weight * grad
    parts = {"rec": rec.detach(), "kl": kl.detach(), "grad": grad.detach(), "kl_weight": beta}
    if config.spectral_weight:
        spectral = spectral_loss(x_hat, x)
        loss = loss + config.spectral_weight * spectral
        parts["spectral"] = spectral.detach()
    if config.ssim_weight:
        structural = ssim_loss(x_hat, x)
        loss = loss + config.ssim_weight * structural
        parts["ssim"] = structural.detach()
    return loss, parts


def frozen_vae(config: VAEConfig, state: dict, device="cpu", where: str = "the VAE weights") -> VAE3D:
    """A VAE3D of ``config`` with ``state`` loaded, in eval mode and without gradients, on ``device``;
    an AldmError naming ``where`` when the weights do not fit the config."""
    vae = VAE3D(config)
    try:
        vae.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise AldmError(f"{where}: do not fit the run's config.json ({str(exc).splitlines()[0]})") from exc
    return vae.to(device).eval().requires_grad_(False)
