"""``aldm data``: phantom cohorts, dataset ingestion into a cache, cache checks and patient-level splits."""

from __future__ import annotations

import os
import sys
import time

from .arguments import non_negative_int, positive_int, shrink_factor


def _cmd_data_synth(args) -> int:
    from ..data.synth import Extras, synth_cohorts

    start = time.perf_counter()
    roots = synth_cohorts(args.out, args.n_source, args.n_target, seed=args.seed, workers=args.workers,
                          progress=not args.quiet, extras=Extras(healthy_twins=args.healthy_twins,
                                                                  resized_twins=args.resized_twins or 0.0,
                                                                  n_healthy=args.healthy))
    n = args.n_source + args.n_target + args.healthy
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n_source} source subjects to {roots['source']}")
    print(f"wrote {args.n_target} target subjects to {roots['target']}")
    if "twins" in roots:
        print(f"wrote their healthy twins to {roots['twins']}")
    if "resized" in roots:
        print(f"wrote their resized twins (tumour x{args.resized_twins:g}) to {roots['resized']}")
    if "healthy" in roots:
        print(f"wrote {args.healthy} healthy subjects to {roots['healthy']}")
    print(f"{elapsed:.1f} s in all, {elapsed / max(n, 1):.2f} s per subject with {args.workers} worker(s)")
    return 0


def _cmd_data_prepare(args) -> int:
    from ..data.cache import DatasetSource, prepare_dataset
    from ..data.preprocess import PrepConfig
    from ..modalities import parse_modalities

    config = PrepConfig(size=args.size, mode=args.mode, spacing=args.spacing,
                        modalities=parse_modalities(args.modalities, "--modalities"))
    start = time.perf_counter()
    source = DatasetSource(args.dataset, args.root, args.domain, args.sessions, args.limit)
    summary = prepare_dataset(source, args.out, config, workers=args.workers, strict=args.strict,
                              progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(summary.table())
    if summary.prepared:
        print(f"{elapsed / summary.prepared:.2f} s per prepared subject with {args.workers} worker(s)")
    print(f"cache: {os.path.abspath(args.out)}")
    return 1 if summary.failed and not (summary.prepared or summary.cached) else 0


def _cmd_data_verify(args) -> int:
    from ..artifacts.cache import PreparedCache
    from ..artifacts.samples import SampleSet

    if PreparedCache.is_cache(args.cache):
        cache = PreparedCache(args.cache)
        problems = cache.verify()
        n = len(cache.rows())
        what = "cached subjects"
    else:
        n, problems = SampleSet(args.cache).verify()
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{n} generated samples checked: {len(problems)} problem(s)")
        return 1 if problems else 0
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{n - len(problems)} of {n} {what} intact")
    return 1 if problems else 0


def _cmd_data_split(args) -> int:
    from ..artifacts.cache import PreparedCache
    from ..artifacts.split import save_split
    from ..data.splits import few_shot_split, with_cv_folds

    rows = PreparedCache(args.cache).require().rows(args.domain)
    stratify = None if args.stratify == "none" else args.stratify
    split = few_shot_split(rows, args.k, args.n_test, seed=args.seed, stratify=stratify)
    split = with_cv_folds(rows, split, args.folds, args.repeats, args.seed) if args.folds else {**split, "cv": []}
    out = args.out or os.path.join(args.cache, "splits", f"k{args.k}_seed{args.seed}.json")
    save_split(out, split)
    print(f"K={args.k} few-shot: {len(split['k_shot'])} subjects; held-out test: {len(split['test'])}; "
          f"pool: {len(split['pool'])}; CV folds: {len(split['cv'])}")
    print(f"split: {out}")
    return 0


def register(commands) -> None:
    """Add ``aldm data`` and its sub-commands to ``commands`` (an argparse sub-parsers object)."""
    from ..data.cohorts import DATASETS, MODES

    data = commands.add_parser("data", help="phantom cohorts, dataset ingestion, cache, splits")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_commands.required = True

    synth = data_commands.add_parser("synth", help="write embedded phantom cohorts in the real datasets' layouts")
    synth.add_argument("out", help="output folder (gets UPENN-GBM/ and UCSF-PDGM/)")
    synth.add_argument("--n-source", type=non_negative_int, default=24, help="UPENN-GBM-like subjects")
    synth.add_argument("--n-target", type=non_negative_int, default=24, help="UCSF-PDGM-like subjects")
    synth.add_argument("--healthy-twins", action="store_true",
                       help="also each subject without its tumour (OUT/healthy-twins/<subject>/): the truth a tumour's "
                            "removal is scored against")
    synth.add_argument("--resized-twins", type=shrink_factor, default=None, metavar="F",
                       help="also each subject with its tumour shrunk by F about its centre, 0 < F <= 1 "
                            "(OUT/resized-twins/<subject>/ with seg.nii.gz): the truth a shrunk tumour is scored "
                            "against")
    synth.add_argument("--healthy", type=non_negative_int, default=0, metavar="N",
                       help="also N healthy subjects (OUT/healthy/HEALTHY-NNNN/) to insert tumours into")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=positive_int, default=1)
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_data_synth)

    prep = data_commands.add_parser("prepare", help="verify, preprocess and cache a dataset as downloaded")
    prep.add_argument("dataset", choices=DATASETS)
    prep.add_argument("root", help="the dataset's folder as downloaded")
    prep.add_argument("--out", required=True, help="cache folder")
    prep.add_argument("--size", type=positive_int, default=112, help="model cube edge (voxels)")
    prep.add_argument("--mode", choices=MODES, default="resize",
                      help="resize: brain box resized to the cube (paper reference); crop-pad: fixed spacing")
    prep.add_argument("--spacing", type=float, default=1.5, help="mm, crop-pad mode")
    prep.add_argument("--modalities", default="t1,t2,flair",
                      help="the cache's channels, in order: any of t1, t1c, t2, flair (default: the paper's "
                           "t1,t2,flair); the VAE and the baselines trained on the cache take as many")
    prep.add_argument("--domain", choices=("source", "target"), default=None,
                      help="override the dataset's default domain")
    prep.add_argument("--sessions", choices=("baseline", "all"), default="baseline",
                      help="UPENN-GBM: baseline _11 scans only (default) or all sessions")
    prep.add_argument("--workers", type=positive_int, default=1)
    prep.add_argument("--strict", action="store_true", help="stop at the first bad subject")
    prep.add_argument("--limit", type=positive_int, default=None, help="only the first N subjects")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=_cmd_data_prepare)

    verify = data_commands.add_parser("verify", help="check a cache's or a generate folder's files against their "
                                                     "recorded checksums")
    verify.add_argument("cache", metavar="FOLDER", help="a prepared cache or an aldm generate output folder")
    verify.set_defaults(func=_cmd_data_verify)

    split = data_commands.add_parser("split", help="patient-level K-shot / held-out test / 3x5-fold CV split")
    split.add_argument("cache")
    split.add_argument("--k", type=positive_int, default=16, help="few-shot subjects (paper: 10, 16)")
    split.add_argument("--n-test", type=non_negative_int, default=None,
                       help="held-out test patients (default: min(64, all but K); paper: 64)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--stratify", choices=("idh", "grade", "none"), default="idh")
    split.add_argument("--domain", choices=("source", "target"), default=None)
    split.add_argument("--folds", type=non_negative_int, default=5, help="CV folds over test+pool (0: none)")
    split.add_argument("--repeats", type=positive_int, default=3)
    split.add_argument("--out", default=None, help="JSON path (default CACHE/splits/k<K>_seed<S>.json)")
    split.set_defaults(func=_cmd_data_split)
