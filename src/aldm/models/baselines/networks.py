"""Generator and discriminators of the GAN baselines (tensors (B, C, D, H, W), images in [-1, 1]).

Generator G(c, d, z): a 3D U-Net whose input is the image-resolution control maps
c = [mask, edge, soft distance] (the same :func:`aldm.data.control.control_maps` as ALDM) and a
domain flag d (0 source, 1 target); noise z (noise_channels, S/4, S/4, S/4) enters at the
bottleneck; skip connections keep the tumour where the mask puts it.

Discriminator D(x, m): a 3D PatchGAN with spectral normalisation on (volume channels, the condition's
masks: the tumour mask, or the BraTS regions WT / TC / ET and the brain under ``regions`` conditions).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ...config import BaselineConfig
from ..blocks import instance_norm, upsample_trilinear


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    # no conv bias: the normalisation right after it cancels it (its true gradient is 0)
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False), instance_norm(c_out),
                         nn.LeakyReLU(0.2))


class _Res(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_block(ch, ch), nn.Conv3d(ch, ch, 3, padding=1, bias=False), instance_norm(ch))

    def forward(self, x):
        return F.leaky_relu(x + self.body(x), 0.2)


def coordinate_channels(like: torch.Tensor) -> torch.Tensor:
    """The voxel coordinates of a volume shaped as ``like`` (B, C, D, H, W): (B, 3, D, H, W), each axis's
    position in [-1, 1] (CoordConv's extra input channels, Liu et al. 2018)."""
    b, _, *size = like.shape
    axes = [torch.linspace(-1.0, 1.0, n, device=like.device, dtype=like.dtype) for n in size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid.unsqueeze(0).expand(b, -1, -1, -1, -1)


class Generator3D(nn.Module):
    """G(c, d, z) of the CGAN and 3M-CGAN: control maps (B, 3, S, S, S) + domain flag (B,) as a
    channel (+ the voxel coordinates with ``config.coordinates``), noise (B, noise_channels, S/4, S/4, S/4)
    at the bottleneck -> volumes (B, 3, S, S, S)."""
    def __init__(self, config: BaselineConfig, out_channels: int = 3, control_channels: int = 3):
        super().__init__()
        c0, c1, c2 = config.gen_channels
        self.noise_channels = config.noise_channels
        self.coordinates = config.coordinates
        self.enc0 = _block(control_channels + 1 + (3 if config.coordinates else 0), c0)
        self.enc1 = _block(c0, c1, stride=2)
        self.enc2 = _block(c1, c2, stride=2)
        self.mid = nn.Sequential(_block(c2 + config.noise_channels, c2),
                                 *[_Res(c2) for _ in range(config.gen_res_blocks)])
        self.dec1 = _block(c2 + c1, c1)
        self.dec0 = _block(c1 + c0, c0)
        self.out = nn.Conv3d(c0, out_channels, 3, padding=1)

    def forward(self, control: torch.Tensor, domain: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """control (B, 3, S, S, S), domain (B,), noise (B, noise_channels, S/4, S/4, S/4) -> (B, 3, S, S, S)."""
        flag = domain.view(-1, 1, 1, 1, 1).to(control.dtype).expand(-1, 1, *control.shape[2:])
        inputs = [control, flag] + ([coordinate_channels(control)] if self.coordinates else [])
        e0 = self.enc0(torch.cat(inputs, 1))
        e1 = self.enc1(e0)
        h = self.mid(torch.cat([self.enc2(e1), noise.to(e1.dtype)], 1))
        h = self.dec1(torch.cat([upsample_trilinear(h, e1.shape[2:]), e1], 1))
        h = self.dec0(torch.cat([upsample_trilinear(h, e0.shape[2:]), e0], 1))
        return torch.tanh(self.out(h))


class PatchDiscriminator3D(nn.Module):
    """Spectral-normalised 3D PatchGAN on concat(volume channels, masks): (B, in + M, S^3) -> (B, 1, S/8^3)."""

    def __init__(self, in_channels: int, channels: tuple, mask_channels: int = 1):
        super().__init__()
        layers, c_prev = [], in_channels + mask_channels
        for ch in channels:
            layers += [spectral_norm(nn.Conv3d(c_prev, ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c_prev = ch
        layers.append(spectral_norm(nn.Conv3d(c_prev, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S, S) and masks (B, M, S, S, S) -> patch logits (B, 1, S/8, S/8, S/8)."""
        return self.net(torch.cat([x, mask.to(x.dtype)], 1))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's hinge loss: -mean D(fake)."""
    return -fake_logits.mean()


def diff_augment(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffAugment-style (Zhao et al. 2020) differentiable augmentation of D's inputs, the same random
    parameters for real and fake: a random translation (up to S/8, volume and mask together) and a
    random brightness / contrast per sample. Returns (x_aug, mask_aug)."""
    b, s = x.shape[0], x.shape[2]
    shift = torch.randint(-(s // 8), s // 8 + 1, (b, 3), generator=generator)
    scale = 1.0 + 0.2 * (torch.rand(b, generator=generator) - 0.5)
    offset = 0.2 * (torch.rand(b, generator=generator) - 0.5)
    xs, ms = [], []
    for i in range(b):
        dims = (1, 2, 3)
        sh = tuple(int(v) for v in shift[i])
        xs.append(torch.roll(x[i], sh, dims) * scale[i].to(x.device) + offset[i].to(x.device))
        ms.append(torch.roll(mask[i], sh, dims))
    return torch.stack(xs), torch.stack(ms)
