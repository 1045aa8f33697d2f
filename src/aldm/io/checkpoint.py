"""Torch files on disk: loading safely (``weights_only``) and saving atomically with a clear write failure.

Byte-level only: what a run keeps in its checkpoint files is :mod:`aldm.artifacts.run`'s business.
"""

from __future__ import annotations

import io

import torch

from ..errors import AldmError
from .atomic import atomic_path


def load_checkpoint(path: str) -> dict:
    """Load a torch file safely (``weights_only``: never unpickles arbitrary objects); a damaged or
    foreign file is an AldmError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupted or foreign file
        raise AldmError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from exc


class _WriteRecorder(io.RawIOBase):
    """A writable file wrapper that remembers the first OSError of a write: ``torch.save`` reports a
    full disk as a RuntimeError ("unexpected pos"); the OSError behind it is what the user needs."""

    def __init__(self, fh):
        super().__init__()
        self.fh, self.error = fh, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise


def save_checkpoint(path: str, state: dict) -> None:
    """``torch.save`` through a temporary file and a rename: a reader never sees half a file; a write that
    fails for lack of space or rights raises :class:`aldm.io.atomic.WriteFailed` naming ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        recorder = _WriteRecorder(fh)
        try:
            torch.save(state, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise
