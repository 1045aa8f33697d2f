"""``aldm evaluate`` (the metrics of a synthetic set) and ``aldm segmenter train`` (the segmenter that
measures mask adherence)."""

from __future__ import annotations

import os

from .arguments import positive_int


def _cmd_evaluate(args) -> int:
    import json

    from ..evaluate import EvaluationSettings, evaluate

    modalities = None if args.frd is None else () if args.frd == "none" else tuple(args.frd.split(","))
    result = evaluate(args.real, args.synthetic, args.out,
                      EvaluationSettings(inception=args.inception, device=args.device, frd_modalities=modalities,
                                         segmenter=args.segmenter))
    shown = {k: v for k, v in result.to_dict().items() if not isinstance(v, dict)}
    print(json.dumps(shown, indent=2))
    print(f"metrics: {os.path.abspath(os.path.join(args.out, 'metrics.json'))}")
    return 0


def _cmd_segmenter(args) -> int:
    from ..evaluators.segmenter import SegmenterConfig, fit_on_caches, held_out_subjects

    config = SegmenterConfig(init_filters=args.width, steps=args.steps, seed=args.seed, device=args.device)
    done = fit_on_caches(args.data, args.out, config, held_out_subjects(args.holdout), progress=not args.quiet,
                         resume=args.resume, regions=args.regions)
    print(f"segmenter of {'/'.join(done['regions'])} trained on {done['subjects']} subjects ({done['held_out']} held "
          f"out): {done['out']}")
    return 0


def register(commands) -> None:
    """Add ``aldm evaluate`` and ``aldm segmenter`` to ``commands`` (an argparse sub-parsers object)."""
    ev = commands.add_parser("evaluate", help="SSIM, FID, diversity and memorisation of a synthetic set")
    ev.add_argument("--real", required=True, help="prepared cache holding the mask subjects' real volumes")
    ev.add_argument("--synthetic", required=True, help="an aldm generate output folder")
    ev.add_argument("--out", required=True, help="folder for metrics.json and per_patient.csv")
    ev.add_argument("--inception", default=None, help="FID Inception weights file (pt_inception-2015-12-05)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--frd", default=None,
                    help="modalities for FRD (comma-separated file stems, e.g. t1,flair) or none; default: all of the "
                         "cache's")
    ev.add_argument("--segmenter", default=None,
                    help="a folder of aldm segmenter train: adds mask Dice (ceiling: the real volumes; floor: "
                         "shuffled masks)")
    ev.set_defaults(func=_cmd_evaluate)

    seg = commands.add_parser("segmenter", help="the 3D tumour segmenter that measures mask adherence")
    seg_commands = seg.add_subparsers(dest="segmenter_command", metavar="COMMAND")
    seg_commands.required = True
    seg_train = seg_commands.add_parser("train", help="train it on real cached volumes, held-out patients excluded")
    seg_train.add_argument("--data", required=True, nargs="+", help="prepared caches (one size)")
    seg_train.add_argument("--out", required=True, help="the segmenter's run folder (run.json, weights.pt)")
    seg_train.add_argument("--resume", action="store_true", help="continue the segmenter in --out exactly")
    seg_train.add_argument("--holdout", nargs="*", default=[],
                           help="few-shot runs or split JSON files whose held-out test subjects are left out")
    seg_train.add_argument("--steps", type=positive_int, default=300)
    seg_train.add_argument("--width", type=positive_int, default=8, help="SegResNet init_filters")
    seg_train.add_argument("--regions", choices=("auto", "wt", "brats"), default="auto",
                           help="what it predicts: wt (whole tumour) or brats (WT, TC, ET); auto: brats when the "
                                "caches' label maps hold sub-regions")
    seg_train.add_argument("--seed", type=int, default=0)
    seg_train.add_argument("--device", default="cpu")
    seg_train.add_argument("--quiet", action="store_true")
    seg_train.set_defaults(func=_cmd_segmenter)
