"""The ``aldm`` command line: one entry point, sub-commands per stage.

Every user-facing failure is an :class:`~aldm.errors.AldmError`, printed as one line
(``aldm: error: <file>: <what is wrong>``) with exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .errors import AldmError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# ------------------------------------------------------------------------------------------------ data
def _cmd_data_synth(args) -> int:
    from .data.synth import synth_cohorts

    start = time.perf_counter()
    roots = synth_cohorts(args.out, args.n_source, args.n_target, seed=args.seed, workers=args.workers,
                          progress=not args.quiet)
    n = args.n_source + args.n_target
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n_source} source subjects to {roots['source']}")
    print(f"wrote {args.n_target} target subjects to {roots['target']}")
    print(f"{elapsed:.1f} s in all, {elapsed / max(n, 1):.2f} s per subject with {args.workers} worker(s)")
    return 0


def _cmd_data_prepare(args) -> int:
    from .data.cache import prepare_dataset
    from .data.preprocess import PrepConfig

    config = PrepConfig(size=args.size, mode=args.mode, spacing=args.spacing)
    start = time.perf_counter()
    summary = prepare_dataset(args.dataset, args.root, args.out, config, domain=args.domain,
                              sessions=args.sessions, workers=args.workers, strict=args.strict, limit=args.limit,
                              progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(summary.table())
    if summary.prepared:
        print(f"{elapsed / summary.prepared:.2f} s per prepared subject with {args.workers} worker(s)")
    print(f"cache: {os.path.abspath(args.out)}")
    return 1 if summary.failed and not (summary.prepared or summary.cached) else 0


def _cmd_data_verify(args) -> int:
    from .data.cache import read_manifest, verify_cache

    problems = verify_cache(args.cache)
    for line in problems:
        print(line, file=sys.stderr)
    n = len(read_manifest(args.cache))
    print(f"{n - len(problems)} of {n} cached subjects intact")
    return 1 if problems else 0


def _cmd_data_split(args) -> int:
    from .data.cache import read_manifest
    from .data.splits import few_shot_split, repeated_kfold, save_split

    rows = read_manifest(args.cache)
    if not rows:
        raise AldmError(f"{args.cache}: no manifest.csv; run aldm data prepare first")
    if args.domain:
        rows = [r for r in rows if r["domain"] == args.domain]
    stratify = None if args.stratify == "none" else args.stratify
    split = few_shot_split(rows, args.k, args.n_test, seed=args.seed, stratify=stratify)
    split["cv"] = repeated_kfold([r for r in rows if r["subject"] in set(split["test"]) | set(split["pool"])],
                                 n_splits=args.folds, n_repeats=args.repeats, seed=args.seed,
                                 stratify=stratify) if args.folds else []
    out = args.out or os.path.join(args.cache, "splits", f"k{args.k}_seed{args.seed}.json")
    save_split(out, split)
    print(f"K={args.k} few-shot: {len(split['k_shot'])} subjects; held-out test: {len(split['test'])}; "
          f"pool: {len(split['pool'])}; CV folds: {len(split['cv'])}")
    print(f"split: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .data.cohorts import DATASETS
    from .data.preprocess import MODES

    parser = argparse.ArgumentParser(
        prog="aldm",
        description="Few-shot cross-domain 3D glioma MRI synthesis (Anatomically-conditioned Latent Diffusion).",
    )
    parser.add_argument("--version", action="version", version=f"aldm {__import__('aldm').__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    data = commands.add_parser("data", help="phantom cohorts, dataset ingestion, cache, splits")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_commands.required = True

    synth = data_commands.add_parser("synth", help="write embedded phantom cohorts in the real datasets' layouts")
    synth.add_argument("out", help="output folder (gets UPENN-GBM/ and UCSF-PDGM/)")
    synth.add_argument("--n-source", type=_non_negative_int, default=24, help="UPENN-GBM-like subjects")
    synth.add_argument("--n-target", type=_non_negative_int, default=24, help="UCSF-PDGM-like subjects")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=_positive_int, default=1)
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_data_synth)

    prep = data_commands.add_parser("prepare", help="verify, preprocess and cache a dataset as downloaded")
    prep.add_argument("dataset", choices=DATASETS)
    prep.add_argument("root", help="the dataset's folder as downloaded")
    prep.add_argument("--out", required=True, help="cache folder")
    prep.add_argument("--size", type=_positive_int, default=112, help="model cube edge (voxels)")
    prep.add_argument("--mode", choices=MODES, default="resize",
                      help="resize: brain box resized to the cube (paper reference); crop-pad: fixed spacing")
    prep.add_argument("--spacing", type=float, default=1.5, help="mm, crop-pad mode")
    prep.add_argument("--domain", choices=("source", "target"), default=None,
                      help="override the dataset's default domain")
    prep.add_argument("--sessions", choices=("baseline", "all"), default="baseline",
                      help="UPENN-GBM: baseline _11 scans only (default) or all sessions")
    prep.add_argument("--workers", type=_positive_int, default=1)
    prep.add_argument("--strict", action="store_true", help="stop at the first bad subject")
    prep.add_argument("--limit", type=_positive_int, default=None, help="only the first N subjects")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=_cmd_data_prepare)

    verify = data_commands.add_parser("verify", help="check a cache's files against their manifest checksums")
    verify.add_argument("cache")
    verify.set_defaults(func=_cmd_data_verify)

    split = data_commands.add_parser("split", help="patient-level K-shot / held-out test / 3x5-fold CV split")
    split.add_argument("cache")
    split.add_argument("--k", type=_positive_int, default=16, help="few-shot subjects (paper: 10, 16)")
    split.add_argument("--n-test", type=_non_negative_int, default=64, help="held-out test subjects (paper: 64)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--stratify", choices=("idh", "grade", "none"), default="idh")
    split.add_argument("--domain", choices=("source", "target"), default=None)
    split.add_argument("--folds", type=_non_negative_int, default=5, help="CV folds over test+pool (0: none)")
    split.add_argument("--repeats", type=_positive_int, default=3)
    split.add_argument("--out", default=None, help="JSON path (default CACHE/splits/k<K>_seed<S>.json)")
    split.set_defaults(func=_cmd_data_split)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AldmError as exc:
        print(f"aldm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aldm: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
