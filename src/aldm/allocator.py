"""A faster memory allocator for the ``aldm`` command on Linux (on by default, ``ALDM_ALLOCATOR``).

3D volumes make PyTorch allocate and free tensors of hundreds of MB every step. glibc serves
each from a fresh ``mmap`` and returns it with ``munmap``, so every step page-faults all of that
memory in again: one paper-profile VAE training step on 2 CPU cores took 3.8 million minor page
faults and 13.6 s of system time (27.2 s wall). With tcmalloc the same step takes 17.7 s with
almost no faults (docs/performance.md). PyTorch's own CPU launcher
(``python -m torch.backends.xeon.run_cpu``) preloads tcmalloc or jemalloc for the same reason.

:func:`relaunch_with_fast_allocator` re-executes the current command once, before any work, with
``LD_PRELOAD`` set to tcmalloc when the system has it (Debian: ``libgoogle-perftools4``), else with
glibc told never to ``mmap`` and never to trim (``MALLOC_MMAP_MAX_=0``,
``MALLOC_TRIM_THRESHOLD_``), which removes most of the faults (21.7 s for the same step).

``ALDM_ALLOCATOR``: ``auto`` (default), ``tcmalloc``, ``glibc-tuned`` or ``system`` (leave the
process alone). ``ALDM_TCMALLOC``: the tcmalloc library to use (a path, for one outside the system's library
folders, e.g. a conda environment's), or ``none`` to run as on a machine without it.

The note that tcmalloc is missing (:func:`missing_tcmalloc_note`) is printed by the training loop beside its
progress bar (:func:`say_missing_tcmalloc_once`), never before a command has checked its input: a command's
error stays one line on every machine.
"""

from __future__ import annotations

import glob
import os
import sys

TCMALLOC_GLOBS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4",
                  "/usr/lib*/libtcmalloc.so.4", "/usr/local/lib/libtcmalloc.so*")
MARK = "_ALDM_ALLOCATOR_SET"


def find_tcmalloc() -> str | None:
    """The tcmalloc library named by ``$ALDM_TCMALLOC`` (None for ``none`` or a path that is not a file), else
    the first one found in the system's library folders (Linux), or None."""
    chosen = os.environ.get("ALDM_TCMALLOC")
    if chosen:
        return chosen if chosen.lower() != "none" and os.path.isfile(chosen) else None
    for pattern in TCMALLOC_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def allocator_env(choice: str | None = None, env: dict | None = None) -> tuple[str, dict]:
    """(name of the allocator chosen, the environment to run with) for ``choice`` (default: $ALDM_ALLOCATOR)."""
    env = dict(os.environ if env is None else env)
    choice = (choice or env.get("ALDM_ALLOCATOR") or "auto").lower()
    if choice not in ("auto", "tcmalloc", "glibc-tuned", "system"):
        raise ValueError(f"ALDM_ALLOCATOR must be auto, tcmalloc, glibc-tuned or system, not {choice!r}")
    if choice == "system" or not sys.platform.startswith("linux"):
        return "system", env
    tcmalloc = find_tcmalloc() if choice in ("auto", "tcmalloc") else None
    if "tcmalloc" in env.get("LD_PRELOAD", ""):
        return "tcmalloc", env
    if tcmalloc:
        env["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, env.get("LD_PRELOAD", "")) if p)
        return "tcmalloc", env
    env.setdefault("MALLOC_MMAP_MAX_", "0")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(64 * 2**30))
    return "glibc-tuned", env


def current_allocator() -> str:
    """What this process runs with (as set by :func:`relaunch_with_fast_allocator`)."""
    if "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return "tcmalloc"
    if os.environ.get("MALLOC_MMAP_MAX_") == "0":
        return "glibc-tuned"
    return "system"


#: measured on a 2-core AMD EPYC (docs/performance.md): a small-profile VAE step took 0.33 s with glibc and 0.23 s with
#: tcmalloc on the same machine (``aldm demo`` took 2129 s there without it, 878 s on a faster one with it)
NO_TCMALLOC_NOTE = ("aldm: note: tcmalloc not found, so training runs about 1.45x slower (measured on 2 CPU cores); "
                    "install it with: sudo apt-get install libgoogle-perftools4 (Debian/Ubuntu; "
                    "ALDM_ALLOCATOR=glibc-tuned hides this note)")


def missing_tcmalloc_note(env: dict | None = None) -> str | None:
    """The one-line note that this Linux machine lacks tcmalloc and what that costs, or None when tcmalloc is
    found, another allocator was chosen by name, or the platform is not Linux."""
    env = os.environ if env is None else env
    if (env.get("ALDM_ALLOCATOR") or "auto").lower() != "auto" or not sys.platform.startswith("linux"):
        return None
    if "tcmalloc" in env.get("LD_PRELOAD", "") or find_tcmalloc():
        return None
    return NO_TCMALLOC_NOTE


_said = False


def say_missing_tcmalloc_once() -> None:
    """Print :func:`missing_tcmalloc_note` to stderr the first time a process calls this (the training loop
    does, when it shows progress); nothing where tcmalloc runs or another allocator was chosen."""
    global _said
    if _said:
        return
    _said = True
    note = missing_tcmalloc_note()
    if note:
        print(note, file=sys.stderr)


def relaunch_with_fast_allocator(argv: list[str] | None = None) -> None:
    """Re-execute this process once with the chosen allocator; returns only when nothing changes
    (already set, ``system``, not Linux) or the re-exec fails."""
    if os.environ.get(MARK):
        return
    try:
        name, env = allocator_env()
    except ValueError as exc:
        print(f"aldm: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if name == "system" or env == dict(os.environ):
        return
    env[MARK] = name
    argv = list(sys.argv if argv is None else argv)
    try:
        os.execve(sys.executable, [sys.executable, *argv], env)
    except OSError:
        return
