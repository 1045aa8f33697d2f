"""``aldm data prepare``: verify, preprocess and cache a dataset.

The cache it writes (layout, manifest, reading) is :class:`aldm.artifacts.cache.PreparedCache`.
Re-running skips subjects whose npz is present and matches its checksum; subjects that fail
verification are listed and skipped (``strict`` makes them fatal) and never reach the cache.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..artifacts.cache import PreparedCache
from ..errors import AldmError
from ..io.atomic import sha256_file
from ..io.lock import writes_folder
from ..io.workers import parallel_map
from ..modalities import file_stem
from .cohorts import SubjectRecord, discover
from .preprocess import PrepConfig, load_and_verify, preprocess


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


def _prepare_one(args: tuple) -> tuple[str, dict | None, list[str]]:
    """Verify + preprocess + write one subject (runs in worker processes)."""
    record, cache, config = args
    volume, problems = load_and_verify(record, config.modalities)
    if volume is None:
        return record.subject, None, problems
    out = preprocess(volume, config)
    path = PreparedCache(cache).write_subject(record.subject, out["image"], out["mask"], out["labels"], out["brain"],
                                              out["affine"])
    row = {
        "subject": record.subject, "patient": record.patient, "dataset": record.dataset, "domain": record.domain,
        "idh": record.idh or "", "grade": record.grade or "", "codeletion": record.codeletion or "",
        **{file_stem(m): record.images[m] for m in config.modalities}, "mask": record.mask,
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


@dataclass(frozen=True)
class DatasetSource:
    """What to prepare: the subjects of ``dataset`` (a layout of :mod:`aldm.data.layouts`) under ``root``, as
    downloaded; ``domain`` overrides the dataset's (source / target), ``sessions`` picks a longitudinal
    dataset's sessions, ``limit`` takes the first N subjects only."""

    dataset: str
    root: str
    domain: str | None = None
    sessions: str = "baseline"
    limit: int | None = None


@writes_folder("cache", "cache")
def prepare_dataset(source: DatasetSource, cache: str, config: PrepConfig | None = None, *, workers: int = 1,
                    strict: bool = False, progress: bool = True, log=None) -> PrepareSummary:
    """Verify, preprocess and cache every subject of ``source`` into ``cache``."""
    config = config or PrepConfig()
    log = log or (lambda line: tqdm.write(line, file=sys.stderr))
    records: list[SubjectRecord] = discover(source.dataset, source.root, domain=source.domain,
                                           sessions=source.sessions, modalities=config.modalities)
    if source.limit is not None:
        records = records[:source.limit]
    if strict:
        bad = [p for r in records for p in r.problems]
        if bad:
            raise AldmError(bad[0] + (f" (and {len(bad) - 1} more problem(s))" if len(bad) > 1 else ""))
    target = PreparedCache(cache)
    target.check_settings(config.as_dict())
    rows = target.by_subject()
    summary = PrepareSummary(found=len(records))
    todo = []
    for record in records:
        if target.is_cached(rows.get(record.subject), record.subject):
            summary.cached += 1
        else:
            todo.append((record, cache, config))
    bar = tqdm(total=len(todo), desc=f"prepare {source.dataset}", unit="subj", disable=not progress)

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
        target.write_manifest(list(rows.values()))  # after every subject: an interrupted run loses nothing

    try:
        for result in parallel_map(_prepare_one, todo, workers):
            finish(result)
    finally:
        bar.close()
    return summary
