"""``aldm generate``: synthetic volumes (and label maps) from masks or label maps, in model and native space."""

from __future__ import annotations

import os
import time

from .arguments import add_sampling_arguments, non_negative_int, positive_int, sampling_settings


def _cmd_generate(args) -> int:
    from ..data.masks import MaskSource
    from ..distributed import init_distributed, shutdown
    from ..generate import GenerationRequest, GenerationRuntime, generate

    settings = sampling_settings(args)
    info = init_distributed()
    try:
        start = time.perf_counter()
        masks = MaskSource.parse(args.masks) if args.masks else None
        runtime = GenerationRuntime(batch_size=args.batch_size, dist_info=info, device=args.device,
                                    progress=not args.quiet, decode_slab=args.decode_slab)
        rows = generate(GenerationRequest(args.model, args.out, args.n, masks, args.subjects, settings,
                                          overwrite=args.overwrite, runtime=runtime))
        elapsed = time.perf_counter() - start
    finally:
        shutdown(info)
    if info.is_main:
        print(f"{len(rows)} samples in {os.path.abspath(args.out)} ({elapsed:.1f} s for this run)")
    return 0


def register(commands) -> None:
    """Add ``aldm generate`` to ``commands`` (an argparse sub-parsers object)."""
    gen = commands.add_parser("generate", help="synthetic volumes from masks, NIfTI in model and native space")
    gen.add_argument("--model", required=True, help="finished LDM, few-shot or baseline run")
    gen.add_argument("--masks", default=None,
                     help="cache:PATH, folder:PATH, relocated:PATH or appendix:PATH (paper Appendix A order); "
                          "default: the model's held-out subjects")
    gen.add_argument("--subjects", nargs="+", default=None, help="only these mask subjects")
    gen.add_argument("--n", type=positive_int, default=8, help="number of samples")
    add_sampling_arguments(gen)
    gen.add_argument("--batch-size", type=positive_int, default=4)
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
