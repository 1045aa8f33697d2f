"""``aldm edit``: a real scan edited by its label map (insert, move, grow, shrink, transplant or remove a tumour),
the input's own voxels everywhere outside the region of change."""

from __future__ import annotations

import os
import sys

from .arguments import add_sampling_arguments, finite_float, positive_int, sampling_settings


def _shift(text: str) -> tuple:
    """``DX,DY,DZ`` in mm."""
    import argparse

    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three distances in mm as DX,DY,DZ, got {text!r}")
    return values


def _operation(args):
    """The :class:`~aldm.editing.operations.LabelEdit` the options ask for."""
    from ..editing.operations import LabelEdit

    if args.labels:
        return LabelEdit("labels", path=args.labels)
    if args.move is not None:
        return LabelEdit("move", shift_mm=args.move)
    if args.grow is not None:
        return LabelEdit("grow", factor=args.grow)
    if args.shrink is not None:
        return LabelEdit("shrink", factor=args.shrink)
    if args.transplant:
        return LabelEdit("transplant", path=args.transplant)
    return LabelEdit("remove")


def _cmd_edit(args) -> int:
    from ..editing.session import EditRequest, edit_scan

    request = EditRequest(model=args.model, subject=args.subject, operation=_operation(args), out=args.out, n=args.n,
                          settings=sampling_settings(args), edit=edit_settings(args),
                          native=not args.model_space_only, overwrite=args.overwrite, device=args.device)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    records = edit_scan(request, log)
    print(f"{len(records)} edit(s) of {args.subject} in {os.path.abspath(args.out)}")
    return 0


def add_edit_arguments(parser) -> None:
    """How an edit is made (margin, resampling, harmonisation), as ``aldm edit`` and ``aldm experiment edit``
    share them; :func:`edit_settings` reads them back."""
    from ..editing.editor import DEFAULT_MARGIN_MM, MAX_JUMPS

    parser.add_argument("--margin", type=finite_float, default=DEFAULT_MARGIN_MM, metavar="MM",
                        help="the region of change: the old and new tumours dilated by MM (also the seam's ramp)")
    parser.add_argument("--resample", type=positive_int, default=1, metavar="J",
                        help=f"RePaint resampling: J rounds per DDIM step (1: none; up to {MAX_JUMPS}; J times the "
                             "network evaluations)")
    parser.add_argument("--no-harmonise", action="store_true",
                        help="keep the decoder's intensity offset from the scan (by default removed, as measured "
                             "over the region's margin)")


def edit_settings(args):
    """The :class:`~aldm.editing.editor.EditSettings` of :func:`add_edit_arguments`' options."""
    from ..editing.editor import EditSettings

    return EditSettings(args.margin, args.resample, not args.no_harmonise)


def register(commands) -> None:
    """Add ``aldm edit`` to ``commands`` (an argparse sub-parsers object)."""

    edit = commands.add_parser("edit", help="edit a real scan by its label map: insert, move, grow, shrink, "
                                            "transplant or remove a tumour; the rest of the scan unchanged")
    edit.add_argument("--model", required=True, help="finished ALDM run (source or few-shot)")
    edit.add_argument("--subject", required=True,
                      help="cache:DIR:ID (a prepared subject) or a folder holding one case (BraTS 2021 / 2023 or "
                           "t1/t2/flair[/mask].nii.gz; no label map: a healthy scan)")
    what = edit.add_mutually_exclusive_group(required=True)
    what.add_argument("--labels", metavar="FILE", help="the new label map (BraTS 0/1/2/4) on the subject's grid")
    what.add_argument("--move", type=_shift, metavar="DX,DY,DZ",
                      help="move the tumour by these mm (RAS: +x right, +y anterior, +z up; a negative first: "
                           "--move=-10,0,0)")
    what.add_argument("--grow", type=finite_float, metavar="F", help="scale the tumour's diameter by F > 1")
    what.add_argument("--shrink", type=finite_float, metavar="F", help="scale the tumour's diameter by F < 1")
    what.add_argument("--transplant", metavar="OTHER",
                      help="another patient's tumour (cache:DIR:ID or a case folder) in place of this one's")
    what.add_argument("--remove", action="store_true", help="healthy tissue where the tumour was")
    edit.add_argument("--n", type=positive_int, default=1, help="number of variants (seeds seed, seed + 1, ...)")
    add_sampling_arguments(edit)
    add_edit_arguments(edit)
    edit.add_argument("--model-space-only", action="store_true",
                      help="write the model-space files only (no native grid; the native images are not read)")
    edit.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    edit.add_argument("--out", required=True)
    edit.add_argument("--overwrite", action="store_true", help="remove the edits already in --out first")
    edit.add_argument("--quiet", action="store_true")
    edit.set_defaults(func=_cmd_edit)
