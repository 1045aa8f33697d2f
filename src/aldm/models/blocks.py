"""Building blocks shared by the denoiser and its ControlNet (paper §3.2.2-3.2.3).

Tensors are (B, C, D, H, W); ``temb`` is (B, time_dim); ``stats`` is (B, stats_dim).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Eq. 3.6: gamma(t) = [cos(w_k t), sin(w_k t)]_{k=1..d/2}, w_k = 10000^(-(k-1)/(d/2)).

    ``t`` (B,) integer or float timesteps -> (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class TimeEmbedding(nn.Module):
    """gamma(t) -> MLP -> (B, out_dim), projected per block into feature-wise biases."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) -> (B, out_dim): Eq. 3.6 then a two-layer MLP."""
        return self.mlp(sinusoidal_embedding(t, self.dim))


class GuidanceEmbedding(nn.Module):
    """The guidance scale s of Eq. 3.8 as an input (a distilled student, Meng et al. 2023): gamma(GUIDANCE_SCALE * s)
    of Eq. 3.6 -> MLP -> (B, out_dim), added to the time embedding. The last layer starts at zero, so a student
    built from its teacher starts as the teacher's conditional prediction."""

    SCALE = 100.0  # s in [0, 20] spread over the sinusoids' range as t in [0, T) is

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.embedding = TimeEmbedding(dim, out_dim)
        nn.init.zeros_(self.embedding.mlp[-1].weight)
        nn.init.zeros_(self.embedding.mlp[-1].bias)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s (B,) guidance scales -> (B, out_dim)."""
        return self.embedding(s.float() * self.SCALE)


def guidance_term(embedding: GuidanceEmbedding | None, guidance: torch.Tensor | None) -> torch.Tensor | float:
    """What the guidance scale adds to the time embedding: the embedding of ``guidance`` (B,) for a student,
    0 for a teacher; a ValueError when one is given without the other."""
    if (embedding is None) != (guidance is None):
        raise ValueError("a guidance-conditioned student (guidance_input) needs the guidance scale; any other "
                         "denoiser takes none")
    return 0.0 if embedding is None else embedding(guidance)


class FiLM(nn.Module):
    """Eq. 3.7: h' = h * (1 + 0.1 gamma) + 0.1 beta, (gamma, beta) predicted from global mask statistics.

    The last layer starts at zero, so FiLM starts as the identity.
    """

    def __init__(self, stats_dim: int, channels: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(stats_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """Eq. 3.7: h (B, C, ...) * (1 + 0.1 gamma) + 0.1 beta, with (gamma, beta) from stats (B, stats_dim)."""
        gamma, beta = self.mlp(stats).chunk(2, dim=1)
        shape = (h.shape[0], h.shape[1], 1, 1, 1)
        return torch.addcmul(0.1 * beta.view(shape), h, 1.0 + 0.1 * gamma.view(shape))  # one pass over h


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or the largest divisor of ``channels`` below it."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def instance_norm(channels: int) -> nn.GroupNorm:
    """Affine instance normalisation as GroupNorm with one group per channel: the same function as
    ``InstanceNorm3d(affine=True)`` with the same parameter names and shapes, a little faster on CPU,
    and bit-reproducible in our runs (a baseline with InstanceNorm3d drifted between two runs of one
    seed, which broke exact resume; tests/test_kill_resume.py)."""
    return nn.GroupNorm(channels, channels)


class ResBlock(nn.Module):
    """GroupNorm residual block: GN-SiLU-conv, + time bias, GN, FiLM, SiLU-conv, + skip."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, stats_dim: int | None, groups: int = 8):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.time_bias = nn.Linear(time_dim, out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.film = FiLM(stats_dim, out_ch) if stats_dim else None
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, stats: torch.Tensor | None = None,
                copies: int = 1) -> torch.Tensor:
        """x (B, C_in, D, H, W), temb (B, time_dim), stats (copies * B, stats_dim) -> (copies * B, C_out, D, H, W).

        ``copies`` > 1: x and temb are shared by ``copies`` conditions stacked in ``stats`` (classifier-free
        guidance: cond and null condition see the same z_t and t). Everything before FiLM depends on x and
        temb only, so it runs once on B and is repeated; the result equals the forward of the repeated
        inputs.
        """
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_bias(temb)[:, :, None, None, None]
        h = self.norm2(h)
        if copies > 1:
            h, x = repeat_batch(h, copies), repeat_batch(x, copies)
        if self.film is not None:
            h = self.film(h, stats)
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


def repeat_batch(x: torch.Tensor, copies: int) -> torch.Tensor:
    """(B, ...) -> (copies * B, ...): [x, x, ...] stacked along the batch, as ``torch.cat([x] * copies)``."""
    return x.repeat(copies, *([1] * (x.dim() - 1))) if copies > 1 else x


class Downsample(nn.Module):
    """Strided 3x3x3 convolution, halves D, H, W."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv3d(channels_in, channels_out, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, C_out, D/2, H/2, W/2): a strided 3x3x3 convolution."""
        return self.conv(x)


def trilinear_x2_by_conv(x: torch.Tensor) -> torch.Tensor:
    """Exactly ``F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)`` for x (B, C, D, H, W),
    written as replicate padding + a fixed depthwise transposed convolution (separable kernel
    [1, 3, 3, 1] / 4 per axis), whose CUDA backward is deterministic where trilinear interpolation's
    (atomic adds) is not. Used when ``torch.use_deterministic_algorithms(True)`` is on."""
    k1 = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=x.dtype, device=x.device)
    kernel = (k1[:, None, None] * k1[None, :, None] * k1[None, None, :]).expand(x.shape[1], 1, 4, 4, 4)
    y = F.conv_transpose3d(F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate"), kernel.contiguous(), stride=2,
                           groups=x.shape[1])
    d, h, w = (2 * s for s in x.shape[2:])
    return y[..., 3:3 + d, 3:3 + h, 3:3 + w]


def upsample_trilinear(x: torch.Tensor, size=None) -> torch.Tensor:
    """Trilinear upsampling of (B, C, D, H, W) to ``size`` (default x2), align_corners=False; the
    deterministic formulation when deterministic algorithms are requested and the factor is 2."""
    size = tuple(size) if size is not None else tuple(2 * s for s in x.shape[2:])
    if torch.are_deterministic_algorithms_enabled() and size == tuple(2 * s for s in x.shape[2:]):
        return trilinear_x2_by_conv(x)
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


class Upsample(nn.Module):
    """Trilinear x2 (to an explicit size, so odd sizes like 7 -> 14 and 14 -> 28 work) + 3x3x3 conv."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv3d(channels_in, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, C_out, 2D, 2H, 2W) (or ``size``): trilinear upsampling then a convolution."""
        return self.conv(upsample_trilinear(x, size))


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters (ControlNet's zero convolutions)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
