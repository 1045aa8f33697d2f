"""File and folder names of each supported dataset, exactly as downloaded (docs/data.md).

Used both to write the embedded phantom cohorts and to read real downloads, so the two can
never drift apart.
"""

from __future__ import annotations

import os
import re

# ---------------------------------------------------------------- UPENN-GBM (TCIA, v2.1 clinical table)
UPENN_ROOT = "UPENN-GBM"
UPENN_CLINICAL_CSV = "UPENN-GBM_clinical_info_v2.1.csv"
UPENN_CLINICAL_COLUMNS = (
    "ID",
    "Gender",
    "Age_at_scan_years",
    "Survival_from_surgery_days_UPDATED",
    "Survival_Status",
    "Survival_Censor",
    "IDH1",
    "MGMT",
    "KPS",
    "GTR_over90percent",
)
#: scan ID: patient number and session (_11 baseline, _21 follow-up)
UPENN_ID = re.compile(r"^UPENN-GBM-(\d{5})_(\d{2})$")
UPENN_MODALITY_SUFFIX = {"T1": "T1", "T1c": "T1GD", "T2": "T2", "FLAIR": "FLAIR"}


def upenn_id(number: int, session: str = "11") -> str:
    """The UPENN-GBM scan id of subject ``number`` and ``session`` (``UPENN-GBM-00001_11``)."""
    return f"UPENN-GBM-{number:05d}_{session}"


def upenn_image(root: str, scan_id: str, modality: str) -> str:
    """``images_structural/<ID>/<ID>_<T1|T1GD|T2|FLAIR>.nii.gz``."""
    return os.path.join(root, "images_structural", scan_id, f"{scan_id}_{UPENN_MODALITY_SUFFIX[modality]}.nii.gz")


def upenn_manual_segm(root: str, scan_id: str) -> str:
    """The manual segmentation of a UPENN-GBM scan (``images_segm/``)."""
    return os.path.join(root, "images_segm", f"{scan_id}_segm.nii.gz")


def upenn_automated_segm(root: str, scan_id: str) -> str:
    """The automated segmentation of a UPENN-GBM scan (``automated_segm/``)."""
    return os.path.join(root, "automated_segm", f"{scan_id}_automated_approx_segm.nii.gz")


# ---------------------------------------------------------------- UCSF-PDGM (TCIA, v5)
UCSF_ROOT = "UCSF-PDGM"
UCSF_VERSION_DIR = "UCSF-PDGM-v5"
UCSF_METADATA_CSV = "UCSF-PDGM-metadata_v5.csv"
UCSF_METADATA_COLUMNS = (
    "ID",
    "Sex",
    "Age at MRI",
    "WHO CNS Grade",
    "Final pathologic diagnosis (WHO 2021)",
    "MGMT status",
    "MGMT index",
    "1p/19q",
    "IDH",
    "1-dead 0-alive",
    "OS",
    "EOR",
    "Biopsy prior to imaging",
    "BraTS21 ID",
    "BraTS21 Segmentation Cohort",
    "BraTS21 MGMT Cohort",
)
#: study folder: 4-digit patient number, optional follow-up tag (``UCSF-PDGM-0429_FU003d_nifti``)
UCSF_FOLDER = re.compile(r"^UCSF-PDGM-(\d{3,4})((?:_FU\w+)?)_nifti$")
#: metadata ID: 3 digits (``UCSF-PDGM-004``), sometimes with the follow-up tag
UCSF_CSV_ID = re.compile(r"^UCSF-PDGM-(\d{1,4})((?:_FU\w+)?)$")


def ucsf_study(number: int, followup: str = "") -> str:
    """Study name as in folder and file names: ``UCSF-PDGM-0004`` (+ ``_FU003d``)."""
    return f"UCSF-PDGM-{number:04d}{followup}"


def ucsf_csv_id(number: int, followup: str = "") -> str:
    """ID as written in the metadata CSV: three digits, ``UCSF-PDGM-004``."""
    return f"UCSF-PDGM-{number:03d}{followup}"


def ucsf_folder(root: str, study: str) -> str:
    """The folder of one UCSF-PDGM study (``UCSF-PDGM-v5/<study>_nifti``)."""
    return os.path.join(root, UCSF_VERSION_DIR, f"{study}_nifti")


def ucsf_file(root: str, study: str, suffix: str) -> str:
    """``UCSF-PDGM-v5/<study>_nifti/<study>_<suffix>.nii.gz``; suffix T1, T1c, T2, FLAIR,
    tumor_segmentation, brain_segmentation (and the ``_bias`` variants)."""
    return os.path.join(ucsf_folder(root, study), f"{study}_{suffix}.nii.gz")


# ---------------------------------------------------------------- BraTS
BRATS2021_ID = re.compile(r"^BraTS2021_(\d{5})$")
BRATS2021_SUFFIX = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair", "seg": "seg"}
BRATS2023_ID = re.compile(r"^BraTS-GLI-(\d{5})-(\d{3})$")
BRATS2023_SUFFIX = {"T1": "t1n", "T1c": "t1c", "T2": "t2w", "FLAIR": "t2f", "seg": "seg"}


def brats_file(root: str, subject: str, suffix: str, separator: str) -> str:
    """``<subject>/<subject><sep><suffix>.nii.gz`` (sep ``_`` for 2021, ``-`` for 2023)."""
    return os.path.join(root, subject, f"{subject}{separator}{suffix}.nii.gz")


# ---------------------------------------------------------------- plain folder
FOLDER_FILES = {"T1": "t1.nii.gz", "T1c": "t1c.nii.gz", "T2": "t2.nii.gz", "FLAIR": "flair.nii.gz",
                "seg": "mask.nii.gz"}
FOLDER_LABELS_CSV = "labels.csv"  # optional: subject, idh, grade, codeletion
