"""Readers for the supported datasets, as downloaded: discover subjects, their files and labels.

``discover(dataset, root)`` returns one :class:`SubjectRecord` per scan. Problems found while
discovering (a missing modality file) are attached to the record, not raised, so that one bad
subject never stops the others; a root that matches no known layout raises :class:`AldmError`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from ..errors import AldmError
from ..modalities import DEFAULT_MODALITIES
from . import layouts
from .labels import parse_codeletion, parse_grade, parse_idh

DATASETS = ("upenn-gbm", "ucsf-pdgm", "brats2021", "brats2023", "folder")
#: how a brain is brought to the model's cube (aldm.data.preprocess): its box resized to the cube (the paper's
#: reference code) or cropped / padded at a fixed spacing
MODES = ("resize", "crop-pad")
#: which dataset each reader assumes by default. Every reader finds T1 (native, never T1-contrast), T1c
#: (UPENN-GBM T1GD, UCSF-PDGM T1c, BraTS 2021 t1ce, BraTS 2023 t1c, folder t1c.nii.gz), T2 and FLAIR.
DEFAULT_DOMAIN = {"upenn-gbm": "source", "ucsf-pdgm": "target", "brats2021": "source", "brats2023": "source",
                  "folder": "target"}
#: tumour labels each dataset may use (BraTS 2023 uses 3 for enhancing tumour)
ALLOWED_LABELS = {"brats2023": {0, 1, 2, 3}}
DEFAULT_ALLOWED_LABELS = {0, 1, 2, 4}


@dataclass
class SubjectRecord:
    """One scan of one patient, with the paths of its files and its clinical labels."""

    subject: str
    patient: str
    dataset: str
    domain: str
    images: dict  # modality (T1, T2, FLAIR) -> path
    mask: str | None
    idh: str | None = None
    grade: int | None = None
    codeletion: str | None = None
    problems: list = field(default_factory=list)

    def check_files(self) -> None:
        """Record a problem for every expected file that does not exist."""
        for modality, path in self.images.items():
            if not os.path.isfile(path):
                self.problems.append(f"{path}: missing {modality} image")
        if self.mask is None or not os.path.isfile(self.mask):
            self.problems.append(f"{self.mask or self.subject}: missing tumour segmentation")


def _read_csv(path: str, required: tuple) -> list[dict]:
    """Rows of a metadata CSV; raise a one-line error naming the file and any missing column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise AldmError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
                                f"found {', '.join(repr(c) for c in columns[:12])}")
            return [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except UnicodeDecodeError as exc:
        raise AldmError(f"{path}: not a UTF-8 text CSV ({exc.reason})") from exc
    except csv.Error as exc:
        raise AldmError(f"{path}: malformed CSV ({exc})") from exc


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise AldmError(f"{path}: {what} not found")


# ---------------------------------------------------------------------------------------------- UPENN
def discover_upenn(root: str, sessions: str = "baseline", domain: str = "source",
                   modalities=DEFAULT_MODALITIES) -> list[SubjectRecord]:
    """UPENN-GBM: ``images_structural/<ID>/``, masks flat in ``images_segm`` (manual, preferred) or
    ``automated_segm``; labels from ``UPENN-GBM_clinical_info_v2.1.csv``.

    ``sessions``: ``baseline`` keeps ``_11`` scans and the ``_21`` scan of patients that have no
    ``_11``; ``all`` keeps every scan.
    """
    structural = os.path.join(root, "images_structural")
    _require_dir(root, "UPENN-GBM root")
    if not os.path.isdir(structural):
        raise AldmError(f"{root}: not a UPENN-GBM download (no images_structural/ folder)")
    scans = sorted(d for d in os.listdir(structural) if layouts.UPENN_ID.match(d))
    if not scans:
        raise AldmError(f"{structural}: no scan folders named like UPENN-GBM-00001_11")
    if sessions == "baseline":
        by_patient: dict = {}
        for scan in scans:
            by_patient.setdefault(layouts.UPENN_ID.match(scan).group(1), []).append(scan)
        scans = [sorted(v, key=lambda s: (s[-2:] != "11", s))[0] for v in by_patient.values()]
    labels: dict = {}
    csv_path = os.path.join(root, layouts.UPENN_CLINICAL_CSV)
    if os.path.isfile(csv_path):
        for row in _read_csv(csv_path, ("ID", "IDH1")):
            labels[row["ID"].strip()] = {"idh": parse_idh(row.get("IDH1")), "grade": 4}
    records = []
    for scan in scans:
        manual = layouts.upenn_manual_segm(root, scan)
        mask = manual if os.path.isfile(manual) else layouts.upenn_automated_segm(root, scan)
        meta = labels.get(scan, {"idh": None, "grade": 4})
        record = SubjectRecord(
            subject=scan,
            patient="UPENN-GBM-" + layouts.UPENN_ID.match(scan).group(1),
            dataset="upenn-gbm",
            domain=domain,
            images={m: layouts.upenn_image(root, scan, m) for m in modalities},
            mask=mask if os.path.isfile(mask) else None,
            idh=meta["idh"],
            grade=meta["grade"],
        )
        record.check_files()
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------- UCSF
def discover_ucsf(root: str, domain: str = "target", modalities=DEFAULT_MODALITIES) -> list[SubjectRecord]:
    """UCSF-PDGM v5: ``UCSF-PDGM-v5/UCSF-PDGM-NNNN_nifti/``; labels from ``UCSF-PDGM-metadata_v5.csv``
    whose IDs have three digits (``UCSF-PDGM-004``) where folders have four."""
    _require_dir(root, "UCSF-PDGM root")
    if os.path.basename(os.path.normpath(root)) == layouts.UCSF_VERSION_DIR:
        root = os.path.dirname(os.path.normpath(root))
    studies_dir = os.path.join(root, layouts.UCSF_VERSION_DIR)
    if not os.path.isdir(studies_dir):
        raise AldmError(f"{root}: not a UCSF-PDGM download (no {layouts.UCSF_VERSION_DIR}/ folder)")
    folders = sorted(d for d in os.listdir(studies_dir) if layouts.UCSF_FOLDER.match(d))
    if not folders:
        raise AldmError(f"{studies_dir}: no study folders named like UCSF-PDGM-0004_nifti")
    labels: dict = {}
    csv_path = os.path.join(root, layouts.UCSF_METADATA_CSV)
    if os.path.isfile(csv_path):
        for row in _read_csv(csv_path, ("ID", "WHO CNS Grade", "IDH", "1p/19q")):
            match = layouts.UCSF_CSV_ID.match(row["ID"].strip())
            if match:
                labels[(int(match.group(1)), match.group(2))] = {
                    "idh": parse_idh(row.get("IDH")),
                    "grade": parse_grade(row.get("WHO CNS Grade")),
                    "codeletion": parse_codeletion(row.get("1p/19q")),
                }
    records = []
    for folder in folders:
        match = layouts.UCSF_FOLDER.match(folder)
        number, followup = int(match.group(1)), match.group(2)
        study = folder[: -len("_nifti")]
        # Follow-up studies without their own row take the patient's diagnosis.
        meta = labels.get((number, followup)) or labels.get((number, ""), {})
        record = SubjectRecord(
            subject=study,
            patient=layouts.ucsf_study(number),
            dataset="ucsf-pdgm",
            domain=domain,
            images={m: layouts.ucsf_file(root, study, m) for m in modalities},
            mask=layouts.ucsf_file(root, study, "tumor_segmentation"),
            idh=meta.get("idh"),
            grade=meta.get("grade"),
            codeletion=meta.get("codeletion"),
        )
        record.check_files()
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------- BraTS
def discover_brats(root: str, year: int, domain: str = "source", modalities=DEFAULT_MODALITIES) -> list[SubjectRecord]:
    """BraTS 2021 (``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t2,flair,seg}``) or 2023
    (``BraTS-GLI-NNNNN-TTT/...-{t1n,t2w,t2f,seg}``); no clinical labels."""
    _require_dir(root, f"BraTS {year} root")
    pattern, suffix, sep = (
        (layouts.BRATS2021_ID, layouts.BRATS2021_SUFFIX, "_") if year == 2021
        else (layouts.BRATS2023_ID, layouts.BRATS2023_SUFFIX, "-")
    )
    subjects = sorted(d for d in os.listdir(root) if pattern.match(d))
    if not subjects:
        example = "BraTS2021_00000" if year == 2021 else "BraTS-GLI-00000-000"
        raise AldmError(f"{root}: no BraTS {year} subject folders named like {example}")
    records = []
    for subject in subjects:
        patient = subject if year == 2021 else subject.rsplit("-", 1)[0]
        record = SubjectRecord(
            subject=subject,
            patient=patient,
            dataset=f"brats{year}",
            domain=domain,
            images={m: layouts.brats_file(root, subject, suffix[m], sep) for m in modalities},
            mask=layouts.brats_file(root, subject, suffix["seg"], sep),
        )
        record.check_files()
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------- folder
def discover_folder(root: str, domain: str = "target", modalities=DEFAULT_MODALITIES) -> list[SubjectRecord]:
    """A plain ``<subject>/{t1,t2,flair,mask}.nii.gz`` tree, with an optional ``labels.csv``
    (columns ``subject`` and any of ``patient``, ``idh``, ``grade``, ``codeletion``)."""
    _require_dir(root, "dataset folder")
    subjects = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    subjects = [s for s in subjects if any(os.path.exists(os.path.join(root, s, f))
                                           for f in layouts.FOLDER_FILES.values())]
    if not subjects:
        raise AldmError(f"{root}: no <subject>/{{t1,t2,flair,mask}}.nii.gz folders found")
    labels: dict = {}
    csv_path = os.path.join(root, layouts.FOLDER_LABELS_CSV)
    if os.path.isfile(csv_path):
        for row in _read_csv(csv_path, ("subject",)):
            labels[row["subject"].strip()] = row
    records = []
    for subject in subjects:
        meta = labels.get(subject, {})
        record = SubjectRecord(
            subject=subject,
            patient=(meta.get("patient") or subject).strip(),
            dataset="folder",
            domain=domain,
            images={m: os.path.join(root, subject, layouts.FOLDER_FILES[m]) for m in modalities},
            mask=os.path.join(root, subject, layouts.FOLDER_FILES["seg"]),
            idh=parse_idh(meta.get("idh")),
            grade=parse_grade(meta.get("grade")),
            codeletion=parse_codeletion(meta.get("codeletion")),
        )
        record.check_files()
        records.append(record)
    return records


def discover(dataset: str, root: str, domain: str | None = None, sessions: str = "baseline",
             modalities=DEFAULT_MODALITIES) -> list[SubjectRecord]:
    """Subjects of ``dataset`` (one of :data:`DATASETS`) under ``root``, each with the files of
    ``modalities`` (a missing one is a problem of its record)."""
    if dataset not in DATASETS:
        raise AldmError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    domain = domain or DEFAULT_DOMAIN[dataset]
    if dataset == "upenn-gbm":
        return discover_upenn(root, sessions=sessions, domain=domain, modalities=modalities)
    if dataset == "ucsf-pdgm":
        return discover_ucsf(root, domain=domain, modalities=modalities)
    if dataset == "folder":
        return discover_folder(root, domain=domain, modalities=modalities)
    return discover_brats(root, 2021 if dataset == "brats2021" else 2023, domain=domain, modalities=modalities)
