"""``aldm experiment``: Table 1 with Figures 2-5, the downstream segmentation experiment (resumable) and the
scan-editing experiment."""

from __future__ import annotations

import os

from .arguments import add_sampling_arguments, positive_int, sampling_settings
from .edit import add_edit_arguments, edit_settings


def _cmd_experiment(args) -> int:
    from ..experiments.table1 import ExperimentConfig, run_table1

    report = run_table1(ExperimentConfig.load(args.config), progress=not args.quiet)
    print(f"report: {os.path.abspath(report)}")
    return 0


def _cmd_segmentation_experiment(args) -> int:
    from ..experiments.segmentation import run_segmentation
    from ..experiments.table1 import ExperimentConfig

    table = run_segmentation(ExperimentConfig.load(args.config), progress=not args.quiet)
    print(f"segmentation table: {os.path.abspath(table)}")
    return 0


def _cmd_edit_experiment(args) -> int:
    from ..experiments.editing import EditExperiment, run_edit_experiment

    exp = EditExperiment(model=args.model, out=args.out, subjects=args.subjects, settings=sampling_settings(args),
                         edit=edit_settings(args), twins=args.twins, segmenter=args.segmenter,
                         resized_twins=args.resized_twins)
    run_edit_experiment(exp, log=(lambda line: None) if args.quiet else print)
    print(f"edit tables: {os.path.abspath(os.path.join(args.out, 'edit.md'))}")
    return 0


def register(commands) -> None:
    """Add ``aldm experiment`` to ``commands`` (an argparse sub-parsers object)."""
    exp = commands.add_parser("experiment", help="the paper's Table 1 and Figures 2-5, and downstream segmentation; "
                                                 "resumable")
    exp_commands = exp.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    exp_commands.required = True
    t1 = exp_commands.add_parser("table1", help="ALDM (K, s) and the baselines through the whole protocol")
    t1.add_argument("--config", required=True, help="experiment JSON (see docs/evaluation.md)")
    t1.add_argument("--quiet", action="store_true")
    t1.set_defaults(func=_cmd_experiment)
    seg_exp = exp_commands.add_parser(
        "segmentation", help="downstream tumour segmentation: K real patients vs K real + N synthetic, synthetic "
                             "only, all real (same config, split and generators as table1)")
    seg_exp.add_argument("--config", required=True, help="experiment JSON; its \"segmentation\" section holds the "
                                                        "settings (see docs/evaluation.md)")
    seg_exp.add_argument("--quiet", action="store_true")
    seg_exp.set_defaults(func=_cmd_segmentation_experiment)
    edit_exp = exp_commands.add_parser(
        "edit", help="scan edits on held-out patients: healthy fill and removal (BraTS inpainting metrics) against "
                     "simple fills, insertion / move / grow / shrink (seam, sharpness, contrasts, Dice)")
    edit_exp.add_argument("--model", required=True, help="finished few-shot ALDM run (its cache and held-out split)")
    edit_exp.add_argument("--out", required=True)
    edit_exp.add_argument("--subjects", type=positive_int, default=8, help="held-out subjects at most")
    edit_exp.add_argument("--twins", default=None,
                          help="healthy twins (aldm data synth --healthy-twins): removal scored against them")
    edit_exp.add_argument("--resized-twins", default=None,
                          help="resized twins (aldm data synth --resized-twins 0.7): the shrunk tumours scored "
                               "against them")
    edit_exp.add_argument("--segmenter", default=None, help="a segmenter folder (Table 1's): per-region Dice")
    add_edit_arguments(edit_exp)
    add_sampling_arguments(edit_exp)
    edit_exp.add_argument("--quiet", action="store_true")
    edit_exp.set_defaults(func=_cmd_edit_experiment)
