"""The ``aldm`` command line: one entry point, one module per command (its options and what it runs).

Every user-facing failure is an :class:`~aldm.errors.AldmError`, printed as one line
(``aldm: error: <file>: <what is wrong>``) with exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import AldmError
from . import data, demo, edit, evaluate, experiment, export, generate, serve, train

#: the command modules, in the order ``aldm --help`` lists them; each has ``register(commands)``
COMMANDS = (data, train, generate, edit, evaluate, export, experiment, serve, demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``aldm`` command line: the global options, then every command module's sub-commands."""
    from ..allocator import current_allocator

    parser = argparse.ArgumentParser(
        prog="aldm",
        description="Few-shot cross-domain 3D glioma MRI synthesis (Anatomically-conditioned Latent Diffusion).",
    )
    parser.add_argument("--version", action="version",
                        version=f"aldm {__version__} (allocator: {current_allocator()})")
    parser.add_argument("--deterministic", action="store_true",
                        help="bitwise-reproducible GPU kernels (slower; also ALDM_DETERMINISTIC=1); "
                             "see docs/reliability.md")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for module in COMMANDS:
        module.register(commands)
    return parser


def main(argv=None) -> int:
    """Run ``aldm`` with ``argv`` (None: sys.argv); returns the exit status. AldmError and bad input
    print one line, never a traceback."""
    from ..interrupt import STOPPED_EXIT, Stopped
    from ..io.atomic import WRITE_ERRORS, write_failure
    from ..reproducibility import determinism_requested, force_determinism

    args = build_parser().parse_args(argv)
    if determinism_requested(args.deterministic):
        force_determinism()
    try:
        return args.func(args)
    except Stopped as exc:
        print(f"aldm: {exc}", file=sys.stderr)
        return STOPPED_EXIT
    except AldmError as exc:
        print(f"aldm: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        print(f"aldm: error: {write_failure(exc.filename or '(a file)', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aldm: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``aldm`` console script: re-run once with a faster allocator (aldm.allocator), then main()."""
    from ..allocator import relaunch_with_fast_allocator

    relaunch_with_fast_allocator(["-m", "aldm.cli", *sys.argv[1:]])
    sys.exit(main())
