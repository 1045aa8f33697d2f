"""Argument types of the ``aldm`` command line: each refuses a bad value with argparse's one-line error."""

from __future__ import annotations

import argparse
import math


def _parsed(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _refuse_unless(ok: bool, message: str) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(message)


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _parsed(text, int, "a whole number")
    _refuse_unless(value >= 1, f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _parsed(text, int, "a whole number")
    _refuse_unless(value >= 0, f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _parsed(text, float, "a number")
    _refuse_unless(value > 0 and value != float("inf"), f"must be a number > 0, got {text}")
    return value


def shrink_factor(text: str) -> float:
    """A factor in (0, 1]: how much a tumour is shrunk."""
    value = _parsed(text, float, "a number in (0, 1]")
    _refuse_unless(0.0 < value <= 1.0, f"expected a number in (0, 1], got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A finite number."""
    value = _parsed(text, float, "a number")
    _refuse_unless(math.isfinite(value), f"must be a finite number, got {text}")
    return value


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = positive_int(text)
    _refuse_unless(value <= 65535, f"a port is 1..65535, got {value}")
    return value


def add_sampling_arguments(parser) -> None:
    """The options of a diffusion sampler (guidance s, steps, sampler, seed, precision), as ``aldm generate`` and
    ``aldm edit`` share them; :func:`sampling_settings` reads them back."""
    from ..config import PRECISIONS
    from ..diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
    from ..diffusion.settings import DEFAULT_GUIDANCE, GUIDANCE_RANGE

    parser.add_argument("--guidance", type=finite_float, default=DEFAULT_GUIDANCE,
                        help=f"classifier-free guidance scale s (Eq. 3.8), {GUIDANCE_RANGE[0]:g} to "
                             f"{GUIDANCE_RANGE[1]:g}")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help=f"sampler steps (default {DEFAULT_STEPS}; a distilled run: its own; DDPM: all T)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help=f"{DEFAULT_SAMPLER} (DPM-Solver++ 2M, best per step; the default), ddim, ddpm (ancestral, "
                             "all T steps), or distilled (DDIM on a distilled student's grid; a distilled run's "
                             "default)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="ALDM and the pixel DDPM: auto = bf16 autocast where the GPU or CPU computes bf16 "
                             "natively (CUDA, AMX / AVX512-BF16), else fp32")


def sampling_settings(args):
    """The :class:`~aldm.diffusion.settings.GenerationSettings` of :func:`add_sampling_arguments`' options."""
    from ..diffusion.settings import GenerationSettings

    return GenerationSettings(guidance=args.guidance, sampler=args.sampler, steps=args.steps, seed=args.seed,
                              precision=args.precision)
