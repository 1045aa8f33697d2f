"""The conditional denoiser eps_theta(z_t, t, c) of §3.2.2-3.2.3: a 3D U-Net at s, s/2, s/4 (28/14/7).

Residual GroupNorm blocks at every level; the sinusoidal time embedding (Eq. 3.6) -> MLP ->
feature-wise bias in every block; FiLM from global mask statistics (Eq. 3.7) in every block;
ControlNet residuals added, scaled by lambda_ctrl, to the skip features at each level and to the
bottleneck. No attention (as the paper and its reference). With ``input_control`` the control maps
are also concatenated to z_t at the U-Net's input (an option beside the paper's recipe, as Med-DDPM).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import UNetConfig
from .blocks import (
    Downsample,
    GuidanceEmbedding,
    ResBlock,
    TimeEmbedding,
    Upsample,
    group_norm,
    guidance_term,
    repeat_batch,
)
from .controlnet import ControlNet3D


class UNet3D(nn.Module):
    """The denoising U-Net of §3.2.2 on latents (B, zC, s, s, s): a residual block per level with
    time embedding (Eq. 3.6) and FiLM on the mask statistics (Eq. 3.7), skips that take the ControlNet's
    residuals, and an output of the predicted noise."""
    def __init__(self, config: UNetConfig, latent_channels: int):
        super().__init__()
        self.config = config
        c, g, td, sd = config.channels, config.groups, config.time_dim, config.stats_dim
        self.time = TimeEmbedding(td, td)
        self.guidance = GuidanceEmbedding(td, td) if config.guidance_input else None
        self.stem = nn.Conv3d(latent_channels, c[0], 3, padding=1)
        # conv([z_t; c]) = conv_z(z_t) + conv_c(c): the control maps' half of the concatenated input's stem
        self.control_stem = nn.Conv3d(config.control_in, c[0], 3, padding=1, bias=False) \
            if config.input_control else None
        self.down_blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        ch = c[0]
        for level, width in enumerate(c):
            self.downs.append(Downsample(ch, ch) if level else nn.Identity())
            blocks = []
            for _ in range(config.res_blocks):
                blocks.append(ResBlock(ch, width, td, sd, g))
                ch = width
            self.down_blocks.append(nn.ModuleList(blocks))
        self.mid = nn.ModuleList([ResBlock(ch, ch, td, sd, g)])
        self.up_blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        for level in reversed(range(len(c))):
            width = c[level]
            blocks = [ResBlock(ch + width, width, td, sd, g)]
            blocks += [ResBlock(width, width, td, sd, g) for _ in range(config.res_blocks - 1)]
            self.up_blocks.append(nn.ModuleList(blocks))
            ch = width
            self.ups.append(Upsample(width, c[level - 1]) if level else nn.Identity())
            if level:
                ch = c[level - 1]
        self.out = nn.Sequential(group_norm(c[0], g), nn.SiLU(), nn.Conv3d(c[0], latent_channels, 3, padding=1))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, stats: torch.Tensor,
                control_residuals: list[torch.Tensor] | None = None, copies: int = 1,
                control: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """z_t (B, zC, s, s, s), t (B,), stats (copies * B, stats_dim) -> predicted noise (copies * B, zC, s, s, s).

        ``copies`` > 1 (classifier-free guidance): z_t and t are shared by ``copies`` conditions stacked
        in ``stats``, ``control_residuals`` and ``control``; the stem and the first block up to its FiLM run
        once on B (equal to the forward of ``z_t`` and ``t`` repeated ``copies`` times). ``control``
        (copies * B, 3, s, s, s): the control maps, required with ``input_control`` and ignored without.
        ``guidance`` (B,): the guidance scale s of a student (``guidance_input``), required by one and refused without.
        """
        temb = F.silu(self.time(t) + guidance_term(self.guidance, guidance))
        h = self.stem(z_t)
        if self.control_stem is not None:
            if control is None:
                raise ValueError("this U-Net takes the control maps at its input (input_control): pass control")
            h = repeat_batch(h, copies) + self.control_stem(control)
            temb, copies = repeat_batch(temb, copies), 1
        skips = []
        for level, (down, blocks) in enumerate(zip(self.downs, self.down_blocks)):
            h = down(h)
            for block in blocks:
                h = block(h, temb, stats, copies)
                temb, copies = repeat_batch(temb, copies), 1
            if control_residuals is not None:
                h = h + self.config.lambda_ctrl * control_residuals[level]
            skips.append(h)
        for block in self.mid:
            h = block(h, temb, stats)
        for blocks, up in zip(self.up_blocks, self.ups):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, temb, stats)
            if not isinstance(up, nn.Identity):
                h = up(h, size=skips[-1].shape[2:])
        return self.out(h)


class ConditionalDenoiser(nn.Module):
    """U-Net + ControlNet as one module: eps_theta(z_t, t, c) with c = (control maps, mask statistics).

    The null condition of classifier-free guidance is all-zero control maps and statistics
    (which is also what an empty mask gives).
    """

    def __init__(self, config: UNetConfig, latent_channels: int):
        super().__init__()
        self.unet = UNet3D(config, latent_channels)
        # config.controlnet False (an ablation): no ControlNet, the U-Net sees the condition's FiLM statistics
        self.controlnet = ControlNet3D(config, latent_channels) if config.controlnet else None

    @property
    def reads_context(self) -> bool:
        """Whether the ControlNet reads the known latent (``UNetConfig.inpaint_context``)."""
        return self.controlnet is not None and self.controlnet.context_stem is not None

    @property
    def takes_guidance(self) -> bool:
        """Whether the guidance scale s is an input (a distilled student, ``UNetConfig.guidance_input``)."""
        return self.unet.guidance is not None

    def hint(self, control: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor | None:
        """The ControlNet's hint of ``control`` and the known latent ``context`` (None without a ControlNet)."""
        return None if self.controlnet is None else self.controlnet.hint(control, context)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, control: torch.Tensor | None, stats: torch.Tensor,
                hint: torch.Tensor | None = None, copies: int = 1, context: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta: z_t (B, zC, s, s, s), t (B,), control (copies * B, 3, s, s, s), stats (copies * B, stats_dim)
        -> (copies * B, zC, s, s, s).

        ``hint``: ``controlnet.hint(control)``, computed once per sampling run (it depends on the control
        maps only), used by the ControlNet in place of ``control`` (which a U-Net with ``input_control``
        still needs). ``copies``: see :meth:`UNet3D.forward`. ``context`` (copies * B, zC + 1, s, s, s): the known
        latent [z0 * keep, keep] of an inpainting-trained ControlNet (``inpaint_context``; None: nothing known).
        ``guidance`` (B,): the guidance scale s of a student (``guidance_input``; its output is then the guided
        prediction of Eq. 3.8 in one forward).
        """
        residuals = None if self.controlnet is None else \
            self.controlnet(z_t, t, control, hint=hint, copies=copies, context=context, guidance=guidance)
        return self.unet(z_t, t, stats, residuals, copies=copies, control=control, guidance=guidance)
