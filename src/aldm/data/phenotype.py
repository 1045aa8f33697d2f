"""Tumour phenotypes and scanner profiles of the two phantom domains.

The biology follows the public descriptions of the real cohorts (docs/data.md; Calabrese et al. 2022
for UCSF-PDGM, Bakas et al. 2021 for UPENN-GBM; Suh et al. 2019 for IDH imaging signs):

* source (UPENN-GBM-like): IDH-wildtype WHO grade 4 glioblastoma — large, necrotic core,
  ring enhancement, wide vasogenic oedema, anywhere supratentorial;
* target (UCSF-PDGM-like): WHO grade 2 / 3 / 4 in ~11 / 9 / 80 %, IDH-mutant in ~83 / 67 / 8 %
  of them (~20 % overall). IDH-mutant tumours are smaller, mostly frontal, mostly
  non-enhancing with little oedema, and non-codeleted ones show the T2-FLAIR mismatch sign
  (homogeneously T2-bright core, FLAIR-dark centre with a bright rim).

So the labels written to the metadata CSVs are learnable from the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOURCE = "source"
TARGET = "target"


@dataclass(frozen=True)
class Phenotype:
    """What one phantom tumour looks like, drawn per subject."""

    domain: str
    grade: int
    idh_mutant: bool
    codeleted: bool
    radius_mm: float  # radius of the solid tumour (necrosis + enhancing/non-enhancing core)
    oedema_factor: float  # oedema radius / core radius
    necrosis_fraction: float  # relative radius of the necrotic centre (0 = none)
    enhancing: bool  # ring enhancement on T1-contrast
    mismatch: bool  # T2-FLAIR mismatch sign
    frontal: bool  # centre drawn from the frontal lobe
    mass_effect: float  # fraction of the core radius by which nearby tissue is pushed


def sample_phenotype(domain: str, rng: np.random.Generator) -> Phenotype:
    """Draw a biologically plausible phenotype for a subject of ``domain``."""
    if domain == SOURCE:
        return Phenotype(
            domain=domain,
            grade=4,
            idh_mutant=False,
            codeleted=False,
            radius_mm=float(rng.uniform(17.0, 28.0)),
            oedema_factor=float(rng.uniform(1.6, 2.3)),
            necrosis_fraction=float(rng.uniform(0.55, 0.8)),
            enhancing=True,
            mismatch=False,
            frontal=bool(rng.random() < 0.35),
            mass_effect=float(rng.uniform(0.2, 0.35)),
        )
    grade = int(rng.choice([2, 3, 4], p=[0.11, 0.09, 0.80]))
    mutant = bool(rng.random() < {2: 0.83, 3: 0.67, 4: 0.08}[grade])
    if mutant:
        codeleted = bool(rng.random() < 0.3)
        return Phenotype(
            domain=domain,
            grade=grade,
            idh_mutant=True,
            codeleted=codeleted,
            radius_mm=float(rng.uniform(11.0, 20.0)),
            oedema_factor=float(rng.uniform(1.1, 1.35)),
            necrosis_fraction=0.0 if grade < 4 else float(rng.uniform(0.2, 0.35)),
            enhancing=grade == 4 or bool(rng.random() < 0.1),
            mismatch=(not codeleted) and bool(rng.random() < 0.8),
            frontal=bool(rng.random() < 0.8),
            mass_effect=float(rng.uniform(0.05, 0.12)),
        )
    high = grade == 4
    return Phenotype(
        domain=domain,
        grade=grade,
        idh_mutant=False,
        codeleted=False,
        radius_mm=float(rng.uniform(15.0, 26.0) if high else rng.uniform(12.0, 20.0)),
        oedema_factor=float(rng.uniform(1.5, 2.1) if high else rng.uniform(1.2, 1.6)),
        necrosis_fraction=float(rng.uniform(0.5, 0.75)) if high else 0.0,
        enhancing=high or bool(rng.random() < 0.5),
        mismatch=False,
        frontal=bool(rng.random() < 0.3),
        mass_effect=float(rng.uniform(0.15, 0.3) if high else rng.uniform(0.08, 0.15)),
    )


# Relative intensities per tissue class and modality (arbitrary units, ~1 = brightest tissue).
# CSF dark on T1 and FLAIR, bright on T2; WM brighter than GM on T1, darker on T2/FLAIR.
TISSUE_CONTRAST = {
    #          CSF   GM    WM    necrosis enhancing non-enh  oedema
    "T1": (0.25, 0.60, 0.85, 0.22, 0.55, 0.45, 0.50),
    "T1c": (0.27, 0.62, 0.86, 0.24, 1.25, 0.47, 0.52),
    "T2": (1.00, 0.55, 0.38, 0.95, 0.65, 0.85, 0.80),
    "FLAIR": (0.12, 0.60, 0.45, 0.55, 0.75, 0.80, 0.95),
}
TISSUES = ("csf", "gm", "wm", "necrosis", "enhancing", "nonenhancing", "oedema")


@dataclass(frozen=True)
class ScannerProfile:
    """Per-domain acquisition differences, so that source and target differ in image statistics.

    ``gamma``: contrast curve per modality (intensity ** gamma); ``noise``: Rician noise sigma relative
    to the brightest tissue; ``slice_blur``: Gaussian sigma (voxels) along the slice axis, the
    signature of 2D thick-slice acquisitions; ``bias``: amplitude of the smooth multiplicative bias
    field; ``full_scale``: the stored intensity of a relative intensity of 1.
    """

    gamma: dict
    noise: float
    slice_blur: dict
    bias: float
    full_scale: float


SCANNERS = {
    # UPENN-GBM: multi-scanner 1.5T/3T, mostly 2D axial T2/FLAIR with thick slices.
    SOURCE: ScannerProfile(
        gamma={"T1": 1.0, "T1c": 1.0, "T2": 1.0, "FLAIR": 1.0},
        noise=0.035,
        slice_blur={"T1": 0.4, "T1c": 0.4, "T2": 1.0, "FLAIR": 1.3},
        bias=0.15,
        full_scale=1000.0,
    ),
    # UCSF-PDGM: one 3T GE scanner, 3D T1/T2/FLAIR: sharper, less noise, different contrast curve.
    TARGET: ScannerProfile(
        gamma={"T1": 1.35, "T1c": 1.3, "T2": 0.8, "FLAIR": 1.2},
        noise=0.015,
        slice_blur={"T1": 0.0, "T1c": 0.0, "T2": 0.0, "FLAIR": 0.0},
        bias=0.07,
        full_scale=2500.0,
    ),
}
