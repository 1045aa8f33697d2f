"""``aldm export``: synthetic (and real) cases in the layouts segmentation tools train on.

* ``nnunet``: the nnU-Net v2 raw layout, ``Dataset<NNN>_<Name>/`` with ``imagesTr/<case>_<XXXX>.nii.gz``
  (one file per channel, XXXX its index in ``channel_names``), ``labelsTr/<case>.nii.gz`` and
  ``dataset.json``. nnU-Net needs consecutive labels, so the BraTS labels are written as nnU-Net's own
  BraTS conversion does (1 oedema, 2 necrosis, 3 enhancing) and trained as the three BraTS regions
  (``labels`` whole tumour (1, 2, 3), tumour core (2, 3), enhancing tumour (3), ``regions_class_order``
  (1, 2, 3)). Cases are named ``real_NNNN`` and ``synthetic_NNNN``.
* ``brats``: the BraTS 2021 layout, ``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz`` with
  the labels 1 / 2 / 4 on the 240 x 240 x 155 grid, which ``aldm data prepare brats2021`` reads back.
  Real cases are numbered from 00000, synthetic ones from :data:`SYNTHETIC_BRATS_START`.

Both write ``cases.csv``: every case, real or synthetic, with where it came from (the cache subject, or the
sample folder with its model, mask subject, guidance and seed). A case is on its native grid (the sample's
``native/`` files, or the real subject's grid and intensities from the cache); a sample written in model
space only is resampled to a 1 mm grid of the BraTS size centred on its volume, intensities (x + 1) / 2 with
background 0. The export is written into a temporary folder renamed at the end: no half-written dataset.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field

import numpy as np

from .artifacts.cache import PreparedCache
from .artifacts.samples import SampleSet
from .conditions import ENHANCING, NECROSIS, OEDEMA, SEG_FILE
from .data.geometry import to_native
from .data.masks import item_from_row
from .errors import AldmError
from .generate import sample_volumes
from .io.atomic import atomic_write_text
from .io.nifti import load_nifti, save_nifti
from .modalities import file_stem, parse_modalities

BRATS_GRID = (240, 240, 155)
BRATS_SUFFIX = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair"}  # BraTS 2021 file names
SYNTHETIC_BRATS_START = 50000  # BraTS 2021 ids stop at 01666: synthetic cases never collide with real ones
NNUNET_LABELS = {OEDEMA: 1, NECROSIS: 2, ENHANCING: 3}  # BraTS -> nnU-Net (consecutive) labels
NNUNET_DATASET = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")
FORMATS = ("nnunet", "brats")


@dataclass
class Case:
    """One exported case: its channels (modality -> (X, Y, Z) float32), BraTS label map (X, Y, Z) uint8 and
    affine on one grid, and what ``cases.csv`` says of it."""

    kind: str  # "real" or "synthetic"
    channels: dict
    labels: np.ndarray
    affine: np.ndarray
    info: dict = field(default_factory=dict)


def _brats_grid(model_affine: np.ndarray, size: int) -> np.ndarray:
    """The affine of a 1 mm grid of :data:`BRATS_GRID` whose centre is the model cube's centre (RAS axes)."""
    centre = np.asarray(model_affine)[:3] @ np.append(np.full(3, (size - 1) / 2.0), 1.0)
    affine = np.eye(4)
    affine[:3, 3] = centre - (np.asarray(BRATS_GRID) - 1) / 2.0
    return affine


def _resampled(image: np.ndarray, labels: np.ndarray, model_affine: np.ndarray, modalities) -> tuple:
    """(channels, labels, affine) of a model-space volume (C, S, S, S) in [-1, 1] on the BraTS-size grid."""
    affine = _brats_grid(model_affine, image.shape[-1])
    grid = to_native(image, model_affine, BRATS_GRID, affine, order=1, fill=-1.0)
    background = grid[0] <= -0.999
    grid = (grid + 1.0) / 2.0
    grid[:, background] = 0.0
    seg = to_native(labels[0].astype(np.float32), model_affine, BRATS_GRID, affine, order=0)
    return {m: grid[c] for c, m in enumerate(modalities)}, np.rint(seg).astype(np.uint8), affine


def synthetic_cases(folder: str, brats_grid: bool = False) -> list[Case]:
    """The samples of an ``aldm generate`` folder as cases (each checked against its checksums first); an
    AldmError naming a sample without a label map (``seg.nii.gz``). ``brats_grid``: cases not already on a
    240 x 240 x 155 grid are resampled onto one."""
    samples = SampleSet(folder).require()
    cases = []
    for record in samples.checked_records():
        modalities, where = record.channels, samples.sample_dir(record.sample)
        info = {"source": record.sample, "folder": os.path.abspath(folder), "mask_subject": record.mask_subject,
                "model": record.model, "guidance": record.guidance, "seed": record.seed, "space": "native"}
        native = samples.load_labels(record, "native")
        if native is not None and not (brats_grid and native.shape[1:] != BRATS_GRID):
            channels = {m: load_nifti(os.path.join(where, "native", f"{file_stem(m)}.nii.gz"), scaled=False)[0]
                        for m in modalities}
            affine = load_nifti(os.path.join(where, "native", f"{SEG_FILE}.nii.gz"), scaled=False)[1]
            cases.append(Case("synthetic", channels, native[0], affine, info))
            continue
        labels = samples.load_labels(record, "model")
        if labels is None:
            raise AldmError(f"{where}: no label map ({SEG_FILE}.nii.gz): generate from a cache or from label maps "
                            "to export training cases")
        image, _ = samples.load_volumes(record)
        affine = load_nifti(os.path.join(where, "model", f"{SEG_FILE}.nii.gz"), scaled=False)[1]
        cases.append(Case("synthetic", *_resampled(image, labels, affine, modalities), {**info, "space": "resampled"}))
    return cases


def real_cases(cache: str, subjects: list | None, brats_grid: bool = False) -> list[Case]:
    """Cached real subjects (all, or ``subjects``) as cases on their native grid and intensities (the same
    resampling as a generated sample's native files); ``brats_grid``: see :func:`synthetic_cases`."""
    prepared = PreparedCache(cache).require()
    rows = prepared.subject_rows(subjects) if subjects is not None else prepared.rows()
    cases = []
    for row in rows:
        data = prepared.load(row)
        item, image = item_from_row(cache, row, data=data), data["image"]
        info = {"source": row["subject"], "folder": os.path.abspath(cache), "mask_subject": row["subject"],
                "space": "native"}
        if brats_grid and tuple(item.native_shape) != BRATS_GRID:
            cases.append(Case("real", *_resampled(image, item.labels, item.model_affine, prepared.modalities),
                              {**info, "space": "resampled"}))
            continue
        native = sample_volumes(image, item, prepared.modalities, native=True)["native"]
        channels = {m: native[file_stem(m)][0] for m in prepared.modalities}
        cases.append(Case("real", channels, native[SEG_FILE][0], item.native_affine, info))
    return cases


def _modalities(cases: list[Case]) -> tuple:
    kinds = {tuple(c.channels) for c in cases}
    if len(kinds) != 1:
        raise AldmError(f"cases of different modalities ({', '.join('/'.join(k) for k in sorted(kinds))}); export "
                        "samples and a cache of the same modalities")
    return parse_modalities(list(kinds.pop()))


def _write_cases_csv(out: str, names: list[str], cases: list[Case]) -> None:
    columns = ["case", "kind", "source", "folder", "mask_subject", "model", "guidance", "seed", "space"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for name, case in zip(names, cases):
        writer.writerow({"case": name, "kind": case.kind, **{k: "" if case.info.get(k) is None else case.info[k]
                                                              for k in columns[2:]}})
    atomic_write_text(os.path.join(out, "cases.csv"), buf.getvalue())


def _write_nnunet(tmp: str, cases: list[Case], modalities: tuple, name: str) -> list[str]:
    os.makedirs(os.path.join(tmp, "imagesTr"))
    os.makedirs(os.path.join(tmp, "labelsTr"))
    counters, names = {"real": 0, "synthetic": 0}, []
    for case in cases:
        case_name = f"{case.kind}_{counters[case.kind]:04d}"
        counters[case.kind] += 1
        names.append(case_name)
        for index, modality in enumerate(modalities):
            save_nifti(os.path.join(tmp, "imagesTr", f"{case_name}_{index:04d}.nii.gz"), case.channels[modality],
                       case.affine, np.float32)
        labels = np.zeros_like(case.labels)
        for brats, nnunet in NNUNET_LABELS.items():
            labels[case.labels == brats] = nnunet
        save_nifti(os.path.join(tmp, "labelsTr", f"{case_name}.nii.gz"), labels, case.affine, np.uint8)
    dataset = {
        "channel_names": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing tumour": [3]},
        "regions_class_order": [1, 2, 3],
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": name,
        "description": f"aldm export: {counters['real']} real and {counters['synthetic']} synthetic cases "
                       "(cases.csv); labels 1 oedema, 2 necrosis, 3 enhancing tumour (BraTS 2, 1, 4)",
    }
    atomic_write_text(os.path.join(tmp, "dataset.json"), json.dumps(dataset, indent=2) + "\n")
    return names


def _write_brats(tmp: str, cases: list[Case], modalities: tuple) -> list[str]:
    counters, names = {"real": 0, "synthetic": SYNTHETIC_BRATS_START}, []
    for case in cases:
        case_name = f"BraTS2021_{counters[case.kind]:05d}"
        counters[case.kind] += 1
        names.append(case_name)
        folder = os.path.join(tmp, case_name)
        os.makedirs(folder)
        for modality in modalities:
            save_nifti(os.path.join(folder, f"{case_name}_{BRATS_SUFFIX[modality]}.nii.gz"), case.channels[modality],
                       case.affine, np.float32)
        save_nifti(os.path.join(folder, f"{case_name}_seg.nii.gz"), case.labels, case.affine, np.uint8)
    if counters["real"] > SYNTHETIC_BRATS_START:
        raise AldmError(f"more than {SYNTHETIC_BRATS_START} real cases; export fewer")
    return names


def export(fmt: str, out: str, synthetic: str | None = None, real: str | None = None,
           real_subjects: list | None = None, overwrite: bool = False) -> dict:
    """Write the cases of ``synthetic`` (a generate folder) and ``real`` (a prepared cache, ``real_subjects``
    or all) into ``out`` in format ``fmt`` (:data:`FORMATS`); returns {out, real, synthetic, cases_csv}."""
    if fmt not in FORMATS:
        raise AldmError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if synthetic is None and real is None:
        raise AldmError("nothing to export: give --synthetic and/or --real")
    out = os.path.abspath(out)
    if fmt == "nnunet" and not NNUNET_DATASET.match(os.path.basename(out)):
        raise AldmError(f"{out}: nnU-Net needs a dataset folder named Dataset<NNN>_<Name> (e.g. Dataset501_Glioma)")
    if os.path.exists(out) and os.listdir(out) and not overwrite:
        raise AldmError(f"{out}: not empty; pass --overwrite to replace it or choose another --out")
    brats_grid = fmt == "brats"
    cases = (real_cases(real, real_subjects, brats_grid) if real else []) + \
        (synthetic_cases(synthetic, brats_grid) if synthetic else [])
    if not cases:
        raise AldmError("nothing to export: no cases found")
    modalities = _modalities(cases)
    if fmt == "brats" and any(m not in BRATS_SUFFIX for m in modalities):
        raise AldmError(f"the BraTS layout has no file for {', '.join(m for m in modalities if m not in BRATS_SUFFIX)}")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(out)}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        names = _write_nnunet(tmp, cases, modalities, os.path.basename(out)) if fmt == "nnunet" \
            else _write_brats(tmp, cases, modalities)
        _write_cases_csv(tmp, names, cases)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return {"out": out, "real": sum(c.kind == "real" for c in cases),
            "synthetic": sum(c.kind == "synthetic" for c in cases), "cases_csv": os.path.join(out, "cases.csv")}
