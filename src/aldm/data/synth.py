"""``aldm data synth``: embedded phantom cohorts written in the real downloads' layouts.

``OUT/UPENN-GBM/`` (source domain) and ``OUT/UCSF-PDGM/`` (target domain) look like the TCIA
downloads: same folder and file names, CSV names, columns and value spellings, int16 NIfTI
(UCSF with ``scl_slope``), 240x240x155 at 1 mm with an LPS affine. Each subject's random
stream is spawned from the cohort seed, so output is identical for any number of workers.

Beyond the downloads, for scoring scan edits against a truth real data lacks: ``OUT/healthy-twins/<subject>/``
(each subject's images without its tumour, the same anatomy and noise), ``OUT/resized-twins/<subject>/`` (each
subject with its tumour shrunk about its centre, with its ``seg.nii.gz``) and ``OUT/healthy/HEALTHY-NNNN/``
(healthy subjects), in aldm's folder layout (``t1.nii.gz`` ...).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ..conditions import SEG_FILE
from ..io.atomic import atomic_write_text
from ..io.nifti import save_nifti
from ..io.workers import parallel_map
from . import layouts
from .phantom import MODALITIES, synthesize_subject
from .phenotype import SOURCE, TARGET, Phenotype, sample_phenotype
from .template import NATIVE_AFFINE

TWINS_ROOT = "healthy-twins"  # each subject without its tumour, in aldm's folder layout
HEALTHY_ROOT = "healthy"  # healthy subjects, in aldm's folder layout
RESIZED_ROOT = "resized-twins"  # each subject with its tumour shrunk, in aldm's folder layout with seg.nii.gz
RESIZE_RECORD = "resize.json"  # in RESIZED_ROOT: {"factor": F}


def _subject_streams(seed: int, n_source: int, n_target: int) -> list:
    """(domain, index, phenotype seed, anatomy seed) for every subject, independent of workers."""
    root = np.random.SeedSequence(seed)
    src, tgt = root.spawn(2)
    jobs = []
    for domain, seq, n in ((SOURCE, src, n_source), (TARGET, tgt, n_target)):
        for index, child in enumerate(seq.spawn(n)):
            pheno_seed, anatomy_seed = child.generate_state(2)
            jobs.append((domain, index, int(pheno_seed), int(anatomy_seed)))
    return jobs


def _ucsf_numbers(n: int, seed: int) -> list[int]:
    """Non-contiguous 4-digit study numbers starting at 4, like the real UCSF-PDGM IDs."""
    rng = np.random.default_rng([seed, 7])
    gaps = rng.choice([1, 1, 1, 2, 3], size=n)
    return [int(v) for v in 3 + np.cumsum(gaps)]


def _automated_from_manual(seg: np.ndarray) -> np.ndarray:
    """A slightly different 'automated approximate' segmentation: oedema grown by one voxel."""
    out = seg.copy()
    nz = np.argwhere(seg > 0)
    if len(nz) == 0:
        return out
    lo, hi = np.maximum(nz.min(0) - 2, 0), nz.max(0) + 3
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grown = ndimage.binary_dilation(seg[box] > 0) & (seg[box] == 0)
    out[box][grown] = 2
    return out


def _clinical_row(domain: str, subject_id: str, pheno: Phenotype, rng: np.random.Generator) -> dict:
    """One metadata row with the real value spellings (docs/data.md)."""
    alive = rng.random() < (0.25 if pheno.grade == 4 else 0.7)
    survival = int(rng.integers(60, 900) if pheno.grade == 4 else rng.integers(400, 3000))
    if domain == SOURCE:
        return {
            "ID": subject_id,
            "Gender": "M" if rng.random() < 0.6 else "F",
            "Age_at_scan_years": round(float(rng.normal(63, 11)), 2),
            "Survival_from_surgery_days_UPDATED": "Not Available" if rng.random() < 0.1 else survival,
            "Survival_Status": "Alive" if alive else "Deceased",
            "Survival_Censor": 0 if alive else 1,
            "IDH1": str(rng.choice(["Wildtype", "NOS", "NEC"], p=[0.75, 0.22, 0.03])),
            "MGMT": str(rng.choice(["Methylated", "Unmethylated", "Indeterminate", "Not Available"],
                                   p=[0.3, 0.35, 0.05, 0.3])),
            "KPS": "Not Available" if rng.random() < 0.4 else int(rng.choice([60, 70, 80, 90, 100])),
            "GTR_over90percent": str(rng.choice(["Y", "N", "Not Available"], p=[0.45, 0.3, 0.25])),
        }
    if pheno.idh_mutant:
        idh = str(rng.choice(["IDH1 p.R132H", "mutated (NOS)", "IDH1 p.R132C", "IDH2 p.R172K"],
                             p=[0.75, 0.15, 0.05, 0.05]))
        codel = "co-deletion" if pheno.codeleted else "intact"
        if pheno.codeleted:
            diagnosis = "Oligodendroglioma, IDH-mutant, 1p/19q-codeleted"
        else:
            diagnosis = "Astrocytoma, IDH-mutant"
    else:
        idh = "wildtype"
        codel = str(rng.choice(["intact", ""], p=[0.6, 0.4]))
        diagnosis = "Glioblastoma, IDH-wildtype" if pheno.grade == 4 else "Astrocytoma, IDH-wildtype"
    mgmt = str(rng.choice(["positive", "negative", "indeterminate"], p=[0.5, 0.42, 0.08]))
    number = int(subject_id.rsplit("-", 1)[1])
    return {
        "ID": subject_id,
        "Sex": "M" if rng.random() < 0.6 else "F",
        "Age at MRI": int(rng.normal(57 if pheno.grade == 4 else 42, 12)),
        "WHO CNS Grade": pheno.grade,
        "Final pathologic diagnosis (WHO 2021)": diagnosis,
        "MGMT status": mgmt,
        "MGMT index": int(rng.integers(0, 17)) if mgmt == "positive" else "",
        "1p/19q": codel,
        "IDH": idh,
        "1-dead 0-alive": 0 if alive else 1,
        "OS": survival,
        "EOR": str(rng.choice(["GTR", "STR", "biopsy"], p=[0.45, 0.4, 0.15])),
        "Biopsy prior to imaging": "No" if rng.random() < 0.9 else "Yes",
        "BraTS21 ID": f"BraTS2021_{number + 100:05d}" if rng.random() < 0.8 else "",
        "BraTS21 Segmentation Cohort": "Training" if rng.random() < 0.8 else "",
        "BraTS21 MGMT Cohort": "Training" if rng.random() < 0.6 else "",
    }


def _write_folder_case(folder: str, images: dict, domain: str = SOURCE, seg: np.ndarray | None = None) -> None:
    """One scan in aldm's folder layout (``t1.nii.gz``, ``t1c.nii.gz``, ``t2.nii.gz``, ``flair.nii.gz``, and
    ``seg.nii.gz`` when ``seg`` is given: without it a healthy scan), int16 as ``domain``'s downloads store it
    (whole numbers, or with a ``scl_slope``)."""
    if seg is not None:
        save_nifti(os.path.join(folder, f"{SEG_FILE}.nii.gz"), seg, NATIVE_AFFINE, np.uint8)
    for modality in MODALITIES:
        image = np.round(images[modality]).astype(np.int16) if domain == SOURCE else images[modality]
        save_nifti(os.path.join(folder, layouts.FOLDER_FILES[modality]), image, NATIVE_AFFINE, np.int16)


def _write_healthy(job: tuple) -> None:
    """Synthesise and write one healthy subject (no tumour, the target domain's scanner)."""
    folder, pheno_seed, anatomy_seed = job
    pheno = sample_phenotype(TARGET, np.random.default_rng(pheno_seed))
    _write_folder_case(folder, synthesize_subject(pheno, anatomy_seed, tumour=False).images, TARGET)


def _write_subject(job: tuple) -> dict:
    """Synthesise and write one subject (its healthy twin under ``twins`` and its resized twin under
    ``resized[0]``, scaled by ``resized[1]``, when given); returns its metadata row (run in worker processes)."""
    domain, root, subject_id, pheno_seed, anatomy_seed, manual, twins, resized = job
    rng = np.random.default_rng(pheno_seed)
    pheno = sample_phenotype(domain, rng)
    subject = synthesize_subject(pheno, anatomy_seed, healthy_twin=twins is not None,
                                 resized_twin=resized[1] if resized else 0.0)
    name = subject_id if domain == SOURCE else layouts.ucsf_study(int(subject_id.rsplit("-", 1)[1]))
    if twins is not None:
        _write_folder_case(os.path.join(twins, name), subject.healthy, domain)
    if resized is not None and subject.resized is not None:
        _write_folder_case(os.path.join(resized[0], name), subject.resized, domain, subject.resized_segmentation)
    if domain == SOURCE:
        for modality in MODALITIES:
            img = np.round(subject.images[modality]).astype(np.int16)
            save_nifti(layouts.upenn_image(root, subject_id, modality), img, NATIVE_AFFINE, np.int16)
        if manual:
            save_nifti(layouts.upenn_manual_segm(root, subject_id), subject.segmentation, NATIVE_AFFINE, np.uint8)
        automated = _automated_from_manual(subject.segmentation)
        save_nifti(layouts.upenn_automated_segm(root, subject_id), automated, NATIVE_AFFINE, np.uint8)
    else:
        study = layouts.ucsf_study(int(subject_id.rsplit("-", 1)[1]))
        for modality in MODALITIES:
            save_nifti(layouts.ucsf_file(root, study, modality), subject.images[modality], NATIVE_AFFINE, np.int16)
        save_nifti(layouts.ucsf_file(root, study, "tumor_segmentation"), subject.segmentation, NATIVE_AFFINE,
                   np.uint8)
        save_nifti(layouts.ucsf_file(root, study, "brain_segmentation"), subject.tissue, NATIVE_AFFINE, np.uint8)
    return _clinical_row(domain, subject_id, pheno, rng)


def _csv_text(columns: tuple, rows: list) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


@dataclass(frozen=True)
class Extras:
    """What :func:`synth_cohorts` writes beside the two cohorts, in aldm's folder layout.

    ``healthy_twins``: each subject's anatomy without its tumour under ``out/healthy-twins/<subject>/`` (the
    ground truth of a tumour's removal); ``resized_twins`` F in (0, 1]: each subject with its tumour shrunk by F
    under ``out/resized-twins/<subject>/`` with its ``seg.nii.gz`` and F in ``resized-twins/resize.json`` (the
    ground truth of a shrunk tumour); ``n_healthy``: healthy subjects under ``out/healthy/HEALTHY-NNNN/`` (a
    healthy cohort to insert tumours into)."""

    healthy_twins: bool = False
    resized_twins: float = 0.0
    n_healthy: int = 0


def synth_cohorts(out: str, n_source: int, n_target: int, seed: int = 0, workers: int = 1,
                  progress: bool = True, extras: Extras = Extras()) -> dict:
    """Write both phantom cohorts under ``out`` and the ``extras``; returns {'source': root, 'target': root} (and
    'twins', 'resized', 'healthy' when written). Existing subjects are overwritten (atomically); the CSVs are
    written last."""
    upenn_root = os.path.join(out, layouts.UPENN_ROOT)
    ucsf_root = os.path.join(out, layouts.UCSF_ROOT)
    twins = os.path.join(out, TWINS_ROOT) if extras.healthy_twins else None
    resized = (os.path.join(out, RESIZED_ROOT), float(extras.resized_twins)) if extras.resized_twins else None
    ucsf_numbers = _ucsf_numbers(n_target, seed)
    manual_rng = np.random.default_rng([seed, 11])
    jobs = []
    for domain, index, pheno_seed, anatomy_seed in _subject_streams(seed, n_source, n_target):
        if domain == SOURCE:
            # ~1 in 4 UPENN scans has a manual segmentation; the first always does.
            manual = index == 0 or bool(manual_rng.random() < 0.25)
            jobs.append((domain, upenn_root, layouts.upenn_id(index + 1), pheno_seed, anatomy_seed, manual, twins,
                         resized))
        else:
            jobs.append((domain, ucsf_root, layouts.ucsf_csv_id(ucsf_numbers[index]), pheno_seed, anatomy_seed,
                         False, twins, resized))
    bar = tqdm(total=len(jobs), desc="phantom subjects", unit="subj", disable=not progress)
    rows = []
    for row in parallel_map(_write_subject, jobs, workers):
        rows.append(row)
        bar.update()
    bar.close()
    source_rows = [r for r, j in zip(rows, jobs) if j[0] == SOURCE]
    target_rows = [r for r, j in zip(rows, jobs) if j[0] == TARGET]
    if n_source:
        atomic_write_text(os.path.join(upenn_root, layouts.UPENN_CLINICAL_CSV),
                          _csv_text(layouts.UPENN_CLINICAL_COLUMNS, source_rows))
    if n_target:
        atomic_write_text(os.path.join(ucsf_root, layouts.UCSF_METADATA_CSV),
                          _csv_text(layouts.UCSF_METADATA_COLUMNS, target_rows))
    roots = {"source": upenn_root, "target": ucsf_root, **({"twins": twins} if twins else {})}
    if resized:
        atomic_write_text(os.path.join(resized[0], RESIZE_RECORD), json.dumps({"factor": resized[1]}) + "\n")
        roots["resized"] = resized[0]
    if extras.n_healthy:
        roots["healthy"] = _synth_healthy(os.path.join(out, HEALTHY_ROOT), extras.n_healthy, seed, workers,
                                          progress)
    return roots


def _synth_healthy(root: str, n: int, seed: int, workers: int, progress: bool) -> str:
    """``n`` healthy subjects under ``root`` (their own random streams, apart from the cohorts'); returns root."""
    streams = np.random.SeedSequence([seed, 13]).spawn(n)
    jobs = [(os.path.join(root, f"HEALTHY-{i + 1:04d}"), *(int(v) for v in child.generate_state(2)))
            for i, child in enumerate(streams)]
    for _ in tqdm(parallel_map(_write_healthy, jobs, workers), total=n, desc="healthy subjects", unit="subj",
                  disable=not progress):
        pass
    return root
