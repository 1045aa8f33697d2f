"""Downstream segmentation protocols: does a tumour segmenter trained on few real target patients get
better when synthetic volumes are added?

Every protocol trains the same 3D tumour segmenter (:mod:`aldm.evaluators.segmenter`: MONAI SegResNet,
Dice + per-channel BCE loss, sliding-window inference) and tests it on real target patients that no generator and no
segmenter of that protocol has seen (the experiment's patient-grouped CV folds over the held-out test
and pool patients; the K few-shot patients are never in a fold):

=====================  ==========================================================================
``k-real``             the K few-shot patients (what a user has today)
``k-real+synthetic``   the K patients + N synthetic volumes of one generator (the augmentation curve); the
                       generator ``aldm-edit`` gives edited scans: the K patients' own scans with each
                       other's tumours transplanted (:mod:`aldm.editing.cohort`)
``synthetic-only``     N synthetic volumes alone (TSTR: how much of the real signal the generator carries)
``all-real``           every real target patient outside the fold's test patients (the ceiling)
=====================  ==========================================================================

Synthetic volumes come only from the K few-shot patients' masks (the paper's Appendix A scheme:
their own masks, then each moved into another few-shot patient's brain), never from a tested
patient's mask; :func:`check_no_leak` enforces it for every training set. Only the ceiling depends on
the fold: the other protocols train once per seed and are scored on every fold's test patients.
In the paper's ``mask`` condition the generators follow the whole tumour only, so every protocol segments
the whole tumour; in a ``regions`` condition every synthetic volume carries the label map it was
drawn from and every protocol trains and scores the three BraTS regions (WT, TC, ET:
:mod:`aldm.experiments.segmentation`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..errors import AldmError

PROTOCOLS = ("k-real", "k-real+synthetic", "synthetic-only", "all-real")


@dataclass
class SegmentationSettings:
    """The ``"segmentation"`` section of an experiment config.

    ``multipliers``: N = m * K synthetic volumes per generator in the augmentation sweep (TSTR uses the
    largest); ``generators``: "aldm" and baseline names (default: ALDM and every baseline of the
    experiment); ``guidance``: ALDM's scale s (default: the experiment's largest); ``seeds``: segmenter
    seeds per protocol; ``folds``: CV folds of the first repeat to score on (0: all); ``steps``,
    ``width``, ``crop``, ``batch_size``: the segmenter's training (:class:`SegmenterConfig`)."""

    multipliers: list = field(default_factory=lambda: [1, 4])
    generators: list | None = None
    guidance: float | None = None
    seeds: int = 2
    folds: int = 0
    steps: int = 300
    width: int = 8
    crop: int = 32
    batch_size: int = 4

    @classmethod
    def from_dict(cls, data: dict, source: str) -> SegmentationSettings:
        """Settings from a config section; an AldmError naming ``source`` and the bad key or value."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data or {}) - known)
        if unknown:
            raise AldmError(f"{source}: unknown segmentation setting(s) {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(known))})")
        settings = cls(**(data or {}))
        if not settings.multipliers or any(not isinstance(m, int) or m < 1 for m in settings.multipliers):
            raise AldmError(f"{source}: segmentation multipliers must be positive integers, got "
                            f"{settings.multipliers}")
        if settings.seeds < 1 or settings.steps < 1 or settings.folds < 0:
            raise AldmError(f"{source}: segmentation seeds and steps must be >= 1 and folds >= 0")
        if settings.crop % 8:
            raise AldmError(f"{source}: segmentation crop must be a multiple of 8, got {settings.crop}")
        return settings

    def as_dict(self) -> dict:
        """The settings as written back into the experiment's config."""
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """One segmenter to train: protocol, generator (None for real-only), N synthetic volumes, seed, and
    the fold (only the ceiling's training set depends on it; None otherwise)."""

    protocol: str
    generator: str | None
    n: int
    seed: int
    fold: int | None = None

    @property
    def key(self) -> str:
        """A file-name-safe identifier, e.g. ``k-real+synthetic_aldm_n32_seed0``."""
        parts = [self.protocol] + ([self.generator] if self.generator else []) + ([f"n{self.n}"] if self.n else [])
        parts.append(f"seed{self.seed}")
        if self.fold is not None:
            parts.append(f"fold{self.fold}")
        return "_".join(parts)


def plan_jobs(settings: SegmentationSettings, generators: list[str], k: int, n_folds: int, seed: int) -> list[Job]:
    """Every segmenter of the experiment, real-only protocols first (they anchor the table)."""
    n_values = sorted({m * k for m in settings.multipliers})
    jobs = []
    for s in range(seed, seed + settings.seeds):
        jobs.append(Job("k-real", None, 0, s))
        jobs += [Job("all-real", None, 0, s, fold) for fold in range(n_folds)]
        for g in generators:
            jobs += [Job("k-real+synthetic", g, n, s) for n in n_values]
            jobs.append(Job("synthetic-only", g, max(n_values), s))
    return jobs


def sample_sources(row: dict) -> set[str]:
    """The real subjects a synthetic sample was made from: its mask's subject(s) and the subject whose
    brain it was placed in (``mask_source`` ``cache:A`` or ``relocated:A->B``; ``context_subject``), or for an
    edited scan (``edit:...``) the donor of its tumour (``mask_subject``) and the scan (``context_subject``)."""
    source = row.get("mask_source") or ""
    kind, _, names = source.partition(":")
    if kind == "edit" and row.get("mask_subject") and row.get("context_subject"):
        return {row["mask_subject"], row["context_subject"]}  # a tumour transplanted into a real scan
    if kind not in ("cache", "relocated") or not names:
        raise AldmError(f"{row.get('sample', '?')}: cannot tell which subjects its mask came from "
                        f"(mask_source {source!r}); generate from cache or appendix masks")
    subjects = set(names.split("->"))
    if row.get("context_subject"):
        subjects.add(row["context_subject"])
    return subjects


def training_items(job: Job, real: dict, shots: list[str], synthetic: dict, folds: list[dict]) -> list[dict]:
    """The training volumes of ``job``: dicts with "image" (C, S, S, S), "mask" (1, S, S, S), "labels" (the BraTS
    label map (1, S, S, S), None for a sample without one), "name", "synthetic" and "sources" (the real subjects
    it carries information from). ``real``: subject -> item; ``synthetic``: generator -> samples in generation
    order (the first N are used)."""
    if job.protocol == "k-real":
        subjects = list(shots)
    elif job.protocol == "all-real":
        subjects = list(shots) + list(folds[job.fold]["train"])
    else:
        subjects = list(shots) if job.protocol == "k-real+synthetic" else []
    items = [{"name": s, "image": real[s]["image"], "mask": real[s]["mask"], "labels": real[s].get("labels"),
              "sources": {s}, "synthetic": False} for s in subjects]
    if job.generator is not None:
        samples = synthetic[job.generator]
        if len(samples) < job.n:
            raise AldmError(f"{job.generator}: {len(samples)} synthetic volumes, the protocol needs {job.n}")
        items += [{"name": row["sample"], "image": row["image"], "mask": row["mask"], "labels": row.get("labels"),
                   "sources": sample_sources(row), "synthetic": True} for row in samples[:job.n]]
    return items


def check_no_leak(train: list[dict], tested: set[str], allowed_synthetic_sources: set[str]) -> None:
    """Raise when a tested patient (or a sample made from one) is in a training set, or when a synthetic
    volume was made from a subject outside ``allowed_synthetic_sources`` (the few-shot patients)."""
    for item in train:
        leaked = item["sources"] & tested
        if leaked:
            raise AldmError(f"segmentation leak: training volume {item['name']} carries tested patient(s) "
                            f"{', '.join(sorted(leaked))}")
        if item["synthetic"] and not item["sources"] <= allowed_synthetic_sources:
            raise AldmError(f"segmentation leak: synthetic volume {item['name']} was made from "
                            f"{', '.join(sorted(item['sources'] - allowed_synthetic_sources))}, not a few-shot patient")


def scored_subjects(job: Job, folds: list[dict]) -> list[str]:
    """The real patients ``job``'s segmenter is scored on: its fold's test patients (the ceiling) or every
    fold's (the fold-independent protocols)."""
    if job.fold is not None:
        return list(folds[job.fold]["test"])
    return [s for f in folds for s in f["test"]]


def score_volumes(pred: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-volume Dice and HD95 (voxels; NaN where the prediction or the mask is empty) of binary
    predictions against masks, both (N, 1, S, S, S)."""
    from .segmenter import dice, hd95

    d = dice(pred, masks)
    h = hd95(pred, masks)
    empty = (np.asarray(pred).reshape(len(pred), -1).sum(1) == 0) | (np.asarray(masks).reshape(len(masks), -1)
                                                                      .sum(1) == 0)
    h = np.where(np.isfinite(h) & ~empty, h, np.nan)
    return d, h


def summarise(results: list[dict], folds: list[dict]) -> list[dict]:
    """Table rows, one per (protocol, generator, N): mean and std of Dice and HD95 over (seed, fold)
    pairs, each the mean over that fold's test patients (the whole tumour's; with a BraTS segmenter also
    per region, ``regions``: {WT, TC, ET: {dice_mean, dice_std, hd95_mean}}); ``misses``: test volumes with an
    empty prediction, summed over seeds and folds."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r["protocol"], r["generator"], r["n"]), []).append(r)
    rows = []
    for (protocol, generator, n), rs in groups.items():
        dices, hds, misses, regions = [], [], 0, {}
        for r in rs:
            for i, fold in enumerate(folds):
                if r["fold"] is not None and r["fold"] != i:
                    continue
                per = [r["per_patient"][s] for s in fold["test"]]
                dices.append(float(np.mean([p["dice"] for p in per])))
                finite = [p["hd95"] for p in per if p["hd95"] is not None]
                hds.append(float(np.mean(finite)) if finite else float("nan"))
                misses += sum(p["empty"] for p in per)
                for name in per[0].get("regions", {}):
                    scores = [p["regions"][name] for p in per]
                    region_hd = [x["hd95"] for x in scores if x["hd95"] is not None]
                    regions.setdefault(name, ([], []))[0].append(float(np.mean([x["dice"] for x in scores])))
                    regions[name][1].append(float(np.mean(region_hd)) if region_hd else float("nan"))
        rows.append({"protocol": protocol, "generator": generator, "n": n, "dice_mean": float(np.mean(dices)),
                     "dice_std": float(np.std(dices)), "hd95_mean": float(np.nanmean(hds)) if np.isfinite(hds).any()
                     else None, "hd95_std": float(np.nanstd(hds)) if np.isfinite(hds).any() else None,
                     "misses": int(misses), "runs": len(rs), "scores": len(dices),
                     "regions": {name: {"dice_mean": float(np.mean(d)), "dice_std": float(np.std(d)),
                                        "hd95_mean": float(np.nanmean(h)) if np.isfinite(h).any() else None}
                                 for name, (d, h) in regions.items()}})
    order = {p: i for i, p in enumerate(PROTOCOLS)}
    return sorted(rows, key=lambda r: (order[r["protocol"]], r["generator"] or "", r["n"]))


def _patient_dice(result: dict, patients: list[str]) -> dict:
    """{region: mean Dice over ``patients``} of one segmenter's scores (WT alone for a whole-tumour segmenter)."""
    per = [result["per_patient"][s] for s in patients]
    dice = {"WT": float(np.mean([p["dice"] for p in per]))}
    for name in per[0].get("regions", {}):
        dice[name] = float(np.mean([p["regions"][name]["dice"] for p in per]))
    return dice


def paired_differences(results: list[dict], folds: list[dict]) -> list[dict]:
    """The augmented protocols against K real, paired by seed: for every (generator, N) of ``k-real+synthetic``
    and every seed that K real also ran, Dice(K real + N) − Dice(K real) per region on the same test patients
    (every fold's), which removes what the seed and the test patients do to both. One row per (generator, N):
    per region the mean, the standard deviation over seeds (ddof 1; 0 with one seed), the seeds and how many of
    them the augmented segmenter was higher."""
    patients = [s for f in folds for s in f["test"]]
    base = {r["seed"]: _patient_dice(r, patients) for r in results if r["protocol"] == "k-real"}
    groups: dict = {}
    for r in results:
        if r["protocol"] == "k-real+synthetic" and r["seed"] in base:
            groups.setdefault((r["generator"], r["n"]), []).append(r)
    rows = []
    for (generator, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        diffs: dict = {}
        for r in rs:
            for name, value in _patient_dice(r, patients).items():
                diffs.setdefault(name, []).append(value - base[r["seed"]][name])
        rows.append({"generator": generator, "n": n, "seeds": len(rs),
                     "regions": {name: {"mean": float(np.mean(d)), "std": float(np.std(d, ddof=1)) if len(d) > 1
                                        else 0.0, "higher": int(sum(x > 0 for x in d))}
                                 for name, d in diffs.items()}})
    return rows


PAIRED_CAPTION = ("Paired by seed against K real (the same seed and test patients): Dice(K real + N) − Dice(K real), "
                  "mean ± std over seeds (seeds higher / seeds)")


def paired_rows(paired: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the paired differences as text cells — rows of :func:`paired_differences` with the
    generator's display ``label`` — for the markdown table and the report alike."""
    if not paired:
        return [], []
    names = list(paired[0]["regions"])
    header = ["Generator", "N synthetic"] + [f"Δ Dice {name}" for name in names]
    rows = [[row["label"], str(row["n"])] + [f"{row['regions'][n]['mean']:+.3f} ± {row['regions'][n]['std']:.3f} "
                                              f"({row['regions'][n]['higher']}/{row['seeds']})" for n in names]
            for row in paired]
    return header, rows
