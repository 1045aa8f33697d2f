"""``aldm demo``: phantom cohorts -> every stage -> generation -> evaluation -> report, on a fresh machine."""

from __future__ import annotations

import os
import time

from .arguments import positive_int


def _cmd_demo(args) -> int:
    from ..experiments.demo import run_demo

    start = time.perf_counter()
    out = args.out or ("aldm-demo-regions" if args.regions else "aldm-demo")
    report = run_demo(out, quick=args.quick, seed=args.seed, workers=args.workers, progress=not args.quiet,
                      segmentation=args.segmentation, regions=args.regions)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"report: {os.path.abspath(report)}")
    return 0


def register(commands) -> None:
    """Add ``aldm demo`` to ``commands`` (an argparse sub-parsers object)."""
    demo = commands.add_parser("demo", help="phantom data -> training -> generation -> evaluation -> report")
    demo.add_argument("--out", default=None, help="output folder (default ./aldm-demo, ./aldm-demo-regions)")
    demo.add_argument("--regions", action="store_true",
                      help="four modalities (T1, T1c, T2, FLAIR) and generators conditioned on the BraTS regions")
    demo.add_argument("--quick", action="store_true", help="tiny profile smoke run (a few minutes)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--segmentation", action="store_true",
                      help="also the downstream segmentation experiment (aldm experiment segmentation), in the "
                           "same report")
    demo.add_argument("--workers", type=positive_int, default=2)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)
