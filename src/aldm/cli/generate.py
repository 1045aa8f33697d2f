"""``aldm generate``: synthetic volumes (and label maps) from masks or label maps, in model and native space."""

from __future__ import annotations

import os
import time

from ..config import PRECISIONS
from .arguments import finite_float, non_negative_int, positive_int


def _cmd_generate(args) -> int:
    from ..data.masks import MaskSource
    from ..diffusion.settings import GenerationSettings
    from ..distributed import init_distributed, shutdown
    from ..generate import generate

    settings = GenerationSettings(guidance=args.guidance, sampler=args.sampler, steps=args.steps, seed=args.seed,
                                  precision=args.precision)
    info = init_distributed()
    try:
        start = time.perf_counter()
        masks = MaskSource.parse(args.masks) if args.masks else None
        rows = generate(args.model, args.out, args.n, masks=masks, subjects=args.subjects, settings=settings,
                        batch_size=args.batch_size, dist_info=info, device=args.device, progress=not args.quiet,
                        decode_slab=args.decode_slab, overwrite=args.overwrite)
        elapsed = time.perf_counter() - start
    finally:
        shutdown(info)
    if info.is_main:
        print(f"{len(rows)} samples in {os.path.abspath(args.out)} ({elapsed:.1f} s for this run)")
    return 0


def register(commands) -> None:
    """Add ``aldm generate`` to ``commands`` (an argparse sub-parsers object)."""
    from ..diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
    from ..diffusion.settings import DEFAULT_GUIDANCE, GUIDANCE_RANGE

    gen = commands.add_parser("generate", help="synthetic volumes from masks, NIfTI in model and native space")
    gen.add_argument("--model", required=True, help="finished LDM, few-shot or baseline run")
    gen.add_argument("--masks", default=None,
                     help="cache:PATH, folder:PATH, relocated:PATH or appendix:PATH (paper Appendix A order); "
                          "default: the model's held-out subjects")
    gen.add_argument("--subjects", nargs="+", default=None, help="only these mask subjects")
    gen.add_argument("--n", type=positive_int, default=8, help="number of samples")
    gen.add_argument("--guidance", type=finite_float, default=DEFAULT_GUIDANCE,
                     help=f"classifier-free guidance scale s (Eq. 3.8), {GUIDANCE_RANGE[0]:g} to {GUIDANCE_RANGE[1]:g}")
    gen.add_argument("--steps", type=positive_int, default=None,
                     help=f"sampler steps (default {DEFAULT_STEPS}; DDPM: all T)")
    gen.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                     help="dpmpp2m (DPM-Solver++ 2M, best per step; default), ddim, or ddpm (ancestral, all T steps)")
    gen.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    gen.add_argument("--batch-size", type=positive_int, default=4)
    gen.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="ALDM and the pixel DDPM: auto = bf16 autocast where the GPU or CPU computes bf16 "
                          "natively (CUDA, AMX / AVX512-BF16), else fp32")
    gen.add_argument("--decode-slab", type=non_negative_int, default=0, metavar="PLANES",
                     help="ALDM: VAE-decode the full-resolution stage in depth slabs of PLANES planes (same volumes, "
                          "about half the decoder's peak memory, a little slower; 0 = whole volume)")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    gen.add_argument("--out", required=True)
    gen.add_argument("--overwrite", action="store_true",
                     help="remove the samples already in --out first (a re-run otherwise continues them only when "
                          "they were made with the same model, settings, seeds and masks)")
    gen.add_argument("--quiet", action="store_true")
    gen.set_defaults(func=_cmd_generate)
