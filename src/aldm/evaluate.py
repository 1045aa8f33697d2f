"""``aldm evaluate``: image-level fidelity of a synthetic set against a prepared real cache.

Pairs every synthetic sample with the real volume of its mask's subject (the paper's patient-wise
protocol), refuses to score samples whose mask comes from the model's few-shot training subjects
(they are not held out), and writes ``metrics.json`` and ``per_patient.csv``:
SSIM (2D per slice, the paper; 3D), FRD per modality inside the brain (radiomics, no downloaded
weights), FID (patient mean, the paper; pooled, the reference code) when the Inception weights
are available, MS-SSIM diversity of synthetic vs real volumes,
memorisation (nearest neighbours among the K training volumes vs held-out real volumes), with a
segmenter the mask adherence (per BraTS region when the samples carry their label maps), and for
labelled samples the region-contrast check (:mod:`aldm.metrics.region_contrast`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, replace

import numpy as np

from .artifacts.cache import PreparedCache
from .artifacts.run import Run
from .artifacts.samples import SampleSet
from .errors import AldmError
from .fidelity import Fidelity, MaskAdherence, RegionAdherence
from .io.atomic import atomic_write_text
from .metrics.similarity import memorisation, ms_ssim_diversity, ssim_2d_slices, ssim_3d
from .modalities import file_stems


def load_synthetic(folder: str) -> list[dict]:
    """Samples of an ``aldm generate`` folder: their record's fields + 'image' (C, S, S, S) float32 +
    'mask' (1, S, S, S) uint8, the mask the sample was generated from, + 'labels' (1, S, S, S) its BraTS
    label map (None when the sample has none)."""
    samples = SampleSet(folder)
    out = []
    for record in samples.checked_records():  # every file against its checksum first
        image, mask = samples.load_volumes(record)
        out.append({**record.as_dict(), "modalities": list(record.channels), "image": image, "mask": mask,
                    "labels": samples.load_labels(record)})
    return out


def _mask_adherence(folder: str, paired: list[dict], cached: dict, device: str, reference: dict) -> MaskAdherence:
    """Mask Dice of the samples against their own generation masks, the shuffled-mask floor, and the
    ceiling: the same segmenter on the real volumes of the mask subjects (which it must never have
    been trained on; computed once per segmenter and subject set in ``reference``). With a BraTS segmenter
    and samples that carry their label maps, the same per region (``regions``: WT, TC, ET)."""
    from .evaluators.segmenter import load_segmenter, mask_adherence

    model, config, info = load_segmenter(folder, device)
    seen = sorted(set(info["subjects"]) & set(cached))
    if seen:
        raise AldmError(f"{folder}: the segmenter was trained on {len(seen)} of the evaluated mask subjects "
                        f"({', '.join(seen[:3])}...); its ceiling would not be held out")
    labelled = all(s["labels"] is not None for s in paired)
    regions = config.regions if labelled else ("WT",)
    synthetic = mask_adherence(model, config, np.stack([s["image"] for s in paired]),
                               np.stack([s["labels"] if labelled else s["mask"] for s in paired]), regions=regions)
    subjects = sorted(cached)
    key = ("mask_adherence", os.path.abspath(folder), tuple(subjects), regions)
    if key not in reference:
        reference[key] = mask_adherence(model, config, np.stack([cached[p]["image"] for p in subjects]),
                                        np.stack([cached[p]["labels"] for p in subjects]), regions=regions)
    real = reference[key]
    return MaskAdherence(
        mask_dice_mean=synthetic["mask_dice_mean"], mask_dice_std=synthetic["mask_dice_std"],
        shuffled_dice_mean=synthetic.get("shuffled_dice_mean"),
        real_dice_mean=real["mask_dice_mean"], real_dice_std=real["mask_dice_std"],
        n_samples=synthetic["n"], n_real=real["n"], segmenter=os.path.abspath(folder),
        per_sample=dict(zip([s["sample"] for s in paired], synthetic["mask_dice"])),
        regions={name: RegionAdherence(dice_mean=r["dice_mean"], dice_std=r["dice_std"],
                                       shuffled_dice_mean=r.get("shuffled_dice_mean"),
                                       real_dice_mean=real["regions"][name]["dice_mean"],
                                       real_dice_std=real["regions"][name]["dice_std"])
                 for name, r in synthetic["regions"].items()})


def _frd_channels(cache: PreparedCache, samples: list[dict], synthetic_dir: str, frd_modalities) -> tuple:
    """The file stems FRD scores (default: all of the cache's), after checking that the samples hold the
    cache's modalities; an AldmError naming the folders otherwise."""
    channels = {tuple(s["modalities"]) for s in samples}
    if channels and channels != {cache.modalities}:
        raise AldmError(f"{synthetic_dir}: samples of {', '.join('/'.join(c) for c in sorted(channels))} cannot be "
                        f"scored against {cache.path}, which holds {'/'.join(cache.modalities)}")
    stems = file_stems(cache.modalities)
    chosen = stems if frd_modalities is None else tuple(frd_modalities)
    unknown = sorted(set(chosen) - set(stems))
    if unknown:
        raise AldmError(f"FRD modality {', '.join(unknown)} is not one of {cache.path}'s ({', '.join(stems)})")
    return chosen


def sharpness_figures(pairs: list, modalities) -> dict:
    """{"sharpness": per-modality mean 3D gradient magnitude in the head, synthetic over real (1.0 = as sharp),
    "spectrum": the radially averaged power spectra of both sets per modality} (:mod:`aldm.metrics.sharpness`)
    of ``pairs`` [(synthetic (C, S, S, S), its real counterpart, the real brain mask)]: each synthetic volume
    is measured inside its counterpart's head; the real set is each real volume once."""
    from .metrics.sharpness import head_mask, mean_spectrum, sharpness_ratio

    heads = [head_mask(r, b) for _, r, b in pairs]
    synthetic = [p[0] for p in pairs]
    real = {id(r): (r, h) for (_, r, _), h in zip(pairs, heads)}
    real_volumes, real_heads = [v for v, _ in real.values()], [h for _, h in real.values()]
    freq, synth_power = mean_spectrum(synthetic)
    _, real_power = mean_spectrum(real_volumes)
    return {"sharpness": sharpness_ratio(synthetic, real_volumes, modalities, heads, real_heads),
            "spectrum": {"frequency": [round(float(f), 5) for f in freq],
                         "synthetic": {m: [float(v) for v in p] for m, p in zip(modalities, synth_power)},
                         "real": {m: [float(v) for v in p] for m, p in zip(modalities, real_power)}}}


@dataclass(frozen=True)
class EvaluationSettings:
    """How a synthetic set is scored: ``inception`` (the FID weights file; None: FID is skipped with its
    reason), ``device``, ``frd_modalities`` (file stems; None: every modality of the cache; (): no FRD),
    ``diversity_pairs`` (MS-SSIM pairs at most) and ``segmenter`` (a folder of
    :mod:`aldm.evaluators.segmenter`: adds the mask adherence)."""

    inception: str | None = None
    device: str = "cpu"
    frd_modalities: tuple | None = None
    diversity_pairs: int = 100
    segmenter: str | None = None


def evaluate(real_cache: str, synthetic_dir: str, out_dir: str, settings: EvaluationSettings | None = None,
             log=None, reference: dict | None = None) -> Fidelity:
    """Score a generate folder against the real volumes of its mask subjects in ``real_cache``: SSIM
    (2D slices, 3D) per patient, FRD, FID (when the Inception weights are present), MS-SSIM
    diversity and memorisation, sharpness, the region contrasts of labelled samples, and with a
    segmenter the mask adherence (:class:`EvaluationSettings`); samples from few-shot training masks are
    excluded. Writes ``out_dir/metrics.json`` (:meth:`Fidelity.to_dict`) and ``per_patient.csv``; returns
    the :class:`~aldm.fidelity.Fidelity`.

    ``reference``: a dict the caller keeps across evaluations (an experiment's cells): what depends on
    the real volumes alone — their MS-SSIM diversity, the segmenter's ceiling on them, their FRD
    features — is computed on first use and reused, keyed by the real subjects (same numbers)."""
    settings = settings or EvaluationSettings()
    log = log or (lambda line: print(line, file=sys.stderr))
    reference = {} if reference is None else reference
    cache = PreparedCache(real_cache).require()
    rows = cache.by_subject()
    samples, paired, cached, split, excluded = _paired_samples(cache, rows, synthetic_dir, log)
    frd_modalities = _frd_channels(cache, samples, synthetic_dir, settings.frd_modalities)
    real = {p: data["image"] for p, data in cached.items()}
    per_patient = _similarity_per_patient(paired, real)
    result = {
        "n_samples": len(samples), "n_patients": len(per_patient), "excluded_few_shot_samples": len(excluded),
        "ssim_2d_patient_mean": float(np.mean([np.mean(p["ssim_2d"]) for p in per_patient.values()])),
        "ssim_3d_patient_mean": float(np.mean([np.mean(p["ssim_3d"]) for p in per_patient.values()])),
    }
    result.update(_diversity_and_copies(samples, real, cache, rows, split, settings.diversity_pairs, reference))
    result.update(sharpness_figures([(s["image"], real[s["mask_subject"]], cached[s["mask_subject"]]["brain"])
                                     for s in paired], cache.modalities))
    adherence = (_mask_adherence(settings.segmenter, paired, cached, settings.device, reference)
                 if settings.segmenter else None)
    if all(s["labels"] is not None for s in paired):
        from .metrics.region_contrast import contrast_check

        result["region_contrast"] = contrast_check(
            [(s["image"], s["labels"], cached[s["mask_subject"]]["brain"]) for s in paired],
            [(data["image"], data["labels"], data["brain"]) for data in cached.values()], cache.modalities)
    if frd_modalities:
        result.update(_frd(samples, cached, cache, frd_modalities, reference, log))
    result.update(_fid(paired, real, per_patient, settings, log))
    fidelity = replace(Fidelity.from_dict(result), mask_adherence=adherence)
    _write(out_dir, fidelity.to_dict(), per_patient)
    return fidelity


def _paired_samples(cache: PreparedCache, rows: dict, synthetic_dir: str, log) -> tuple:
    """(the samples scored, those whose mask subject has a real volume in ``cache``, {subject: its cached
    arrays}, the generating run's split or None, the samples left out) of a generate folder, ``rows`` the cache's
    manifest rows by subject: samples made from
    the masks of the run's few-shot training subjects are not held out, and are left out with a warning."""
    samples = load_synthetic(synthetic_dir)
    split = Run(samples[0]["model"]).split() if samples and samples[0]["model"] else None
    excluded = []
    if split:
        shots = set(split["k_shot"])
        excluded = [s["sample"] for s in samples if s["mask_subject"] in shots]
        if excluded:
            log(f"aldm: warning: {len(excluded)} sample(s) use masks of few-shot training subjects; not scored")
        samples = [s for s in samples if s["mask_subject"] not in shots]
    paired = [s for s in samples if s["mask_subject"] in rows]
    if not paired:
        raise AldmError(f"{synthetic_dir}: no sample's mask subject is in {cache.path}; nothing to pair")
    cached = {s["mask_subject"]: cache.load(rows[s["mask_subject"]]) for s in paired}
    return samples, paired, cached, split, excluded


def _similarity_per_patient(paired: list[dict], real: dict) -> dict:
    """{patient: {"ssim_2d": [...], "ssim_3d": [...]}} of each sample against its patient's real volume."""
    per_patient: dict = {}
    for s in paired:
        p = per_patient.setdefault(s["mask_subject"], {"ssim_2d": [], "ssim_3d": []})
        p["ssim_2d"].append(ssim_2d_slices(real[s["mask_subject"]], s["image"]))
        p["ssim_3d"].append(ssim_3d(real[s["mask_subject"]], s["image"]))
    return per_patient


def _diversity_and_copies(samples: list[dict], real: dict, cache: PreparedCache, rows: dict, split: dict | None,
                          pairs: int, reference: dict) -> dict:
    """MS-SSIM diversity of the synthetic and the real volumes (the real ones once per subject set, in
    ``reference``) and, with the K training volumes at hand, memorisation."""
    out = {}
    synth_vols, real_vols = [s["image"] for s in samples], list(real.values())
    if len(synth_vols) >= 2 and len(real_vols) >= 2:
        out["ms_ssim_diversity_synthetic"] = ms_ssim_diversity(synth_vols, max_pairs=pairs)
        key = ("ms_ssim_diversity", tuple(real), pairs)
        if key not in reference:
            reference[key] = ms_ssim_diversity(real_vols, max_pairs=pairs)
        out["ms_ssim_diversity_real"] = reference[key]
    if split and split["k_shot"] and all(k in rows for k in split["k_shot"]):
        training = [cache.load(rows[k])["image"] for k in split["k_shot"]]
        brain = np.mean([v[0] > -0.999 for v in training + real_vols], axis=0) > 0.5
        out["memorisation"] = memorisation(synth_vols, training, real_vols, brain)
    return out


def _frd(samples: list[dict], cached: dict, cache: PreparedCache, modalities: tuple, reference: dict, log) -> dict:
    """FRD per modality inside the brain (:mod:`aldm.metrics.frd`); when it cannot run, why."""
    from .metrics.frd import frd_scores

    brains = {p: data["brain"][0] for p, data in cached.items()}
    try:
        return frd_scores([data["image"] for data in cached.values()], [s["image"] for s in samples],
                          [brains[p] for p in cached],
                          [brains.get(s["mask_subject"], next(iter(brains.values()))) for s in samples],
                          modalities=modalities, modality_names=file_stems(cache.modalities), reference=reference)
    except AldmError as exc:
        log(f"aldm: FRD skipped: {exc}")
        return {"frd_unavailable": str(exc)}


def _fid(paired: list[dict], real: dict, per_patient: dict, settings: EvaluationSettings, log) -> dict:
    """FID per patient (into ``per_patient``), its patient mean and pooled value, or why it was skipped (no
    Inception weights: FID's are not downloaded at run time)."""
    try:
        from .metrics.fid import fid_scores, slice_features
        from .metrics.inception import load_fid_inception

        net = load_fid_inception(settings.inception, settings.device)
    except AldmError as exc:
        log(f"aldm: FID skipped: {exc}")
        return {"fid": None, "fid_unavailable": str(exc)}
    real_f = {p: slice_features(v, net) for p, v in real.items()}
    synth_f: dict = {}
    for s in paired:
        synth_f.setdefault(s["mask_subject"], []).append(slice_features(s["image"], net))
    scores = fid_scores(real_f, {p: np.concatenate(v) for p, v in synth_f.items()})
    for patient, value in scores.pop("fid_per_patient").items():
        per_patient[patient]["fid"] = value
    return scores


def _write(out_dir: str, result: dict, per_patient: dict) -> None:
    """``metrics.json`` and ``per_patient.csv`` in ``out_dir``, atomically."""
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(result, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["patient", "n_samples", "ssim_2d", "ssim_3d", "fid"])
    for patient, p in sorted(per_patient.items()):
        writer.writerow([patient, len(p["ssim_2d"]), round(float(np.mean(p["ssim_2d"])), 6),
                         round(float(np.mean(p["ssim_3d"])), 6), p.get("fid", "")])
    atomic_write_text(os.path.join(out_dir, "per_patient.csv"), buf.getvalue())
