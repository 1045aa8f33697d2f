"""Parallel map over worker processes that is safe beside PyTorch.

Forking a process after PyTorch has started its OpenMP thread pool can deadlock the child, so
workers are spawned fresh and limited to one thread each (no oversubscription of the cores).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def parallel_map(fn: Callable, jobs: Iterable, workers: int) -> Iterator:
    """``map(fn, jobs)`` in order, over ``workers`` spawned processes (in-process when workers <= 1)."""
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                             initializer=_init_worker) as pool:
        yield from pool.map(fn, jobs)
