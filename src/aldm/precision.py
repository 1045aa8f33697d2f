"""Reduced precision where the hardware gains from it (issue 8): bf16 autocast or fp32.

bf16 autocast runs the convolutions and matrix products in bfloat16 with fp32 accumulation, and
keeps normalisation, losses and the samplers' arithmetic in fp32. It pays where the hardware has
native bf16 units: CUDA GPUs with bf16 (Ampere and later) and CPUs with AMX-BF16 or AVX512-BF16
(Intel Sapphire Rapids and later, AMD Zen 4 and later), where oneDNN runs bf16 convolutions
natively — on the development machine (AMX) the guided denoiser step is 2.7x and the VAE training
step 2.0-2.1x faster than fp32 (docs/performance.md). On other CPUs oneDNN emulates bf16 and is
slower than fp32, so ``auto`` keeps fp32 there.
"""

from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (and bf16 autocast is therefore faster than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in _cpu_flags() for flag in _CPU_BF16_FLAGS)
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"auto" -> "bf16" where :func:`native_bf16`, else "fp32"; "fp32" and "bf16" as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str):
    """The autocast context of a resolved precision ("bf16": bf16 autocast; "fp32": nothing)."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def with_bf16_weights(module: torch.nn.Module) -> torch.nn.Module:
    """An inference copy of ``module`` whose convolutions and linear layers hold bf16 weights (norms
    stay fp32), to run under bf16 autocast: autocast would otherwise cast every fp32 weight to bf16
    at every call (in inference it keeps no cast cache), which at small volumes costs more than the
    convolutions themselves. The same function as the fp32 module under autocast, to bf16 rounding."""
    import copy

    clone = copy.deepcopy(module)
    for layer in clone.modules():
        if isinstance(layer, (torch.nn.Conv3d, torch.nn.Linear)):
            layer.to(torch.bfloat16)
    return clone.eval().requires_grad_(False)
