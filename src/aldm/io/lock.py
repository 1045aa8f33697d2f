"""One writer per folder: an exclusive OS lock on ``<folder>/.aldm-writer.lock``.

``fcntl.flock`` locks belong to the open file, so the operating system releases them when the
process ends, however it ends: a crashed or killed writer never leaves a stale lock (the lock file
itself stays; it holds the last holder's PID for the message). A second writer gets one line naming
the folder and the PID holding it and touches nothing. Readers (generate from a finished run,
serve, evaluate) never take the lock. Within one process the lock is re-entrant (nested stages that
write the same folder). Under torchrun only rank 0 locks: it is the only rank that writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
from collections.abc import Callable, Iterator

from ..errors import AldmError

LOCK_FILE = ".aldm-writer.lock"
_held: dict[str, list] = {}  # real path -> [fd, depth] of the locks this process holds


class FolderBusy(AldmError):
    """Another process is writing the folder."""


def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def exclusive_writer(folder: str, what: str = "folder", enabled: bool = True) -> Iterator[None]:
    """Hold ``folder``'s writer lock for the ``with`` block (creating the folder); ``what`` names the
    folder in the error ("run", "sample folder", "cache"); ``enabled=False`` (non-zero ranks) does
    nothing."""
    if not enabled:
        yield
        return
    created = not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusy(f"{folder}: this {what} is being written by another aldm process (PID {_holder(path)}); "
                         "wait for it to finish or stop it, then re-run") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[key] = [fd, 1]
        yield
    finally:
        _held.pop(key, None)
        if created and os.listdir(folder) == [LOCK_FILE]:  # a writer that failed before writing anything
            with contextlib.suppress(OSError):
                os.remove(path)
                os.rmdir(folder)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def writes_folder(argument: str, what: str) -> Callable:
    """Decorator: the function holds the writer lock of the folder passed as ``argument`` while it runs
    (rank 0 only: a ``dist_info`` argument whose ``is_main`` is false skips the lock; none means one process).
    ``argument`` may name a request instead (an object with ``runtime.dist_info`` and ``run_dir`` or ``out_dir``:
    :class:`aldm.train.requests.StageRequest`, :class:`aldm.generate.GenerationRequest`): its folder and process
    group are taken."""
    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            folder, dist_info = bound.arguments[argument], bound.arguments.get("dist_info")
            if hasattr(folder, "runtime"):  # a request: its folder and its process group
                folder, dist_info = getattr(folder, "run_dir", None) or folder.out_dir, folder.runtime.dist_info
            with exclusive_writer(folder, what, enabled=dist_info is None or dist_info.is_main):
                return fn(*args, **kwargs)
        return wrapper
    return decorate
