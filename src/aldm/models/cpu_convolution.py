"""3D convolutions on oneDNN for CPU inference at any batch size.

PyTorch's CPU convolution chooses between oneDNN and its own im2col path by a size rule: a float input of batch 1
whose N x C x D x H is at most 20480 elements, with a kernel of 3 or less, takes the im2col path ("for some case,
native is faster", aten/src/ATen/native/Convolution.cpp). aldm's latents are such inputs at demo scale (the
``small`` profile's 8 x 16^3 latent through 32-128 channels): one denoiser forward of batch 1 took 0.126 s there
against 0.031 s on oneDNN (2 CPU cores, the demo's few-shot run; docs/results.md), and a batch-1 forward cost more
than a guided forward of batch 2. Sampling one volume at a time (the web UI, scan edits, a distilled student)
pays that on every step. :func:`onednn_convolutions` makes a network's ``Conv3d`` layers call oneDNN directly when
they run in inference on CPU in fp32; in training, under autocast, on another device or dtype, or without oneDNN
they run as ``nn.Conv3d`` does. The results agree with ``nn.Conv3d`` to float rounding (tested).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same state dict) whose CPU fp32 inference forward is oneDNN's at every
    batch size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, D, H, W) -> (B, C_out, D', H', W'), as ``nn.Conv3d``."""
        if (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                                     self.dilation, self.groups)
        return super().forward(x)


def onednn_convolutions(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.Conv3d`` made an :class:`OneDNNConv3d` in place (where this torch has oneDNN);
    returns it."""
    if not torch.backends.mkldnn.is_available():
        return module
    for layer in module.modules():
        if type(layer) is nn.Conv3d:
            layer.__class__ = OneDNNConv3d
    return module
