"""Run folders: the one place that knows what a training run writes and how to read it back.

A run folder holds

* ``run.json`` — what the run is: ``stage`` (``vae``, ``ldm``, ``fewshot``, ``baseline`` or ``distill``),
  profile name, seed, world size, the data cache and its manifest checksum, code version, creation time,
  parent runs (``vae_run``, ``init_run``, a distilled student's ``teacher_run`` and its weights' checksum
  ``teacher_hash``), for baselines ``model`` and ``fewshot``, for few-shot runs ``k``, for a student ``distill``
  (its steps, the guidance range it learnt, its phases);
* ``config.json`` — the resolved :class:`aldm.config.Profile`: name, size, condition and the parts of the run's
  model family (:attr:`aldm.models.families.Family.parts`; runs written by earlier code hold every part);
* ``checkpoint.pt`` (+ ``checkpoint-prev.pt``) — the trainer's resumable state;
* ``metrics.csv`` — the training log; ``probe.csv`` — held-out figures every ``probe_every`` steps;
* ``split.json`` — few-shot runs: the patient-level split (K shots, held-out test subjects);
* ``weights.pt`` — written when training has finished (EMA weights); its presence is what
  "finished" means;
* ``vae.pt`` — LDM runs: the frozen VAE they were trained with, so a finished LDM run is all that
  generation needs.

``run.json`` also records ``modalities``, the channels of the cache the run was trained on (runs of
0.2 have none: T1, T2, FLAIR). A trained segmenter is a run too (:mod:`aldm.artifacts.segmenter`).

Training creates and resumes runs through :meth:`Run.create`; inference (pipeline, generate,
evaluate, experiment, serve) reads them through :class:`Run` and imports no training module.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import subprocess
import time

from .. import __version__
from ..config import PROFILE_COMMON, Profile
from ..distributed import DistInfo, barrier
from ..errors import AldmError
from ..io.atomic import atomic_write_text
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..modalities import parse_modalities
from .cache import PreparedCache
from .folder import ArtifactFolder
from .split import load_split

RUN_INFO = "run.json"
CONFIG = "config.json"
WEIGHTS = "weights.pt"
VAE_WEIGHTS = "vae.pt"
SPLIT = "split.json"
METRICS = "metrics.csv"
PROBE = "probe.csv"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint-prev.pt"
SELECTED = "selected.pt"  # the EMA weights of the best probed step (TrainConfig.select_by_probe)

STAGES = ("vae", "ldm", "fewshot", "baseline", "segmenter", "distill")
GENERATING_STAGES = ("ldm", "fewshot", "baseline", "distill")


def code_version() -> str:
    """``aldm <version>`` and, in a git checkout, the short commit."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"aldm {__version__}" + (f" ({sha})" if sha else "")


class Run(ArtifactFolder):
    """One run folder (see the module docstring). Reading is lazy: ``Run(path)`` touches no file."""


    # ------------------------------------------------------------------------------------ what it is
    @functools.cached_property
    def info(self) -> dict:
        """``run.json`` (an AldmError when the folder is not a run or the file is damaged)."""
        path = self.file(RUN_INFO)
        try:
            with open(path, encoding="utf-8") as fh:
                info = json.load(fh)
        except FileNotFoundError:
            raise AldmError(f"{self.path}: not an aldm run (no {RUN_INFO})") from None
        except json.JSONDecodeError as exc:
            raise AldmError(f"{path}: damaged run description ({exc.msg})") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise AldmError(f"{path}: unreadable run description ({type(exc).__name__})") from exc
        if not isinstance(info, dict) or info.get("stage") not in STAGES:
            raise AldmError(f"{path}: damaged run description (not an object with a stage of {', '.join(STAGES)})")
        return info

    @property
    def exists(self) -> bool:
        """Whether the folder holds a run (finished or not)."""
        return os.path.exists(self.file(RUN_INFO))

    @property
    def stage(self) -> str:
        """``vae``, ``ldm``, ``fewshot`` or ``baseline``."""
        return self.info.get("stage")

    @property
    def kind(self) -> str:
        """The model family: ``vae``, ``aldm`` (LDM, few-shot and distilled runs) or a baseline (``cgan``, ``cgan3m``,
        ``vaegan``)."""
        if self.stage == "baseline":
            return self.info.get("model", "baseline")
        return "vae" if self.stage == "vae" else "aldm"

    @property
    def fewshot(self) -> bool:
        """Whether the run adapted a source model to K target subjects (stage 4, or a few-shot baseline)."""
        return self.stage == "fewshot" or bool(self.info.get("fewshot"))

    @property
    def k(self) -> int | None:
        """K of a few-shot run, else None."""
        return self.info.get("k") if self.fewshot else None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The channels the run's volumes hold (those of its training cache; runs of 0.2: T1, T2, FLAIR)."""
        return parse_modalities(self.info.get("modalities"), self.file(RUN_INFO))

    @property
    def data(self) -> str:
        """The prepared cache the run was trained on (absolute path; '' when unknown)."""
        return self.info.get("data") or ""

    @functools.cached_property
    def profile(self) -> Profile:
        """The run's resolved profile (``config.json``; the fields it does not hold, those of other model
        families, at their defaults)."""
        self.info  # noqa: B018 - a clear "not an aldm run" before a missing config.json
        return Profile.load(self.file(CONFIG))

    def profile_parts(self) -> tuple:
        """The profile fields the run's ``config.json`` holds beside name, size and condition (every field for
        runs written before a run held its family's parts only)."""
        self.profile  # noqa: B018 - a missing or damaged config.json is reported in one line first
        with open(self.file(CONFIG), encoding="utf-8") as fh:
            return tuple(k for k in json.load(fh) if k not in PROFILE_COMMON)

    def save_profile(self, profile: Profile) -> None:
        """Rewrite ``config.json`` with ``profile``, holding the same parts as before."""
        profile.save(self.file(CONFIG), self.profile_parts())
        self.__dict__.pop("profile", None)

    @property
    def finished(self) -> bool:
        """Whether training finished (``weights.pt`` exists)."""
        return os.path.exists(self.file(WEIGHTS))

    def require_finished(self) -> Run:
        """This run if training finished, else an AldmError saying how to finish it."""
        if not self.finished:
            raise AldmError(f"{self.path}: training has not finished (no {WEIGHTS}); resume it with --resume")
        return self

    @property
    def can_generate(self) -> bool:
        """Whether the run is one that generates (LDM, few-shot or baseline)."""
        return self.stage in GENERATING_STAGES

    def require_generator(self) -> Run:
        """This run if it is one that generates (LDM, few-shot, distilled or baseline), else an AldmError."""
        if not self.can_generate:
            raise AldmError(f"{self.path}: a {self.stage} run cannot generate; give an LDM, few-shot, distilled or "
                            "baseline run")
        return self

    def record(self, key: str, value) -> None:
        """Add ``key`` to ``run.json`` (atomically; rank 0's business under torchrun)."""
        info = {**self.info, key: value}
        atomic_write_text(self.file(RUN_INFO), json.dumps(info, indent=2) + "\n")
        self.__dict__["info"] = info

    # ------------------------------------------------------------------------------------ what it cost
    @property
    def train_seconds(self) -> float | None:
        """Seconds of optimisation steps the run took, resumes included (``train_s`` of metrics.csv's last
        row); None without a log or for runs logged before that column existed."""
        try:
            with open(self.file(METRICS), newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            return float(rows[-1]["train_s"])
        except (OSError, IndexError, KeyError, TypeError, ValueError, csv.Error):
            return None

    def lineage(self) -> list[Run]:
        """This run and the runs it was trained from, nearest first (few-shot -> source LDM -> VAE;
        few-shot from scratch -> VAE; few-shot baseline -> source baseline); a parent that is no longer where
        run.json says ends it."""
        chain, seen, run = [], set(), self
        while run is not None and run.exists and os.path.abspath(run.path) not in seen:
            chain.append(run)
            seen.add(os.path.abspath(run.path))
            # a few-shot run trained from scratch (the no-pre-training ablation) took only the VAE of its init run
            keys = ("vae_run",) if run.info.get("from_scratch") else ("teacher_run", "init_run", "vae_run")
            parents = [run.info.get(key) for key in keys]
            run = next((Run(p) for p in parents if p and os.path.abspath(p) not in seen), None)
        return chain

    def total_train_seconds(self) -> float | None:
        """Training seconds of the run and every run it was trained from (what a model in hand cost); None when
        one of them is unknown."""
        seconds = [r.train_seconds for r in self.lineage()]
        return None if not seconds or None in seconds else sum(seconds)

    # ------------------------------------------------------------------------------------ its files
    def weights(self) -> dict:
        """The finished run's weights (an AldmError saying how to finish it when there are none)."""
        return load_checkpoint(self.require_finished().file(WEIGHTS))

    def save_weights(self, weights: dict) -> None:
        """Write ``weights.pt`` (atomically): the run is finished from then on."""
        save_checkpoint(self.file(WEIGHTS), weights)

    def weights_hash(self) -> str:
        """The first 16 hex digits of ``weights.pt``'s SHA-256: which weights made a sample."""
        digest = hashlib.sha256()
        with open(self.file(WEIGHTS), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()[:16]

    @property
    def split_path(self) -> str:
        """Where the run's few-shot split is (or would be) saved."""
        return self.file(SPLIT)

    def split(self) -> dict | None:
        """The few-shot split saved with the run, or None (an AldmError naming the file when it is damaged)."""
        if not os.path.exists(self.split_path):
            return None
        split = load_split(self.split_path)
        if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("k_shot", "test")):
            raise AldmError(f"{self.split_path}: damaged split (no lists of k_shot and test subjects)")
        return split

    def vae_state(self) -> dict:
        """The state dict of the run's VAE: a stage-1 run's EMA weights, or an LDM run's copy in ``vae.pt``
        (:func:`aldm.models.vae.frozen_vae` builds the network)."""
        own = self.file(VAE_WEIGHTS)
        state = load_checkpoint(own) if os.path.exists(own) else self.weights()
        if not isinstance(state, dict) or "vae" not in state:
            raise AldmError(f"{own if os.path.exists(own) else self.file(WEIGHTS)}: holds no VAE weights")
        return state["vae"]

    def save_vae(self, state: dict) -> None:
        """Write ``vae.pt``: the frozen VAE an LDM run was trained with."""
        save_checkpoint(self.file(VAE_WEIGHTS), {"vae": state})

    # ------------------------------------------------------------------------------------ creating one
    @staticmethod
    def describe(stage: str, profile: Profile | None, cache: str, seed: int, world_size: int = 1, **extra) -> dict:
        """The ``run.json`` of a new run of ``stage`` on ``cache`` (plus ``extra`` fields); it records the
        cache's modalities."""
        data = PreparedCache(cache).require()
        return {
            "stage": stage, "profile": profile.name if profile is not None else None, "seed": seed,
            "world_size": world_size, "data": os.path.abspath(cache), "modalities": list(data.modalities),
            "data_manifest_sha256": data.manifest_sha256(), "code_version": code_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra,
        }

    @classmethod
    def create(cls, path: str, info: dict, profile: Profile | None, resume: bool,
               dist_info: DistInfo | None = None, parts: tuple | None = None) -> Run:
        """Create the run folder, or re-open it with ``resume``; refuse to overwrite a run, to resume a
        run of another stage, or one whose data changed since it started.

        Under ``torchrun`` every rank looks before rank 0 writes (a barrier after the look), so all
        ranks decide alike. ``profile`` None: a run without a profile (a segmenter); ``parts``: the profile
        fields its ``config.json`` holds (its family's :attr:`~aldm.models.families.Family.parts`; None:
        every field)."""
        dist_info = dist_info or DistInfo()
        run = cls(path)
        exists = run.exists
        barrier(dist_info)
        if exists and not resume:
            raise AldmError(f"{path}: already holds a run; pass --resume to continue it or choose another --out")
        if exists:
            if run.stage != info["stage"]:
                raise AldmError(f"{path}: holds a {run.stage} run, not {info['stage']}")
            if run.info.get("data_manifest_sha256") not in (None, info.get("data_manifest_sha256")):
                raise AldmError(f"{path}: its data ({info.get('data')}) changed since the run started "
                                "(manifest checksum differs); resuming would not continue the same run")
            return run
        if dist_info.is_main:
            os.makedirs(path, exist_ok=True)
            if profile is not None:
                profile.save(run.file(CONFIG), parts)
            atomic_write_text(run.file(RUN_INFO), json.dumps(info, indent=2) + "\n")
        barrier(dist_info)
        return cls(path)
