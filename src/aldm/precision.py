"""Reduced precision where the hardware gains from it and computes it correctly: bf16 autocast or fp32.

bf16 autocast runs the convolutions and matrix products in bfloat16 with fp32 accumulation, and
keeps normalisation, losses and the samplers' arithmetic in fp32. It pays where the hardware has
native bf16 units: CUDA GPUs with bf16 (Ampere and later) and CPUs with AMX-BF16 or AVX512-BF16
(Intel Sapphire Rapids and later, AMD Zen 4 and later), where oneDNN runs bf16 convolutions
natively — on the development machine (AMX) the guided denoiser step is 2.7x and the VAE training
step 2.0-2.1x faster than fp32 (docs/performance.md). On other CPUs oneDNN emulates bf16 and is
slower than fp32, so ``auto`` keeps fp32 there.

Inference and training are decided apart, from evidence (docs/model.md, "Precision"):

* inference (``training=False``): bf16 on CUDA with bf16 and on CPUs with AMX-BF16 or AVX512-BF16
  (on an AVX512-BF16 CPU without AMX, an AMD EPYC, the small profile's denoiser forward is 1.5x
  faster in bf16 and within 1 % of fp32);
* training (``training=True``): bf16 on CUDA with bf16 and on CPUs with AMX-BF16 only. On the AMD
  EPYC (AVX512-BF16, no AMX) the Conv3d weight gradients of the denoiser's deepest level came out
  non-finite in 1 to 2 of 20 bf16 backward passes with finite forwards and losses, which made short
  runs abort; CPU training there runs fp32 under ``auto``.

``ALDM_HIDE_CPU_FLAGS`` (comma-separated, e.g. ``amx_bf16``) hides CPU flags from this decision, to
exercise the other paths on a machine that has them.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from .config import PRECISIONS

_CPU_BF16_INFERENCE_FLAGS = ("amx_bf16", "avx512_bf16")
_CPU_BF16_TRAINING_FLAGS = ("amx_bf16",)
HIDE_FLAGS_ENV = "ALDM_HIDE_CPU_FLAGS"


@functools.lru_cache(maxsize=1)
def _proc_cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux /proc/cpuinfo), less those named in ``ALDM_HIDE_CPU_FLAGS``."""
    hidden = {flag.strip() for flag in os.environ.get(HIDE_FLAGS_ENV, "").replace(" ", ",").split(",")}
    return _proc_cpu_flags() - hidden


def native_bf16(device: torch.device | str, training: bool = False) -> bool:
    """Whether ``device`` computes bf16 natively and correctly for inference, or (``training``) for
    forward + backward passes, so that bf16 autocast is faster than fp32 and safe."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        flags = _CPU_BF16_TRAINING_FLAGS if training else _CPU_BF16_INFERENCE_FLAGS
        return any(flag in _cpu_flags() for flag in flags)
    return False


def resolve_precision(precision: str, device: torch.device | str, training: bool = False) -> str:
    """"auto" -> "bf16" where :func:`native_bf16` (for inference or ``training``), else "fp32";
    "fp32" and "bf16" as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device, training) else "fp32"
    return precision


def training_fallback_note(device: torch.device | str) -> str | None:
    """One line saying why ``auto`` trains in fp32 on a CPU that runs bf16 inference, else None."""
    if torch.device(device).type == "cpu" and native_bf16(device) and not native_bf16(device, training=True):
        return ("aldm: note: training in fp32: this CPU has AVX512-BF16 but no AMX, where bf16 weight gradients "
                "were found unreliable (--precision bf16 forces it)")
    return None


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
