"""``aldm export``: synthetic (and real) cases as nnU-Net v2 or BraTS 2021 training data."""

from __future__ import annotations

import os

from ..errors import AldmError


def _cmd_export(args) -> int:
    from ..export import export

    subjects = args.real_subjects
    if args.real_split:
        from ..artifacts.run import Run
        from ..artifacts.split import load_split

        split = Run(args.real_split).split() if os.path.isdir(args.real_split) else load_split(args.real_split)
        if split is None:
            raise AldmError(f"{args.real_split}: a run without a split; give a few-shot run or a split JSON")
        subjects = split["k_shot"]
    done = export(args.format, args.out, synthetic=args.synthetic, real=args.real, real_subjects=subjects,
                  overwrite=args.overwrite)
    print(f"{args.format}: {done['real']} real + {done['synthetic']} synthetic cases in {done['out']} "
          f"(listed in {done['cases_csv']})")
    return 0


def register(commands) -> None:
    """Add ``aldm export`` to ``commands`` (an argparse sub-parsers object)."""
    exp_out = commands.add_parser("export", help="synthetic (and real) cases as nnU-Net v2 or BraTS 2021 training data")
    export_commands = exp_out.add_subparsers(dest="format", metavar="FORMAT")
    export_commands.required = True
    for fmt, text in (("nnunet", "nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json with the BraTS regions)"),
                      ("brats", "BraTS 2021 layout on the 240x240x155 grid (aldm data prepare brats2021 reads it)")):
        sub = export_commands.add_parser(fmt, help=text)
        sub.add_argument("--synthetic", default=None, help="an aldm generate folder (its samples need seg.nii.gz)")
        sub.add_argument("--real", default=None, help="a prepared cache whose real subjects are exported too")
        sub.add_argument("--real-subjects", nargs="+", default=None, help="only these real subjects (default: all)")
        sub.add_argument("--real-split", default=None,
                         help="a few-shot run or split JSON: export its K few-shot subjects as the real cases")
        sub.add_argument("--out", required=True,
                         help="nnUNet_raw/Dataset<NNN>_<Name>" if fmt == "nnunet" else "output folder")
        sub.add_argument("--overwrite", action="store_true", help="replace --out when it is not empty")
        sub.set_defaults(func=_cmd_export)
