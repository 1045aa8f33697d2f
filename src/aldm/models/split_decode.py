"""Split VAE decoding: :meth:`aldm.models.vae.VAE3D.decode` (``slab=N``) with its full-resolution stage run in
depth slabs.

The decoder's last stage dominates its memory: x2 trilinear upsampling to (B, c1, S, S, S), a 3x3x3
convolution to c0 channels, instance normalisation, SiLU and the 3x3x3 output convolution — at
112^3 the upsampled tensor alone is 128 x 112^3 floats (0.7 GB), at 160^3 2.1 GB, plus the
convolution's and normalisation's outputs beside it. Here that stage runs over depth slabs of
``slab`` output planes: each slab upsamples only the coarse planes it needs (plus one on each side,
so no slab sees an edge that the whole volume does not have), convolves them with a one-plane halo
and writes its rows of the pre-normalisation tensor; the instance-norm statistics are then taken
over the whole volume (as the network computes them — a tiled decode with per-tile statistics would
not be the same function), the normalisation + SiLU is applied in place, and the output
convolution runs over the same slabs with its halo. The result equals ``decode`` up to float
rounding (tests/test_models.py); peak memory falls to the (B, c0, S, S, S) pre-norm tensor plus one
slab's temporaries (measured in docs/performance.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .blocks import upsample_trilinear
from .decoder_regions import with_regions


def _source_plane(out_index: int) -> int:
    """The lower coarse plane that x2 trilinear upsampling (align_corners=False) reads for fine plane
    ``out_index``: floor(max((o + 0.5) / 2 - 0.5, 0))."""
    return math.floor(max((out_index + 0.5) / 2 - 0.5, 0.0))


def _upsampled_planes(h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Planes [start, stop) along depth of ``upsample_trilinear(h)`` (x2), computed from the coarse
    planes they read only: equal to slicing the whole upsampled volume."""
    coarse = h.shape[2]
    lo = _source_plane(start)
    hi = min(_source_plane(stop - 1) + 2, coarse)
    part = h[:, :, lo:hi]
    up = upsample_trilinear(part, (2 * (hi - lo), 2 * h.shape[3], 2 * h.shape[4]))
    return up[:, :, start - 2 * lo:stop - 2 * lo]


def _conv_planes(conv: torch.nn.Conv3d, rows: torch.Tensor, first: bool, last: bool) -> torch.Tensor:
    """A 3x3x3, padding-1 convolution of a slab given with its one-plane halo on each side where the
    volume has one; zero planes where the slab touches the volume's front or back (the convolution's
    own zero padding)."""
    if first or last:
        rows = F.pad(rows, (0, 0, 0, 0, 1 if first else 0, 1 if last else 0))
    return F.conv3d(rows, conv.weight, conv.bias, stride=1, padding=(0, 1, 1))


def _channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per (sample, channel) mean and biased variance of x (B, C, D, H, W) in float64, and the count.
    Reduces along the memory order (channels-last or not): a strided reduction over a channels-last
    tensor is several times slower."""
    b, c = x.shape[:2]
    if _format(x) == torch.channels_last_3d:
        flat, dim = x.permute(0, 2, 3, 4, 1).reshape(b, -1, c), 1
    else:
        flat, dim = x.reshape(b, c, -1), 2
    mean = flat.mean(dim, keepdim=True)  # two passes: 5x faster than var_mean's Welford on channels-last here
    var = (flat - mean).square_().mean(dim)
    return mean.squeeze(dim).double(), var.double(), x[0, 0].numel()


class _RunningMoments:
    """Mean and variance over slabs combined exactly (Chan et al.'s parallel update), in float64."""

    def __init__(self):
        self.mean = self.m2 = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        mean, var, n = _channel_moments(x)
        if self.mean is None:
            self.mean, self.m2, self.count = mean, var * n, n
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + var * n + delta.square() * (self.count * n / total)
        self.count = total

    def variance(self) -> torch.Tensor:
        """The biased variance of everything added so far, per (sample, channel)."""
        return self.m2 / self.count


def _instance_norm_silu_(x: torch.Tensor, norm: torch.nn.GroupNorm, moments: _RunningMoments,
                         slab: int) -> torch.Tensor:
    """In place: GroupNorm(C, C) (= affine instance norm) with the statistics of the whole volume, then SiLU."""
    shape = (x.shape[0], x.shape[1], 1, 1, 1)
    rstd = torch.rsqrt(moments.variance() + norm.eps)
    scale = (rstd * norm.weight.double()).to(x.dtype).view(shape)
    shift = (norm.bias.double() - moments.mean * rstd * norm.weight.double()).to(x.dtype).view(shape)
    for start in range(0, x.shape[2], slab):
        part = x[:, :, start:start + slab]
        part.mul_(scale).add_(shift)
        F.silu(part, inplace=True)
    return x


@torch.no_grad()
def decode_in_slabs(vae, z: torch.Tensor, cond: torch.Tensor | None = None, slab: int = 16,
                    regions: torch.Tensor | None = None) -> torch.Tensor:
    """``vae.decode(z, cond)`` with the full-resolution stage over depth slabs of ``slab`` planes.

    z (B, zC, s, s, s) [+ cond] -> (B, 3, 4s, 4s, 4s) in [-1, 1]; ``regions`` (B, 3, 4s, 4s, 4s): a
    label-conditioned decoder's region maps (:func:`aldm.models.decoder_regions.with_regions`), sliced with each slab.
    Inference only (no autograd graph).
    """
    if slab < 1:
        raise ValueError(f"slab must be at least 1 plane, got {slab}")
    h = vae.decoder_in(with_regions(z if cond is None else torch.cat([z, cond], dim=1), regions))
    h = vae.mid(vae.up1(with_regions(upsample_trilinear(h), regions)))  # (B, c1, 2s, 2s, 2s): an eighth of the size

    def halo(rows: torch.Tensor, lo: int, hi: int) -> torch.Tensor:  # planes [lo, hi) with their region maps
        return rows if regions is None else torch.cat([rows, regions[:, :, lo:hi].to(rows.dtype)], dim=1)
    conv, norm = vae.up2.conv, vae.up2.norm
    depth, height, width = (2 * n for n in h.shape[2:])
    pre = torch.empty((h.shape[0], conv.out_channels, depth, height, width), dtype=h.dtype, device=h.device,
                      memory_format=_format(h))
    moments = _RunningMoments()
    for start in range(0, depth, slab):
        stop = min(start + slab, depth)
        lo, hi = max(start - 1, 0), min(stop + 1, depth)
        rows = halo(_upsampled_planes(h, lo, hi), lo, hi)
        part = _conv_planes(conv, rows, start == 0, stop == depth)
        del rows
        moments.add(part)
        pre[:, :, start:stop] = part
        del part
    del h
    _instance_norm_silu_(pre, norm, moments, slab)
    out = torch.empty((pre.shape[0], vae.out.out_channels, depth, height, width), dtype=pre.dtype, device=pre.device,
                      memory_format=_format(pre))
    for start in range(0, depth, slab):
        stop = min(start + slab, depth)
        lo, hi = max(start - 1, 0), min(stop + 1, depth)
        rows = halo(pre[:, :, lo:hi], lo, hi)
        out[:, :, start:stop] = torch.tanh(_conv_planes(vae.out, rows, start == 0, stop == depth))
    return out


def _format(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``x`` is laid out in (channels-last 3D or the default)."""
    return torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) and not \
        x.is_contiguous() else torch.contiguous_format
