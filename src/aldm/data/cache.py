"""``aldm data prepare``: verify, preprocess and cache a dataset; the cache's manifest.

Cache layout::

    CACHE/prepare.json       the PrepConfig every subject was prepared with
    CACHE/manifest.csv       one row per subject (see MANIFEST_COLUMNS)
    CACHE/<subject>.npz      image float16 (3,S,S,S) T1/T2/FLAIR in [-1, 1]; mask uint8 (1,S,S,S);
                             labels uint8 (1,S,S,S) in {0,1,2,4}; brain uint8 (1,S,S,S); affine (4,4)

Re-running skips subjects whose npz is present and matches its checksum; subjects that fail
verification are listed and skipped (``strict`` makes them fatal) and never reach the cache.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..errors import AldmError
from ..io.atomic import atomic_path, atomic_write_text, sha256_file
from ..io.lock import writes_folder
from ..io.workers import parallel_map
from ..modalities import VOLUME_FILES
from .cohorts import SubjectRecord, discover
from .preprocess import PrepConfig, load_and_verify, preprocess

MANIFEST = "manifest.csv"
CONFIG = "prepare.json"
MANIFEST_COLUMNS = (
    "subject", "patient", "dataset", "domain", "idh", "grade", "codeletion",
    *VOLUME_FILES,
    "native_shape", "native_affine", "model_affine", "brain_box", "intensity_ranges",
    "tumour_voxels", "file", "sha256",
)


@dataclass
class PrepareSummary:
    """What one ``prepare`` run did."""

    found: int = 0
    prepared: int = 0
    cached: int = 0
    failed: dict = field(default_factory=dict)  # subject -> [problem lines]

    def table(self) -> str:
        """The summary as an aligned text table (found, prepared, cached, skipped)."""
        lines = [
            f"{'subjects found':<22}{self.found:>6}",
            f"{'prepared now':<22}{self.prepared:>6}",
            f"{'already cached':<22}{self.cached:>6}",
            f"{'skipped (bad input)':<22}{len(self.failed):>6}",
        ]
        for subject, problems in self.failed.items():
            lines.append(f"  {subject}: {len(problems)} problem(s)")
        return "\n".join(lines)


def read_manifest(cache: str) -> list[dict]:
    """Rows of ``CACHE/manifest.csv`` (empty list when there is none)."""
    path = os.path.join(cache, MANIFEST)
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_manifest(cache: str, rows: list[dict]) -> None:
    """Write the cache's ``manifest.csv`` (one row per subject, :data:`MANIFEST_COLUMNS`), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["subject"]):
        writer.writerow({k: row.get(k, "") for k in MANIFEST_COLUMNS})
    atomic_write_text(os.path.join(cache, MANIFEST), buf.getvalue())


def load_cached(cache: str, row_or_subject) -> dict:
    """Arrays of one cached subject: image float32 (3,S,S,S), mask/labels/brain uint8 (1,S,S,S), affine."""
    name = row_or_subject["file"] if isinstance(row_or_subject, dict) else f"{row_or_subject}.npz"
    path = os.path.join(cache, name)
    try:
        with np.load(path) as data:
            out = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise AldmError(f"{path}: unreadable cache file ({type(exc).__name__}); re-run aldm data prepare") from exc
    out["image"] = out["image"].astype(np.float32)
    return out


def _check_config(cache: str, config: PrepConfig) -> None:
    path = os.path.join(cache, CONFIG)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            existing = json.load(fh)
        if existing != config.as_dict():
            raise AldmError(f"{path}: cache was prepared with {existing}, not {config.as_dict()}; "
                            "use another --out folder")
    else:
        os.makedirs(cache, exist_ok=True)
        atomic_write_text(path, json.dumps(config.as_dict(), indent=2) + "\n")


def _prepare_one(args: tuple) -> tuple[str, dict | None, list[str]]:
    """Verify + preprocess + write one subject (runs in worker processes)."""
    record, cache, config = args
    volume, problems = load_and_verify(record)
    if volume is None:
        return record.subject, None, problems
    out = preprocess(volume, config)
    path = os.path.join(cache, f"{record.subject}.npz")
    with atomic_path(path) as tmp:
        np.savez(tmp, image=out["image"].astype(np.float16), mask=out["mask"], labels=out["labels"],
                 brain=out["brain"], affine=out["affine"])
    row = {
        "subject": record.subject, "patient": record.patient, "dataset": record.dataset, "domain": record.domain,
        "idh": record.idh or "", "grade": record.grade or "", "codeletion": record.codeletion or "",
        "t1": record.images["T1"], "t2": record.images["T2"], "flair": record.images["FLAIR"], "mask": record.mask,
        "native_shape": json.dumps(list(volume.labels.shape)),
        "native_affine": json.dumps(np.round(volume.affine, 6).tolist()),
        "model_affine": json.dumps(np.round(out["affine"], 6).tolist()),
        "brain_box": json.dumps(out["brain_box"]),
        "intensity_ranges": json.dumps([[round(a, 4), round(b, 4)] for a, b in out["intensity_ranges"]]),
        "tumour_voxels": int(out["mask"].sum()),
        "file": os.path.basename(path),
        "sha256": sha256_file(path),
    }
    return record.subject, row, []


@writes_folder("cache", "cache")
def prepare_dataset(dataset: str, root: str, cache: str, config: PrepConfig | None = None, *,
                    domain: str | None = None, sessions: str = "baseline", workers: int = 1,
                    strict: bool = False, limit: int | None = None, progress: bool = True,
                    log=None) -> PrepareSummary:
    """Verify, preprocess and cache every subject of ``dataset`` under ``root`` into ``cache``."""
    config = config or PrepConfig()
    log = log or (lambda line: tqdm.write(line, file=sys.stderr))
    records: list[SubjectRecord] = discover(dataset, root, domain=domain, sessions=sessions)
    if limit is not None:
        records = records[:limit]
    if strict:
        bad = [p for r in records for p in r.problems]
        if bad:
            raise AldmError(bad[0] + (f" (and {len(bad) - 1} more problem(s))" if len(bad) > 1 else ""))
    _check_config(cache, config)
    rows = {r["subject"]: r for r in read_manifest(cache)}
    summary = PrepareSummary(found=len(records))
    todo = []
    for record in records:
        row = rows.get(record.subject)
        path = os.path.join(cache, f"{record.subject}.npz")
        if row and os.path.isfile(path) and row.get("sha256") == sha256_file(path):
            summary.cached += 1
        else:
            todo.append((record, cache, config))
    bar = tqdm(total=len(todo), desc=f"prepare {dataset}", unit="subj", disable=not progress)

    def finish(result):
        subject, row, problems = result
        bar.update()
        if row is None:
            summary.failed[subject] = problems
            for line in problems:
                log(f"skipped {subject}: {line}")
            if strict:
                raise AldmError(problems[0])
            return
        rows[subject] = row
        summary.prepared += 1
        write_manifest(cache, list(rows.values()))  # after every subject: an interrupted run loses nothing

    try:
        for result in parallel_map(_prepare_one, todo, workers):
            finish(result)
    finally:
        bar.close()
    return summary


def verify_cache(cache: str) -> list[str]:
    """Problems of a prepared cache: missing or damaged npz files (checksum mismatch)."""
    rows = read_manifest(cache)
    if not rows:
        raise AldmError(f"{os.path.join(cache, MANIFEST)}: no manifest; run aldm data prepare first")
    problems = []
    for row in rows:
        path = os.path.join(cache, row["file"])
        if not os.path.isfile(path):
            problems.append(f"{path}: missing")
        elif sha256_file(path) != row["sha256"]:
            problems.append(f"{path}: checksum mismatch (damaged or modified)")
    return problems
