"""A sample set: the folder ``aldm generate`` writes, its one metadata schema, and reading it back.

``OUT/sample-IIII_<mask subject>/`` holds ``model/{<channel>,mask}.nii.gz`` (model space; one file per
channel of the model's modalities) and ``model/seg.nii.gz`` (the tumour's BraTS label map, when the mask
came with one: always from a cache and under a ``regions`` model), ``native/...`` (the mask subject's
native grid and intensities, when written) and ``sample.json``: its :class:`SampleRecord` and the SHA-256
of every file. A sample is written in a ``.tmp-`` folder renamed at the end, so an interrupted run leaves
no half-written sample.
``OUT/samples.csv`` indexes the finished samples (``manifest.csv`` in folders written before version
0.2; still read). It is not the prepared cache's ``manifest.csv`` (:mod:`aldm.artifacts.cache`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..conditions import DEFAULT_CONDITION, SEG_FILE
from ..errors import AldmError
from ..io.atomic import WRITE_ERRORS, WriteFailed, atomic_write_text, remove_stale_temps, sha256_file, write_failure
from ..io.nifti import load_nifti, save_nifti
from ..modalities import DEFAULT_MODALITIES, MASK_FILE, file_stems, parse_modalities
from .cache import csv_columns
from .folder import ArtifactFolder

SAMPLE_DONE = "sample.json"
SAMPLES_INDEX = "samples.csv"
LEGACY_SAMPLES_INDEX = "manifest.csv"
SPACES = ("model", "native")


@dataclass
class SampleRecord:
    """How one sample was made: what ``sample.json`` holds (besides the checksums) and ``samples.csv``
    indexes. ``guidance``, ``sampler`` and ``steps`` as :meth:`GenerationSettings.recorded` gives them
    (a baseline's: None, "not applicable", None)."""

    sample: str
    index: int
    mask_subject: str
    mask_source: str = ""
    context_subject: str = ""
    mask_cache: str = ""
    seed: int = 0
    guidance: float | None = None
    steps: int | None = None
    sampler: str = ""
    precision: str = "fp32"
    model: str = ""
    model_hash: str = ""
    stage: str = ""
    modalities: list = field(default_factory=list)
    condition: str = DEFAULT_CONDITION  # what the model was conditioned on (aldm.conditions)

    @classmethod
    def columns(cls) -> list[str]:
        """The index's columns: every field."""
        return [f.name for f in dataclasses.fields(cls)]

    def as_dict(self) -> dict:
        """The record as JSON-able data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str) -> SampleRecord:
        """A record from ``sample.json`` or an index row (CSV strings converted; the key ``guidance_scale``
        of 0.2 read as ``guidance``; a baseline's 0.0 / 1.0 / 3.0 of 0.2 kept as written); an AldmError
        naming ``where`` when it is not one."""
        if not isinstance(data, dict):
            raise AldmError(f"{where}: not a sample description (a JSON object)")
        values = dict(data)
        if "guidance" not in values and "guidance_scale" in values:
            values["guidance"] = values.pop("guidance_scale")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        try:
            for name in ("index", "seed"):
                values[name] = int(values[name]) if name in values else 0
            for name, kind in (("guidance", float), ("steps", int)):
                text = values.get(name)
                values[name] = None if text in (None, "") else kind(float(text)) if kind is int else kind(text)
            if isinstance(values.get("modalities"), str):
                values["modalities"] = values["modalities"].split(";") if values["modalities"] else []
            record = cls(**values)
        except (TypeError, ValueError) as exc:
            raise AldmError(f"{where}: damaged sample description ({exc})") from exc
        if not record.sample or not record.mask_subject:
            raise AldmError(f"{where}: damaged sample description (no sample or mask_subject)")
        return record

    @property
    def channels(self) -> tuple[str, ...]:
        """The sample's modalities (samples of 0.2 record none: T1, T2, FLAIR)."""
        return parse_modalities(self.modalities or None, f"sample {self.sample}")


def _comparable(value):
    """Values as a request compares them (a 0.2 sample records no modalities: the paper's three)."""
    return list(DEFAULT_MODALITIES) if value == [] else value


def _write_volumes(folder: str, volumes: dict) -> None:
    """Write ``volumes`` ({space: {stem: (array, affine, dtype)}}) as ``folder/<space>/<stem>.nii.gz``, the files
    compressed in parallel threads (zlib releases the GIL: a sample's native files are most of its writing time);
    the first failure is raised once every file has stopped."""
    jobs = []
    for space, files in volumes.items():
        if space not in SPACES:
            raise ValueError(f"unknown sample space {space!r}")
        os.makedirs(os.path.join(folder, space))
        jobs += [(os.path.join(folder, space, f"{stem}.nii.gz"), *entry) for stem, entry in files.items()]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        futures = [pool.submit(save_nifti, *job) for job in jobs]
    for future in futures:
        future.result()


class SampleSet(ArtifactFolder):
    """One ``aldm generate`` output folder. ``SampleSet(path)`` touches no file."""

    def sample_dir(self, name: str) -> str:
        """The folder of sample ``name``."""
        return os.path.join(self.path, name)

    # ------------------------------------------------------------------------------------ what it is
    @staticmethod
    def is_sample_set(path: str) -> bool:
        """Whether ``path`` is an ``aldm generate`` output (its index, or the index name of older versions
        with the generation columns)."""
        if os.path.isfile(os.path.join(path, SAMPLES_INDEX)):
            return True
        legacy = os.path.join(path, LEGACY_SAMPLES_INDEX)
        return os.path.isfile(legacy) and "sample" in csv_columns(legacy)

    def require(self) -> SampleSet:
        """This sample set, or an AldmError saying it is not one."""
        if not self.is_sample_set(self.path):
            raise AldmError(f"{self.path}: no {SAMPLES_INDEX}; not an aldm generate output folder")
        return self

    def finished_names(self) -> list[str]:
        """The names of the finished samples in the folder (those with their ``sample.json``), sorted."""
        if not os.path.isdir(self.path):
            return []
        return sorted(n for n in os.listdir(self.path) if n.startswith("sample-") and self.is_finished(n))

    def remove_samples(self) -> None:
        """Remove every sample and the index (``--overwrite``); other files in the folder stay."""
        if not os.path.isdir(self.path):
            return
        for name in os.listdir(self.path):
            if name.startswith(("sample-", ".tmp-sample-")):
                shutil.rmtree(self.sample_dir(name), ignore_errors=True)
        for name in (SAMPLES_INDEX,):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.path, name))

    def is_finished(self, name: str) -> bool:
        """Whether sample ``name`` has been written completely (its ``sample.json`` exists)."""
        return os.path.exists(os.path.join(self.sample_dir(name), SAMPLE_DONE))

    # ------------------------------------------------------------------------------------ writing
    def prepare(self) -> None:
        """Create the folder and remove what an interrupted writer left (call with no other writer active)."""
        os.makedirs(self.path, exist_ok=True)
        remove_stale_temps(self.path)

    def write_sample(self, record: SampleRecord, volumes: dict, documents: dict | None = None) -> None:
        """All files of one sample, into a temp folder renamed at the end (no half-written samples).

        ``volumes``: {space ("model" / "native"): {file stem: (array (X, Y, Z), affine (4, 4), on-disk dtype)}};
        ``documents``: {file name: JSON-able data} written beside them (an edit's ``edit.json``);
        ``sample.json`` gets ``record`` and every file's checksum."""
        final = self.sample_dir(record.sample)
        tmp = os.path.join(self.path, f".tmp-{record.sample}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_volumes(tmp, volumes)
            for file_name, data in (documents or {}).items():
                atomic_write_text(os.path.join(tmp, file_name), json.dumps(data, indent=2) + "\n")
            sums = {os.path.relpath(os.path.join(d, f), tmp): sha256_file(os.path.join(d, f))
                    for d, _, names in sorted(os.walk(tmp)) for f in sorted(names)}
            atomic_write_text(os.path.join(tmp, SAMPLE_DONE),
                              json.dumps({**record.as_dict(), "sha256": sums}, indent=2) + "\n")
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
            if isinstance(exc, WriteFailed):  # name the sample, not its temporary folder
                raise WriteFailed(str(exc).replace(tmp, final)) from exc
            if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
                raise write_failure(final, exc) from exc
            raise
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)

    def check_request(self, plan: list[SampleRecord], fields: tuple) -> None:
        """Refuse to continue a folder whose finished samples another request made: one line naming the sample
        and which of ``fields`` differ from ``plan`` (the records this request will write), or the samples this
        request would not make."""
        planned = {p.sample: p for p in plan}
        for name in self.finished_names():
            if name not in planned:
                raise AldmError(f"{self.sample_dir(name)}: made by another request (other masks, edits or more "
                                "samples); pass --overwrite to start afresh or choose another --out")
            have, want = self.read_record(name), planned[name]
            differs = [f"{k} {getattr(have, k)!r} here, {getattr(want, k)!r} asked"
                       for k in fields if _comparable(getattr(have, k)) != _comparable(getattr(want, k))]
            if differs:
                raise AldmError(f"{self.sample_dir(name)}: made with other settings ({'; '.join(differs)}); pass "
                                "--overwrite to start afresh or choose another --out")

    def write_index(self, records: list[SampleRecord]) -> None:
        """``samples.csv``: one row per finished sample (modalities joined by ';')."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SampleRecord.columns(), lineterminator="\n")
        writer.writeheader()
        for record in records:
            row = record.as_dict()
            row["modalities"] = ";".join(row["modalities"])
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        atomic_write_text(os.path.join(self.path, SAMPLES_INDEX), buf.getvalue())

    # ------------------------------------------------------------------------------------ reading
    def read_record(self, name: str) -> SampleRecord | None:
        """The record in sample ``name``'s ``sample.json`` (None when not finished); an AldmError when damaged."""
        path = os.path.join(self.sample_dir(name), SAMPLE_DONE)
        if not os.path.isfile(path):
            return None
        return SampleRecord.from_dict(self._read_json(path), path)

    @staticmethod
    def _read_json(path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AldmError(f"{path}: damaged sample description ({type(exc).__name__})") from exc

    def records(self) -> list[SampleRecord]:
        """The index's records (``samples.csv``; ``manifest.csv`` of older versions)."""
        self.require()
        name = SAMPLES_INDEX if os.path.isfile(os.path.join(self.path, SAMPLES_INDEX)) else LEGACY_SAMPLES_INDEX
        path = os.path.join(self.path, name)
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise AldmError(f"{path}: unreadable sample index ({type(exc).__name__})") from exc
        records = [SampleRecord.from_dict(row, f"{path} row {i + 2}") for i, row in enumerate(rows)]
        if not records:
            raise AldmError(f"{path}: lists no samples; re-run aldm generate")
        return records

    def load_volumes(self, record: SampleRecord, space: str = "model") -> tuple[np.ndarray, np.ndarray]:
        """(image (C, S, S, S) float32 in the record's channel order, mask (1, S, S, S) uint8) of a sample."""
        folder = os.path.join(self.sample_dir(record.sample), space)
        channels = [load_nifti(os.path.join(folder, f"{m}.nii.gz"), scaled=False)[0]
                    for m in file_stems(record.channels)]
        mask = load_nifti(os.path.join(folder, f"{MASK_FILE}.nii.gz"), scaled=False)[0]
        if len({c.shape for c in channels} | {mask.shape}) != 1 or mask.ndim != 3:
            raise AldmError(f"{folder}: its volumes differ in shape or are not 3D; regenerate the sample")
        return np.stack(channels), (mask > 0).astype(np.uint8)[None]

    def load_labels(self, record: SampleRecord, space: str = "model") -> np.ndarray | None:
        """The sample's BraTS label map (1, S, S, S) uint8 {0, 1, 2, 4}, or None when it has none (its mask
        was a plain binary mask, or it was written before version 0.3)."""
        path = os.path.join(self.sample_dir(record.sample), space, f"{SEG_FILE}.nii.gz")
        if not os.path.isfile(path):
            return None
        return np.rint(load_nifti(path, scaled=False)[0]).astype(np.uint8)[None]

    def checked_records(self) -> list[SampleRecord]:
        """The index's records, each sample checked first: its ``sample.json`` must exist and be readable and
        every file must match the checksum recorded there; an AldmError naming the first damaged file."""
        records = self.records()
        for record in records:
            path = os.path.join(self.sample_dir(record.sample), SAMPLE_DONE)
            if not os.path.isfile(path):
                raise AldmError(f"{path}: missing: not a finished sample of aldm generate; re-run aldm generate to "
                                "finish it")
            info = self._read_json(path)
            sums = info.get("sha256") if isinstance(info, dict) else None
            if not isinstance(sums, dict) or not sums:
                raise AldmError(f"{path}: damaged sample description (no checksums)")
            for rel, digest in sums.items():
                file = os.path.join(self.sample_dir(record.sample), rel)
                if not os.path.isfile(file):
                    raise AldmError(f"{file}: missing (listed in {SAMPLE_DONE})")
                if sha256_file(file) != digest:
                    raise AldmError(f"{file}: checksum mismatch (damaged or modified); regenerate the sample")
        return records

    def verify(self) -> tuple[int, list[str]]:
        """(finished samples, problems): files missing or not matching the checksums their sample.json
        records, and half-written ``.tmp-`` folders a kill left behind."""
        if not os.path.isdir(self.path):
            raise AldmError(f"{self.path}: not a folder")
        problems, n = [], 0
        for name in sorted(os.listdir(self.path)):
            folder = self.sample_dir(name)
            if name.startswith(".tmp-"):
                problems.append(f"{folder}: unfinished sample (interrupted); re-run aldm generate to finish it")
                continue
            if not (name.startswith("sample-") and os.path.isdir(folder)):
                continue
            try:
                sums = self._read_json(os.path.join(folder, SAMPLE_DONE)).get("sha256", {})
            except (AldmError, AttributeError):
                problems.append(f"{os.path.join(folder, SAMPLE_DONE)}: missing or damaged")
                continue
            n += 1
            for rel, digest in sums.items():
                path = os.path.join(folder, rel)
                if not os.path.isfile(path):
                    problems.append(f"{path}: missing")
                elif sha256_file(path) != digest:
                    problems.append(f"{path}: checksum mismatch (damaged or modified)")
        if n == 0 and not problems:
            raise AldmError(f"{self.path}: no generated samples (sample-*/{SAMPLE_DONE})")
        return n, problems
