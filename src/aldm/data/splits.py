"""Patient-level splits: K-shot selection, held-out test subjects, repeated stratified k-fold.

All splits work on patients (a patient's scans never fall on both sides), are seeded, and are
saved as JSON with the run that uses them (the file: :mod:`aldm.artifacts.split`). Stratification uses
a clinical label (IDH by default); patients without it form their own stratum.
"""

from __future__ import annotations

import numpy as np

from ..errors import AldmError


def _patients(rows: list[dict], stratify: str | None) -> tuple[list, dict, dict]:
    """(patients in first-seen order, patient -> first subject, patient -> stratum)."""
    order, first, stratum = [], {}, {}
    for row in sorted(rows, key=lambda r: r["subject"]):
        patient = row.get("patient") or row["subject"]
        if patient not in first:
            order.append(patient)
            first[patient] = row["subject"]
            stratum[patient] = str(row.get(stratify) or "missing") if stratify else "all"
    return order, first, stratum


def _stratified_pick(patients: list, stratum: dict, n: int, rng: np.random.Generator) -> list:
    """Pick ``n`` patients with stratum proportions as close as possible (largest remainder)."""
    groups: dict = {}
    for p in patients:
        groups.setdefault(stratum[p], []).append(p)
    keys = sorted(groups)
    exact = np.array([n * len(groups[k]) / len(patients) for k in keys])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    picked = []
    for k, c in zip(keys, counts):
        members = list(groups[k])
        rng.shuffle(members)
        picked += members[:c]
    return picked


MAX_TEST_PATIENTS = 64  # default held-out test set: up to 64 patients, the rest left for the shots


def default_n_test(patients: int, k: int) -> int:
    """The default number of held-out test patients: all but the K shots, at most ``MAX_TEST_PATIENTS``."""
    return max(0, min(MAX_TEST_PATIENTS, patients - k))


def few_shot_split(rows: list[dict], k: int, n_test: int | None = None, seed: int = 0,
                   stratify: str | None = "idh") -> dict:
    """Held-out test patients first, then K few-shot patients from the rest; never overlapping.
    ``n_test`` None: :func:`default_n_test`.

    Returns {"k_shot": [subjects], "test": [subjects], "pool": [remaining subjects], "k", "n_test",
    "seed", "stratify"}; one scan (the first by name) per K-shot / test patient.
    """
    if k < 1:
        raise AldmError(f"--k must be at least 1, got {k}")
    patients, first, stratum = _patients(rows, stratify)
    n_test = default_n_test(len(patients), k) if n_test is None else n_test
    if n_test < 0:
        raise AldmError(f"--n-test must be >= 0, got {n_test}")
    if k + n_test > len(patients):
        raise AldmError(f"K={k} few-shot + {n_test} test patients exceed the {len(patients)} patients available")
    rng = np.random.default_rng(seed)
    test = _stratified_pick(patients, stratum, n_test, rng) if n_test else []
    rest = [p for p in patients if p not in set(test)]
    shots = _stratified_pick(rest, stratum, k, rng)
    used = set(test) | set(shots)
    return {
        "k_shot": sorted(first[p] for p in shots),
        "test": sorted(first[p] for p in test),
        "pool": sorted(r["subject"] for r in rows if (r.get("patient") or r["subject"]) not in used),
        "k": k, "n_test": n_test, "seed": seed, "stratify": stratify,
    }


def repeated_kfold(rows: list[dict], n_splits: int = 5, n_repeats: int = 3, seed: int = 0,
                   stratify: str | None = "idh") -> list[dict]:
    """``n_repeats`` x ``n_splits``-fold patient-grouped, label-stratified CV folds.

    Returns [{"repeat", "fold", "train": [subjects], "test": [subjects]}]; every subject is in
    exactly one test fold per repeat, and a patient's scans are never split.
    """
    subjects = [r["subject"] for r in rows]
    groups = [r.get("patient") or r["subject"] for r in rows]
    labels = [str(r.get(stratify) or "missing") if stratify else "all" for r in rows]
    if len(set(groups)) < n_splits:
        raise AldmError(f"{n_splits}-fold CV needs at least {n_splits} patients, got {len(set(groups))}")
    from sklearn.model_selection import StratifiedGroupKFold  # scikit-learn takes ~0.7 s to import: only here

    folds = []
    for repeat in range(n_repeats):
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + repeat)
        for fold, (train, test) in enumerate(cv.split(subjects, labels, groups)):
            folds.append({"repeat": repeat, "fold": fold, "train": [subjects[i] for i in train],
                          "test": [subjects[i] for i in test]})
    return folds


def with_cv_folds(rows: list[dict], split: dict, n_splits: int = 5, n_repeats: int = 3, seed: int = 0) -> dict:
    """``split`` with ``"cv"``: :func:`repeated_kfold` over its held-out test and pool subjects, so the
    K few-shot patients are never in a fold (they are the few-shot training set)."""
    keep = set(split["test"]) | set(split["pool"])
    folds = repeated_kfold([r for r in rows if r["subject"] in keep], n_splits=n_splits, n_repeats=n_repeats,
                           seed=seed, stratify=split.get("stratify", "idh"))
    return {**split, "cv": folds}
