"""Typed requests of the training stages: what one stage trains, where it writes, and how it runs — built
and checked once by the caller (the command line, an experiment), then passed down whole."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Profile
from ..distributed import DistInfo
from ..errors import AldmError


@dataclass(frozen=True)
class FewShot:
    """What a few-shot stage adapts and on whom: the finished source run ``init_run`` and either a saved
    split (``split_path``) or K shots drawn now (``k``, with ``n_test`` held-out test patients)."""

    init_run: str
    split_path: str | None = None
    k: int | None = None
    n_test: int | None = None


@dataclass(frozen=True)
class Runtime:
    """How a stage runs rather than what it trains: ``resume`` the run in its folder exactly, the process
    group (``dist_info``; None: one process) and whether a progress bar is shown."""

    resume: bool = False
    dist_info: DistInfo | None = None
    progress: bool = True

    @property
    def dist(self) -> DistInfo:
        """``dist_info``, or a single process's."""
        return self.dist_info or DistInfo()


@dataclass(frozen=True)
class StageRequest:
    """One training stage of a generator: the prepared ``cache`` it trains on, the ``run_dir`` it writes,
    the ``profile`` it starts from (None: its parent run's, or the family's default), the source run it adapts
    (``fewshot``; None: source training), the command line's overrides of the stage's length, seed and
    precision, the ``condition`` (source training; None: the profile's) and its :class:`Runtime`."""

    cache: str
    run_dir: str
    profile: Profile | None = None
    fewshot: FewShot | None = None
    steps: int | None = None
    seed: int | None = None
    precision: str | None = None
    condition: str | None = None
    runtime: Runtime = field(default_factory=Runtime)

    def __post_init__(self):
        """Refuse a stage length below 1 (an AldmError naming the option)."""
        if self.steps is not None and self.steps < 1:
            raise AldmError(f"--steps must be at least 1, got {self.steps}")
