"""``aldm experiment``: Table 1 with Figures 2-5, and the downstream segmentation experiment (resumable)."""

from __future__ import annotations

import os


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
