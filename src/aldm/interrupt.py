"""Graceful stops: SIGTERM (batch schedulers' pre-emption) and SIGINT (Ctrl-C) during long jobs.

Inside :class:`graceful_stop`, the first SIGTERM or SIGINT only sets a flag: training finishes the
current step, writes a checkpoint and raises :class:`Stopped`; generation finishes the current
batch of samples (each written atomically) and raises it. The CLI prints its one line and exits with
:data:`STOPPED_EXIT` (75, EX_TEMPFAIL: "try again"), distinct from errors (2) and from being
killed. A second SIGINT interrupts at once (KeyboardInterrupt), for an impatient user.
"""

from __future__ import annotations

import signal
import threading

from .errors import AldmError

STOPPED_EXIT = 75


class Stopped(AldmError):
    """The job stopped on a signal after saving its work; the same command (with --resume for
    training) continues it."""


class graceful_stop:  # noqa: N801 - used as a context manager, reads as a phrase
    """Catch SIGTERM / SIGINT for the ``with`` block (main thread only; elsewhere it never fires).
    ``requested`` is the signal's name once one arrived, else None."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> graceful_stop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
