"""Atomic file writes (temp file in the same folder + rename), write failures, free space, checksums.

A reader never sees a half-written file: either the old content or the new one. A write that fails
for a reason the user must fix (full disk, quota, read-only or forbidden folder, file size limit)
removes its temporary file and raises :class:`WriteFailed`: one line naming the file, the reason and
the free space, so the same command can resume once it is fixed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from ..errors import AldmError

WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EFBIG: "file larger than this process may write (file size limit)"}


class WriteFailed(AldmError):
    """A file could not be written for a reason outside aldm (space, quota, permissions)."""


def free_bytes(path: str) -> int | None:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent); None if unknown."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def human_bytes(n: float) -> str:
    """A byte count in decimal units with one decimal ("3.5 TB", "1.0 kB", "512 bytes")."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def _size(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"


def write_failure(path: str, exc: OSError) -> WriteFailed:
    """The one-line error for a failed write of ``path`` (``exc.errno`` in :data:`WRITE_ERRORS`)."""
    return WriteFailed(f"{path}: cannot write: {WRITE_ERRORS.get(exc.errno, exc.strerror)} "
                       f"({_size(free_bytes(path))} free there); finished files are intact: free space or fix "
                       "the folder and re-run the same command to resume")


def require_free_space(folder: str, needed: int, what: str) -> None:
    """Refuse early, before writing ``what`` (about ``needed`` bytes) into ``folder``, when the file system
    has clearly not enough room (needed + 10 % + 16 MB)."""
    free = free_bytes(folder)
    if free is not None and free < needed * 1.1 + 2**24:
        raise WriteFailed(f"{folder}: {what} needs about {_size(needed)} but only {_size(free)} is free there; "
                          "free space and re-run the same command to resume")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temp name keeps the final suffix (``.nii.gz``, ``.npz``) so writers that choose their format
    from the extension behave; on failure the temp file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    base = os.path.basename(path)
    suffix = base[base.index(".") :] if "." in base else ""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
        os.close(fd)
    except OSError as exc:
        if exc.errno in WRITE_ERRORS:
            raise write_failure(path, exc) from exc
        raise
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
            raise write_failure(path, exc) from exc
        raise


def remove_stale_temps(folder: str) -> list[str]:
    """Remove the ``.tmp-*`` files and folders an interrupted writer left in ``folder`` (call it only
    when no other writer is active there, e.g. when a run resumes). Returns what was removed."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if name.startswith(".tmp-"):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            removed.append(path)
    return removed


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
