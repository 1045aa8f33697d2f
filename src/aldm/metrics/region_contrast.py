"""Region contrast: does each tumour sub-region look on each modality as it does in real scans?

For a volume (C, S, S, S) in [-1, 1], its BraTS label map and brain mask, the contrast of region r on
modality m is mean(x_m inside label r) - mean(x_m in normal-appearing brain: the brain minus the whole
tumour), in the volume's normalised units. The radiological signs a reader expects (and the BraTS
definition of enhancing tumour) are the checks: oedema bright on FLAIR, necrosis dark on T1, enhancing
tumour bright on T1c (:data:`EXPECTED`, those whose modality the volumes hold). A synthetic set passes a
check when its mean contrast has the expected sign; the real volumes' mean contrast is reported beside
it (on the phantoms and on real scans it has that sign too; on a cohort where it does not, the check
says so rather than passing), and the synthetic one as a fraction of it (``relative_to_real``: a sign
check alone passes a faint contrast).
"""

from __future__ import annotations

import numpy as np

from ..conditions import ENHANCING, LABEL_NAMES, NECROSIS, OEDEMA

#: (label, modality, expected sign of its contrast against normal brain)
EXPECTED = ((OEDEMA, "FLAIR", 1), (NECROSIS, "T1", -1), (ENHANCING, "T1c", 1))


def region_contrasts(image: np.ndarray, labels: np.ndarray, brain: np.ndarray, modalities) -> dict:
    """{region name: {modality: contrast}} of one volume (C, S, S, S) with its label map and brain mask
    (each (1, S, S, S) or (S, S, S)); a region absent from the label map (or no normal brain left) is left out."""
    labels = np.asarray(labels).reshape(image.shape[1:])
    normal = (np.asarray(brain).reshape(image.shape[1:]) > 0) & (labels == 0)
    if not normal.any():
        return {}
    out = {}
    for label, name in LABEL_NAMES.items():
        inside = labels == label
        if inside.any():
            out[name] = {m: float(image[c][inside].mean() - image[c][normal].mean()) for c, m in enumerate(modalities)}
    return out


def _mean_contrast(items: list[dict], region: str, modality: str) -> tuple[float | None, int]:
    values = [c[region][modality] for c in items if region in c]
    return (float(np.mean(values)) if values else None), len(values)


def contrast_check(synthetic: list[tuple], real: list[tuple], modalities) -> dict:
    """The check on ``synthetic`` and ``real`` lists of (image, labels, brain): per expected (region, modality)
    the mean contrast of each set, how many volumes hold the region, and whether the synthetic mean has the
    expected sign; ``right_signs`` / ``checks`` count them. Also every region x modality mean (``table``)."""
    modalities = tuple(modalities)
    synth = [region_contrasts(*item, modalities) for item in synthetic]
    reals = [region_contrasts(*item, modalities) for item in real]
    checks = []
    for label, modality, sign in EXPECTED:
        if modality not in modalities:
            continue
        region = LABEL_NAMES[label]
        s_mean, s_n = _mean_contrast(synth, region, modality)
        r_mean, r_n = _mean_contrast(reals, region, modality)
        checks.append({"region": region, "modality": modality, "expected_sign": sign, "synthetic": s_mean,
                       "real": r_mean, "n_synthetic": s_n, "n_real": r_n,
                       "right_sign": None if s_mean is None else bool(np.sign(s_mean) == sign),
                       # the sign alone passes a contrast of +0.004 against the real 0.97: say how strong it is
                       "relative_to_real": None if s_mean is None or not r_mean else float(s_mean / r_mean)})
    table = {}
    for region in LABEL_NAMES.values():
        for modality in modalities:
            s_mean, _ = _mean_contrast(synth, region, modality)
            r_mean, _ = _mean_contrast(reals, region, modality)
            table[f"{region}/{modality}"] = {"synthetic": s_mean, "real": r_mean}
    scored = [c for c in checks if c["right_sign"] is not None]
    return {"checks": checks, "right_signs": sum(c["right_sign"] for c in scored), "scored": len(scored),
            "table": table}
