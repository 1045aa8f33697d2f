"""Typed requests of the training stages: what one stage trains, where it writes, and how it runs — built
and checked once by the caller (the command line, an experiment), then passed down whole."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..artifacts.cache import PreparedCache
from ..config import Profile
from ..distributed import DistInfo
from ..errors import AldmError


@dataclass
class ProbeSubjects:
    """Held-out subjects for a training probe (:mod:`aldm.train.probes`): ``subjects`` of ``cache``."""

    cache: str
    subjects: list

    def rows(self) -> list[dict]:
        """Their manifest rows (an AldmError naming a subject that is not in the cache)."""
        by_name = PreparedCache(self.cache).require().by_subject()
        missing = [s for s in self.subjects if s not in by_name]
        if missing:
            raise AldmError(f"{self.cache}: probe subject(s) {', '.join(missing)} not in the cache")
        return [by_name[s] for s in self.subjects]

    def modalities(self) -> tuple:
        """The channels of the probe's cache."""
        return PreparedCache(self.cache).modalities

    def check_held_out(self, training_rows: list[dict]) -> ProbeSubjects:
        """This probe, if none of its subjects is trained on (else an AldmError naming them)."""
        seen = sorted(set(self.subjects) & {r["subject"] for r in training_rows})
        if seen:
            raise AldmError(f"probe subject(s) {', '.join(seen)} are training subjects; probe held-out ones")
        return self


@dataclass(frozen=True)
class FewShot:
    """What a few-shot stage adapts and on whom: the finished source run ``init_run`` and either a saved
    split (``split_path``) or K shots drawn now (``k``, with ``n_test`` held-out test patients);
    ``from_scratch``: start from random weights, not the source run's (the no-pre-training ablation; the
    source run then gives only its VAE, latent statistics and networks' shapes)."""

    init_run: str
    split_path: str | None = None
    k: int | None = None
    n_test: int | None = None
    from_scratch: bool = False


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
    probe: ProbeSubjects | None = None

    def __post_init__(self):
        """Refuse a stage length below 1 (an AldmError naming the option)."""
        if self.steps is not None and self.steps < 1:
            raise AldmError(f"--steps must be at least 1, got {self.steps}")
