"""A prepared cache: the folder ``aldm data prepare`` writes, and the one place that reads it.

Layout::

    CACHE/prepare.json       the settings every subject was prepared with (aldm.data.preprocess.PrepConfig),
                             including the cache's ``modalities`` (absent in caches of 0.2: T1, T2, FLAIR)
    CACHE/manifest.csv       one row per subject (:func:`manifest_columns`)
    CACHE/<subject>.npz      image float16 (C,S,S,S) in [-1, 1], channel c = modalities[c]; mask uint8 (1,S,S,S);
                             labels uint8 (1,S,S,S) in {0,1,2,4}; brain uint8 (1,S,S,S); affine (4,4)

Not the index of a sample folder (``samples.csv``, :mod:`aldm.artifacts.samples`), although sample
folders of versions before 0.2 also named theirs ``manifest.csv``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re

import numpy as np

from ..errors import AldmError
from ..io.atomic import atomic_path, atomic_write_text, sha256_file
from ..modalities import DEFAULT_MODALITIES, file_stems, parse_modalities
from .folder import ArtifactFolder

MANIFEST = "manifest.csv"
PREPARE_CONFIG = "prepare.json"
SUBJECT_COLUMNS = ("subject", "patient", "dataset", "domain", "idh", "grade", "codeletion")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SUBJECT_ARRAYS = ("image", "mask", "labels", "brain")  # what every subject's npz holds (and its affine)
GEOMETRY_COLUMNS = ("native_shape", "native_affine", "model_affine", "brain_box", "intensity_ranges",
                    "tumour_voxels", "file", "sha256")


def csv_columns(path: str) -> list[str]:
    """The header of a CSV file ([] when it is empty, unreadable or not text)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return csv.DictReader(fh).fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def manifest_columns(modalities=DEFAULT_MODALITIES) -> tuple[str, ...]:
    """The manifest's columns for a cache of ``modalities``: the subject, the source file of every
    channel and of the mask, the geometry (JSON) and the npz file with its checksum."""
    return (*SUBJECT_COLUMNS, *file_stems(modalities), "mask", *GEOMETRY_COLUMNS)


class PreparedCache(ArtifactFolder):
    """One prepared cache folder. ``PreparedCache(path)`` touches no file; reads are cached per object
    (make a new one to see a cache that another process changed)."""


    # ------------------------------------------------------------------------------------ what it is
    @staticmethod
    def is_cache(path: str) -> bool:
        """Whether ``path`` holds a prepared cache (its ``manifest.csv`` with the cache's columns; a sample
        folder of a version before 0.2 also had a ``manifest.csv``, with a ``sample`` column)."""
        manifest = os.path.join(path, MANIFEST)
        if not os.path.isfile(manifest):
            return False
        return "sample" not in csv_columns(manifest)  # unreadable: a damaged cache, as reading it will say

    def require(self) -> PreparedCache:
        """This cache, or an AldmError saying how to make one."""
        if not self.is_cache(self.path):
            raise AldmError(f"{self.path}: not a prepared cache (no {MANIFEST}); run aldm data prepare first")
        return self

    @functools.cached_property
    def settings(self) -> dict:
        """``prepare.json`` ({} when absent, as in caches made before it existed)."""
        path = self.file(PREPARE_CONFIG)
        if not os.path.isfile(path):
            return {}
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise AldmError(f"{path}: damaged cache settings ({exc})") from exc
        if not isinstance(data, dict):
            raise AldmError(f"{path}: damaged cache settings (not a JSON object)")
        return data

    @property
    def modalities(self) -> tuple[str, ...]:
        """The channels its volumes hold, in order (caches without a record: T1, T2, FLAIR)."""
        return parse_modalities(self.settings.get("modalities"), self.file(PREPARE_CONFIG))

    def check_settings(self, settings: dict) -> None:
        """Write ``prepare.json`` for a new cache; for an existing one, refuse other settings (a missing
        ``modalities`` reads as the default)."""
        path = self.file(PREPARE_CONFIG)
        if not os.path.isfile(path):
            os.makedirs(self.path, exist_ok=True)
            atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
            self.__dict__.pop("settings", None)
            return
        existing = {"modalities": list(DEFAULT_MODALITIES), **self.settings}
        if existing != settings:
            raise AldmError(f"{path}: cache was prepared with {existing}, not {settings}; use another --out folder")

    # ------------------------------------------------------------------------------------ its subjects
    @functools.cached_property
    def _rows(self) -> list[dict]:
        path = self.file(MANIFEST)
        if not os.path.isfile(path):
            return []
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                columns = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise AldmError(f"{path}: unreadable manifest ({type(exc).__name__}); re-run aldm data prepare") from exc
        missing = [c for c in ("subject", "domain", "file", "sha256") if c not in columns]
        bad = [i + 2 for i, row in enumerate(rows)
               if None in row or None in row.values() or not row["subject"] or not _SHA256.match(row["sha256"])]
        if missing or bad:
            what = f"no {', '.join(missing)} column" if missing else f"row {bad[0]} is cut short or malformed"
            raise AldmError(f"{path}: damaged manifest ({what}); re-run aldm data prepare")
        return rows

    def rows(self, domain: str | None = None) -> list[dict]:
        """Manifest rows (all, or those of ``domain``); empty when there is no manifest."""
        return [dict(r) for r in self._rows if domain is None or r["domain"] == domain]

    def by_subject(self) -> dict[str, dict]:
        """{subject: manifest row}."""
        return {r["subject"]: r for r in self.rows()}

    def subject_rows(self, subjects) -> list[dict]:
        """The rows of ``subjects`` in that order (an AldmError naming the ones not in the cache)."""
        by_name = self.by_subject()
        missing = [s for s in subjects if s not in by_name]
        if missing:
            raise AldmError(f"{self.path}: unknown subject(s) {', '.join(missing[:5])}")
        return [by_name[s] for s in subjects]

    def manifest_sha256(self) -> str:
        """The manifest's SHA-256 (what a run records to notice a changed cache)."""
        return sha256_file(self.file(MANIFEST))

    def write_manifest(self, rows: list[dict]) -> None:
        """Write ``manifest.csv`` (one row per subject, sorted), atomically."""
        columns = manifest_columns(self.modalities)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r["subject"]):
            writer.writerow({k: row.get(k, "") for k in columns})
        atomic_write_text(self.file(MANIFEST), buf.getvalue())
        self.__dict__.pop("_rows", None)

    def write_subject(self, subject: str, image: np.ndarray, mask: np.ndarray, labels: np.ndarray,
                      brain: np.ndarray, affine: np.ndarray) -> str:
        """Write one subject's npz atomically; returns its path."""
        path = self.file(f"{subject}.npz")
        with atomic_path(path) as tmp:
            np.savez(tmp, image=image.astype(np.float16), mask=mask, labels=labels, brain=brain, affine=affine)
        return path

    def is_cached(self, row: dict | None, subject: str) -> bool:
        """Whether ``subject``'s npz is present and matches the checksum of its manifest ``row``."""
        path = self.file(f"{subject}.npz")
        return bool(row) and os.path.isfile(path) and row.get("sha256") == sha256_file(path)

    def load(self, row_or_subject) -> dict:
        """Arrays of one subject: image float32 (C,S,S,S), mask/labels/brain uint8 (1,S,S,S), affine."""
        name = row_or_subject.get("file", "") if isinstance(row_or_subject, dict) else f"{row_or_subject}.npz"
        path = self.file(name)
        if not name or os.path.basename(name) != name or not name.endswith(".npz"):
            raise AldmError(f"{self.file(MANIFEST)}: names {name!r}, not a subject file of the cache; re-run aldm "
                            "data prepare")
        try:
            with np.load(path, allow_pickle=False) as data:
                out = {k: data[k] for k in data.files}
        except Exception as exc:  # missing, truncated (BadZipFile), corrupt member (zlib, CRC), not an npz at all
            raise AldmError(f"{path}: unreadable cache file ({type(exc).__name__}); re-run aldm data prepare") from exc
        missing = [k for k in SUBJECT_ARRAYS if k not in out]
        image = out.get("image")
        if missing or image.ndim != 4 or image.shape[0] != len(self.modalities) or \
                any(out[k].shape != (1, *image.shape[1:]) for k in ("mask", "labels", "brain")):
            shapes = [out[k].shape for k in SUBJECT_ARRAYS] if not missing else []
            what = f"no {', '.join(missing)}" if missing else f"arrays of shapes {shapes}"
            raise AldmError(f"{path}: damaged cache file ({what}; expected {len(self.modalities)} channels and masks "
                            "of the same size); re-run aldm data prepare")
        out["image"] = image.astype(np.float32)
        return out

    def image_size(self) -> int:
        """The cube edge S of its volumes (read from the first subject)."""
        rows = self.require().rows()
        if not rows:
            raise AldmError(f"{self.file(MANIFEST)}: no subjects")
        return int(self.load(rows[0])["image"].shape[-1])

    def verify(self) -> list[str]:
        """Problems of the cache: missing or damaged npz files (checksum mismatch)."""
        rows = self.require().rows()
        self.modalities  # noqa: B018 - a damaged prepare.json is one line too
        problems = []
        for row in rows:
            path = self.file(row["file"])
            if not os.path.isfile(path):
                problems.append(f"{path}: missing")
            elif sha256_file(path) != row["sha256"]:
                problems.append(f"{path}: checksum mismatch (damaged or modified)")
        return problems
