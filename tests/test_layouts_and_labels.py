"""Phantom cohorts are written exactly like the real downloads; labels parse the real spellings."""

from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np
import pytest

from aldm.data import layouts
from aldm.data.cohorts import discover
from aldm.data.labels import parse_codeletion, parse_grade, parse_idh
from aldm.errors import AldmError


def _csv(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def test_upenn_layout(phantom_root):
    root = phantom_root / "UPENN-GBM"
    columns, rows = _csv(root / "UPENN-GBM_clinical_info_v2.1.csv")
    assert tuple(columns) == layouts.UPENN_CLINICAL_COLUMNS
    assert [r["ID"] for r in rows] == ["UPENN-GBM-00001_11", "UPENN-GBM-00002_11", "UPENN-GBM-00003_11"]
    assert {r["IDH1"] for r in rows} <= {"Wildtype", "Mutated", "NOS", "NEC"}
    for r in rows:
        for suffix in ("T1", "T1GD", "T2", "FLAIR"):
            path = root / "images_structural" / r["ID"] / f"{r['ID']}_{suffix}.nii.gz"
            assert path.is_file(), path
        assert (root / "automated_segm" / f"{r['ID']}_automated_approx_segm.nii.gz").is_file()
    assert (root / "images_segm" / "UPENN-GBM-00001_11_segm.nii.gz").is_file()  # manual: flat folder
    img = nib.load(root / "images_structural/UPENN-GBM-00001_11/UPENN-GBM-00001_11_T1.nii.gz")
    assert img.shape == (240, 240, 155)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert np.allclose(np.abs(np.diag(img.affine)[:3]), 1.0)
    assert img.get_data_dtype() == np.int16


def test_ucsf_layout(phantom_root):
    root = phantom_root / "UCSF-PDGM"
    columns, rows = _csv(root / "UCSF-PDGM-metadata_v5.csv")
    assert tuple(columns) == layouts.UCSF_METADATA_COLUMNS
    for r in rows:
        assert len(r["ID"].rsplit("-", 1)[1]) == 3  # CSV: UCSF-PDGM-004
        study = layouts.ucsf_study(int(r["ID"].rsplit("-", 1)[1]))
        assert len(study.rsplit("-", 1)[1]) == 4  # folders: UCSF-PDGM-0004
        for suffix in ("T1", "T1c", "T2", "FLAIR", "tumor_segmentation", "brain_segmentation"):
            assert (root / "UCSF-PDGM-v5" / f"{study}_nifti" / f"{study}_{suffix}.nii.gz").is_file()
        assert r["WHO CNS Grade"] in {"2", "3", "4"}
        assert r["IDH"] == "wildtype" or "IDH" in r["IDH"] or r["IDH"].startswith("mutated")
    study = layouts.ucsf_study(int(rows[0]["ID"].rsplit("-", 1)[1]))
    img = nib.load(root / "UCSF-PDGM-v5" / f"{study}_nifti" / f"{study}_FLAIR.nii.gz")
    assert img.get_data_dtype() == np.int16
    slope = float(img.dataobj.slope)  # nibabel moves scl_slope from the header to the array proxy
    assert np.isfinite(slope) and slope not in (0.0, 1.0)  # stored int16 with scl_slope, like the originals
    seg = np.asarray(nib.load(root / "UCSF-PDGM-v5" / f"{study}_nifti" / f"{study}_tumor_segmentation.nii.gz")
                     .dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4}


def test_readers_parse_labels_and_prefer_manual_masks(phantom_root):
    upenn = discover("upenn-gbm", str(phantom_root / "UPENN-GBM"))
    assert [r.patient for r in upenn] == ["UPENN-GBM-00001", "UPENN-GBM-00002", "UPENN-GBM-00003"]
    assert upenn[0].mask.endswith("images_segm/UPENN-GBM-00001_11_segm.nii.gz")
    assert all(r.images["T1"].endswith("_T1.nii.gz") for r in upenn)  # never T1GD
    assert all(r.grade == 4 and r.domain == "source" and not r.problems for r in upenn)
    ucsf = discover("ucsf-pdgm", str(phantom_root / "UCSF-PDGM"))
    _, rows = _csv(phantom_root / "UCSF-PDGM" / "UCSF-PDGM-metadata_v5.csv")
    by_number = {int(r["ID"].rsplit("-", 1)[1]): r for r in rows}
    for rec in ucsf:
        row = by_number[int(rec.subject.rsplit("-", 1)[1])]
        assert rec.grade == int(row["WHO CNS Grade"])
        assert rec.idh == ("wildtype" if row["IDH"] == "wildtype" else "mutant")
        assert rec.domain == "target" and rec.images["T1"].endswith("_T1.nii.gz")


def test_upenn_baseline_sessions(phantom_root, tmp_path):
    root = tmp_path / "UPENN-GBM"
    src = phantom_root / "UPENN-GBM"
    # patient 1 has _11 and _21; patient 2 only _21
    for scan, new in (("UPENN-GBM-00001_11", "UPENN-GBM-00001_11"), ("UPENN-GBM-00001_11", "UPENN-GBM-00001_21"),
                      ("UPENN-GBM-00002_11", "UPENN-GBM-00002_21")):
        os.makedirs(root / "images_structural" / new)
        for suffix in ("T1", "T2", "FLAIR"):
            os.symlink(src / "images_structural" / scan / f"{scan}_{suffix}.nii.gz",
                       root / "images_structural" / new / f"{new}_{suffix}.nii.gz")
    records = discover("upenn-gbm", str(root))
    assert [r.subject for r in records] == ["UPENN-GBM-00001_11", "UPENN-GBM-00002_21"]
    assert all("missing tumour segmentation" in r.problems[0] for r in records)
    assert len(discover("upenn-gbm", str(root), sessions="all")) == 3


@pytest.mark.parametrize("value,expected", [
    ("wildtype", "wildtype"), ("Wildtype", "wildtype"), ("mutated (NOS)", "mutant"), ("IDH1 p.R132H", "mutant"),
    ("IDH2 p.R172K", "mutant"), ("Mutated", "mutant"), ("NOS", None), ("NEC", None), ("unknown", None), ("", None),
    (None, None), (float("nan"), None),
])
def test_parse_idh(value, expected):
    assert parse_idh(value) == expected


@pytest.mark.parametrize("value,expected", [("4", 4), ("2.0", 2), ("III", 3), ("grade 4", 4), ("", None), ("x", None)])
def test_parse_grade(value, expected):
    assert parse_grade(value) == expected


@pytest.mark.parametrize("value,expected", [("co-deletion", "codeleted"), ("relative co-deletion", "codeleted"),
                                            ("intact", "intact"), ("", None)])
def test_parse_codeletion(value, expected):
    assert parse_codeletion(value) == expected


def test_wrong_csv_columns_name_the_file(phantom_root, tmp_path):
    root = tmp_path / "UCSF-PDGM"
    os.makedirs(root / "UCSF-PDGM-v5")
    os.symlink(phantom_root / "UCSF-PDGM" / "UCSF-PDGM-v5" / os.listdir(phantom_root / "UCSF-PDGM/UCSF-PDGM-v5")[0],
               root / "UCSF-PDGM-v5" / os.listdir(phantom_root / "UCSF-PDGM/UCSF-PDGM-v5")[0])
    (root / "UCSF-PDGM-metadata_v5.csv").write_text("ID,Sex,WHO grade,IDH status\nUCSF-PDGM-004,M,4,wildtype\n")
    with pytest.raises(AldmError, match=r"UCSF-PDGM-metadata_v5.csv: missing column\(s\) 'WHO CNS Grade'"):
        discover("ucsf-pdgm", str(root))


def test_unknown_layouts_are_clear_errors(tmp_path):
    with pytest.raises(AldmError, match="not a UPENN-GBM download"):
        discover("upenn-gbm", str(tmp_path))
    with pytest.raises(AldmError, match="not a UCSF-PDGM download"):
        discover("ucsf-pdgm", str(tmp_path))
    with pytest.raises(AldmError, match="no BraTS 2021 subject folders"):
        discover("brats2021", str(tmp_path))
    with pytest.raises(AldmError, match="not found"):
        discover("folder", str(tmp_path / "nope"))
    with pytest.raises(AldmError, match="unknown dataset"):
        discover("adni", str(tmp_path))
