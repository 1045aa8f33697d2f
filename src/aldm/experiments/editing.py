"""``aldm experiment edit``: how well aldm edits real scans, on a model's held-out patients.

(a) healthy fill — a region voided in healthy tissue (another patient's tumour shape, placed away from this
    tumour) filled again, scored against the scan itself; and, where healthy twins are given, the tumour
    removed, scored against the twin. Fills compared: the tissue's mean, the VAE's reconstruction of the
    voided scan, whole-volume regeneration under the same label map, and the edit; the BraTS inpainting
    metrics inside the region (:mod:`aldm.metrics.inpainting`), channels averaged.
(b) insertion — another held-out patient's label map transplanted in place of this one's tumour (and into the
    healthy twins); (c) the tumour moved, grown and shrunk. Measured for (b) and (c): per-region Dice of a
    segmenter (when given) against the new label map beside its Dice on the real scans (the ceiling), the
    region contrasts' signs, whole-volume sharpness over the input's, and the seam: gradient magnitude on R's
    boundary shell over the same shell of the input. Where resized twins are given (``aldm data synth
    --resized-twins 0.7``: each patient with its tumour shrunk, the same anatomy and noise), the shrunk tumour is
    also scored against its truth: the inpainting metrics inside R, and the segmenter's Dice on the twins — the
    ceiling at the same tumour size.

Writes ``OUT/edit.json`` (every number) and ``OUT/edit.md`` (the tables); :func:`edit_figure` draws one patient
edited several ways.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..artifacts.run import Run
from ..conditions import scaled_labels
from ..data.masks import relocate_mask
from ..data.synth import RESIZE_RECORD
from ..diffusion.settings import GenerationSettings
from ..editing.editor import EditSettings, edit_volume
from ..editing.operations import moved, placed_inside
from ..editing.region import boundary_shell, change_region, distance_to, voxel_spacing
from ..editing.subjects import EditSubject, from_cache, model_prep_config, twin_of
from ..errors import AldmError
from ..io.atomic import atomic_write_text
from ..metrics.inpainting import model_space_scores
from ..metrics.region_contrast import contrast_check
from ..metrics.sharpness import gradient_magnitude, gradient_sharpness, head_mask
from ..pipeline import load_pipeline
from .report import plt, slice_panel  # pyplot as report set it up (the Agg backend)

FIGURE = "edit-figure.png"
FILLS = ("tissue mean", "VAE of the voided scan", "whole-volume regeneration", "edit")
OPERATIONS = ("transplant", "move", "grow", "shrink")
SHRINK, GROW = 0.7, 1.3  # the factors the experiment shrinks and grows each tumour by


@dataclass(frozen=True)
class EditExperiment:
    """What ``aldm experiment edit`` runs: the ALDM ``model`` run (its cache and held-out split), the ``out``
    folder, ``subjects`` held-out patients at most, the sampler's ``settings``, the ``edit`` settings, the
    ``twins`` folder (``aldm data synth --healthy-twins``), the ``resized_twins`` folder (``aldm data synth
    --resized-twins 0.7``) and a ``segmenter`` folder, each optional."""

    model: str
    out: str
    subjects: int = 8
    settings: GenerationSettings = GenerationSettings()
    edit: EditSettings = EditSettings()
    twins: str | None = None
    segmenter: str | None = None
    resized_twins: str | None = None


def run_edit_experiment(exp: EditExperiment, log=print) -> dict:
    """Run (a)-(c) of the module docstring and write ``edit.json`` and ``edit.md``; returns the results."""
    run = Run(exp.model).require_generator()
    split = run.split()
    if run.kind != "aldm" or split is None or len(split["test"]) < 2:
        raise AldmError(f"{exp.model}: needs a few-shot ALDM run with at least two held-out subjects")
    pipe = load_pipeline(exp.model, precision=exp.settings.precision)
    settings = pipe.validate(exp.settings)
    names = split["test"][:exp.subjects]
    subjects = [from_cache(run.data, name, run.modalities) for name in names]
    resized = _shrunk_twins_root(exp.resized_twins, log)
    start = time.perf_counter()
    fills, removals, edits = [], [], []
    for i, subject in enumerate(subjects):
        seed = settings.seed + i
        donor = subjects[(i + 1) % len(subjects)]
        fill = _healthy_fill(pipe, subject, donor, settings, exp.edit, seed)
        if fill is None:
            log(f"aldm experiment edit: {subject.name}: no healthy tissue holds a void of another tumour's shape; "
                "left out of the healthy fill")
        else:
            fills.append(fill)
        twin = _twin(exp.twins, subject, run)
        if twin is not None:
            removals.append(_removal(pipe, subject, twin.image, settings, exp.edit, seed))
        ours = _label_edits(pipe, subject, donor, twin.image if twin else None, settings, exp.edit, seed)
        shrunk = _twin(resized, subject, run)
        if shrunk is not None:
            next(e for e in ours if e["operation"] == "shrink")["truth"] = shrunk
        edits += ours
        log(f"aldm experiment edit: {subject.name} ({i + 1}/{len(subjects)}, {time.perf_counter() - start:.0f} s)")
    results = {"model": os.path.abspath(exp.model), "subjects": names, "settings": asdict(settings),
               "edit": asdict(exp.edit), "healthy_fill": _summary(fills), "removal": _summary(removals),
               "edits": _edit_summary(edits, subjects, run.modalities, exp.segmenter), "resized_twins": resized,
               "seconds": round(time.perf_counter() - start, 1)}
    os.makedirs(exp.out, exist_ok=True)
    first = [e for e in edits if e["subject"] == subjects[0].name and e["operation"] != "insert into twin"]
    edit_figure(subjects[0], first, run.modalities, os.path.join(exp.out, FIGURE))
    atomic_write_text(os.path.join(exp.out, "edit.json"), json.dumps(results, indent=2) + "\n")
    atomic_write_text(os.path.join(exp.out, "edit.md"), edit_tables(results))
    return results


def _twin(twins: str | None, subject: EditSubject, run: Run) -> EditSubject | None:
    """The subject's twin in its model space, when the ``twins`` folder holds one."""
    folder = os.path.join(twins, subject.name) if twins else None
    return twin_of(folder, subject, model_prep_config(run)) if folder and os.path.isdir(folder) else None


def _shrunk_twins_root(folder: str | None, log) -> str | None:
    """``folder`` when its twins are shrunk by the experiment's :data:`SHRINK` (its ``resize.json``), else None
    (said in the log when a folder was given); an AldmError when the folder has no record."""
    if not folder:
        return None
    record = os.path.join(folder, RESIZE_RECORD)
    try:
        with open(record, encoding="utf-8") as fh:
            factor = float(json.load(fh)["factor"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AldmError(f"{record}: not a resized-twins record (aldm data synth --resized-twins F writes it): "
                        f"{exc}") from None
    if abs(factor - SHRINK) > 1e-9:
        log(f"aldm experiment edit: {folder}: twins shrunk x{factor:g}, the experiment shrinks x{SHRINK:g}; not "
            "used")
        return None
    return folder


def _fills(pipe, subject: EditSubject, changed: np.ndarray, new: np.ndarray, settings, edit, seed) -> dict:
    """{fill name: (C, S, S, S) volume} for the voxels ``changed``, the result drawn under label map ``new``."""
    normal = (subject.brain > 0) & ~changed & (subject.labels == 0)
    mean_fill = subject.image.copy()
    for c in range(mean_fill.shape[0]):
        mean_fill[c][changed] = subject.image[c][normal].mean()
    labels = torch.from_numpy(new[None, None].astype(np.float32))
    vae = pipe.decode(pipe.encode(mean_fill[None]), labels)[0][0].numpy()
    brain = torch.from_numpy(subject.brain[None, None].astype(np.float32))
    whole = pipe(labels, settings, generator=[seed], brain=brain)
    edited = edit_volume(pipe, replace(subject, labels=new), new, settings, edit, seed, changed=changed)
    return dict(zip(FILLS, (mean_fill, vae, whole["image"][0].numpy(), edited.image)))


def _scores(volumes: dict, truth: np.ndarray, mask: np.ndarray) -> dict:
    """{fill: {ssim, psnr, mse}} inside ``mask``, each the mean over channels."""
    out = {}
    for name, volume in volumes.items():
        per_channel = [model_space_scores(volume[c], truth[c], mask) for c in range(truth.shape[0])]
        out[name] = {k: float(np.mean([p[k] for p in per_channel])) for k in ("ssim", "psnr", "mse")}
    return out


def _healthy_fill(pipe, subject: EditSubject, donor: EditSubject, settings, edit, seed) -> dict | None:
    """(a): ``donor``'s tumour shape voided in ``subject``'s healthy tissue (away from its tumour, scaled down
    when it does not fit) and filled; None when no healthy tissue holds it."""
    spacing = voxel_spacing(subject.model_affine)
    tumour_zone = change_region(distance_to(subject.labels > 0, spacing), np.ones_like(subject.brain),
                                2 * edit.margin_mm)
    healthy = (subject.brain > 0) & ~tumour_zone
    void = _void(donor.labels > 0, healthy, seed)
    if void is None:
        return None
    volumes = _fills(pipe, subject, void, subject.labels, settings, edit, seed)
    return {"subject": subject.name, "voxels": int(void.sum()), "scores": _scores(volumes, subject.image, void)}


def _void(shape: np.ndarray, healthy: np.ndarray, seed: int) -> np.ndarray | None:
    """``shape`` (S, S, S) bool placed inside ``healthy`` tissue — scaled down (0.7, then 0.5) when it does not fit
    whole — or None when even the smallest does not."""
    for factor in (1.0, 0.7, 0.5):
        mask = shape if factor == 1.0 else scaled_labels(shape.astype(np.uint8), factor) > 0
        try:
            placed = relocate_mask(mask.astype(np.uint8), healthy.astype(np.uint8), np.random.default_rng(seed)) > 0
        except AldmError:
            continue
        if (healthy[placed]).mean() >= 0.95:
            return placed & healthy
    return None


def _removal(pipe, subject: EditSubject, twin: np.ndarray, settings, edit, seed) -> dict:
    """(a): the tumour removed, scored inside it against the healthy twin."""
    tumour = subject.labels > 0
    volumes = _fills(pipe, subject, tumour, np.zeros_like(subject.labels), settings, edit, seed)
    return {"subject": subject.name, "voxels": int(tumour.sum()), "scores": _scores(volumes, twin, tumour)}


def _label_edits(pipe, subject: EditSubject, donor: EditSubject, twin, settings, edit, seed) -> list[dict]:
    """(b) and (c): the edited volumes of ``subject`` (and of its twin, when given), with what they are measured
    against."""
    affine = subject.model_affine
    asks = {"transplant": placed_inside(donor.labels, subject.brain, seed),
            "grow": np.where(subject.brain > 0, scaled_labels(subject.labels, GROW), 0).astype(np.uint8),
            "shrink": scaled_labels(subject.labels, SHRINK), "remove": np.zeros_like(subject.labels)}
    for shift in ((10, 0, 0), (-10, 0, 0), (0, 10, 0), (0, -10, 0)):
        try:
            labels, _ = moved(subject.labels, shift, affine)
        except AldmError:
            continue
        if (subject.brain[labels > 0] > 0).mean() > 0.99:
            asks["move"] = labels
            break
    out = []
    for name, new in asks.items():
        edited = edit_volume(pipe, subject, new, settings, edit, seed)
        out.append({"subject": subject.name, "operation": name, "image": edited.image, "labels": new,
                    "region": edited.region, "input": subject.image, "brain": subject.brain})
    if twin is not None:
        host = replace(subject, image=twin, labels=np.zeros_like(subject.labels))
        new = placed_inside(donor.labels, subject.brain, seed)
        edited = edit_volume(pipe, host, new, settings, edit, seed)
        out.append({"subject": subject.name, "operation": "insert into twin", "image": edited.image, "labels": new,
                    "region": edited.region, "input": twin, "brain": subject.brain})
    return out


def _seam(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """Mean gradient magnitude on R's boundary shell in ``image`` over the same in ``reference`` (channels
    averaged): 1 when the seam is no sharper an edge than the input had there."""
    shell = boundary_shell(region)
    ratios = [gradient_magnitude(image[c])[shell].mean() / gradient_magnitude(reference[c])[shell].mean()
              for c in range(image.shape[0])]
    return float(np.mean(ratios))


def _edit_summary(edits: list[dict], subjects: list[EditSubject], modalities, segmenter: str | None) -> dict:
    """Per operation: seam, sharpness over the input's, region-contrast signs and (with a segmenter) Dice."""
    out = {}
    segmented = _Segmented(segmenter, subjects) if segmenter else None
    for operation in dict.fromkeys(e["operation"] for e in edits):
        chosen = [e for e in edits if e["operation"] == operation]
        heads = [head_mask(e["input"], e["brain"]) for e in chosen]
        sharp = [gradient_sharpness(e["image"], h).mean() / gradient_sharpness(e["input"], h).mean()
                 for e, h in zip(chosen, heads)]
        contrasts = contrast_check([(e["image"], e["labels"], e["brain"]) for e in chosen],
                                   [(s.image, s.labels, s.brain) for s in subjects], modalities)
        out[operation] = {"n": len(chosen), "seam": _mean_std([_seam(e["image"], e["input"], e["region"])
                                                                for e in chosen]),
                          "sharpness_over_input": _mean_std(sharp),
                          "contrast_signs": f"{contrasts['right_signs']}/{contrasts['scored']}",
                          "contrasts": contrasts["checks"]}
        if segmented is not None:
            out[operation].update(segmented(chosen))
        truths = [e for e in chosen if "truth" in e]
        if truths:  # the same patients' twins with the tumour at this size: the truth of the edit
            scores = [_scores({"edit": e["image"], "input": e["input"]}, e["truth"].image, e["region"] > 0)
                      for e in truths]
            out[operation]["against_truth"] = {"n": len(truths), **{k: _mean_std([sc["edit"][k] for sc in scores])
                                                                    for k in ("ssim", "psnr", "mse")},
                                               "input": {k: _mean_std([sc["input"][k] for sc in scores])
                                                         for k in ("ssim", "psnr", "mse")}}
            if segmented is not None:
                out[operation]["against_truth"]["dice_truth"] = segmented.truth([e["truth"] for e in truths])
    return out


class _Segmented:
    """What a segmenter finds in edited volumes, beside what it finds in the real ``subjects`` (loaded and
    segmented once)."""

    def __init__(self, segmenter: str, subjects: list[EditSubject]):
        from ..evaluators.segmenter import load_segmenter, mask_adherence

        self.model, self.config, _ = load_segmenter(segmenter)
        self.adherence = mask_adherence
        self.real = mask_adherence(self.model, self.config, np.stack([s.image for s in subjects]),
                                   np.stack([s.labels[None] for s in subjects]))

    def __call__(self, chosen: list[dict]) -> dict:
        """Per-region Dice against the edits' label maps beside the Dice on the real scans (``dice``), and the
        whole-tumour voxels marked, edited and real (``predicted_voxels``: what a removal is judged by, its
        target being empty)."""
        edited = self.adherence(self.model, self.config, np.stack([e["image"] for e in chosen]),
                                np.stack([e["labels"][None] for e in chosen]))
        return {"dice": {region: {"edited": v["dice_mean"], "real": self.real["regions"][region]["dice_mean"]}
                         for region, v in edited["regions"].items()},
                "predicted_voxels": {"edited": float(np.mean(edited["predicted_voxels"])),
                                     "real": float(np.mean(self.real["predicted_voxels"]))}}

    def truth(self, twins: list[EditSubject]) -> dict:
        """{region: Dice} on ``twins`` against their own label maps: the ceiling at their tumours' size."""
        found = self.adherence(self.model, self.config, np.stack([t.image for t in twins]),
                               np.stack([t.labels[None] for t in twins]))
        return {region: v["dice_mean"] for region, v in found["regions"].items()}


def _mean_std(values) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))} if len(values) else {}


def _summary(items: list[dict]) -> dict:
    """Per fill: the mean and std over subjects of each score; and the items themselves."""
    if not items:
        return {}
    table = {fill: {k: _mean_std([it["scores"][fill][k] for it in items]) for k in ("ssim", "psnr", "mse")}
             for fill in FILLS}
    return {"n": len(items), "fills": table, "subjects": items}


def edit_tables(results: dict) -> str:
    """The Markdown tables of ``edit.json``."""
    lines = ["# Scan edits on held-out patients", "",
             f"model `{results['model']}`, {len(results['subjects'])} held-out subjects, "
             f"{results['settings']['sampler']} {results['settings']['steps']} steps, s = "
             f"{results['settings']['guidance']}, margin {results['edit']['margin_mm']} mm, "
             f"resampling {results['edit']['jumps']}; {results['seconds']} s", ""]
    for key, title in (("healthy_fill", "Healthy fill (voided healthy tissue, against the scan)"),
                       ("removal", "Tumour removal (against the healthy twin)")):
        part = results[key]
        if not part:
            continue
        lines += [f"## {title}, n = {part['n']}", "", "| fill | SSIM | PSNR (dB) | MSE |", "|---|---|---|---|"]
        for fill, scores in part["fills"].items():
            lines.append(f"| {fill} | " + " | ".join(f"{scores[k]['mean']:.3f} ± {scores[k]['std']:.3f}"
                                                        for k in ("ssim", "psnr", "mse")) + " |")
        lines.append("")
    lines += ["## Label-map edits", "", "| edit | n | seam | sharpness / input | contrast signs | Dice WT / TC / ET "
              "(edited; real) |", "|---|---|---|---|---|---|"]
    for name, part in results["edits"].items():
        dice, marked = part.get("dice"), part.get("predicted_voxels")
        dice_text = " / ".join(f"{v['edited']:.2f}; {v['real']:.2f}" for v in dice.values()) if dice else "–"
        if name == "remove" and marked:  # an empty target: Dice says only whether anything was marked
            dice_text = f"no tumour left to score: {marked['edited']:.0f} voxels marked (real: {marked['real']:.0f})"
        lines.append(f"| {name} | {part['n']} | {part['seam']['mean']:.2f} ± {part['seam']['std']:.2f} | "
                     f"{part['sharpness_over_input']['mean']:.2f} | {part['contrast_signs']} | {dice_text} |")
    lines += _truth_table(results["edits"])
    return "\n".join(lines) + "\n"


def _truth_table(edits: dict) -> list[str]:
    """Markdown lines: each edit scored against its truth (the resized twins), when it was."""
    scored = {name: part["against_truth"] for name, part in edits.items() if "against_truth" in part}
    if not scored:
        return []
    lines = ["", "## Against the truth: the same patients with the tumour at the edit's size (resized twins)", "",
             "| edit | n | SSIM in R | PSNR in R (dB) | MSE in R | Dice WT / TC / ET (edited; same-size real) |",
             "|---|---|---|---|---|---|"]
    rows = [(name, truth, truth) for name, truth in scored.items()] + \
        [(f"({name}: the unedited input)", truth["input"], truth) for name, truth in scored.items()]
    for name, scores, truth in rows:
        dice = edits.get(name, {}).get("dice")
        dice_text = " / ".join(f"{dice[r]['edited']:.2f}; {truth['dice_truth'][r]:.2f}" for r in dice) \
            if dice and "dice_truth" in truth else "–"
        lines.append(f"| {name} | {truth['n']} | " + " | ".join(f"{scores[k]['mean']:.3f} ± {scores[k]['std']:.3f}"
                                                                 for k in ("ssim", "psnr", "mse")) +
                     f" | {dice_text} |")
    return lines


def edit_figure(subject: EditSubject, edits: list[dict], modalities, path: str) -> None:
    """One patient edited several ways: a row per modality, the input then each edit (an axial plane through the
    tumours), the label map in red and the region of change in yellow."""
    union = (subject.labels > 0) | np.any([e["labels"] > 0 for e in edits], axis=0)
    z = int(np.argwhere(union).mean(0)[2]) if union.any() else subject.labels.shape[2] // 2
    columns = [("input", subject.image, subject.labels, None)] + [
        (e["operation"], e["image"], e["labels"], e["region"]) for e in edits]
    fig, axes = plt.subplots(len(modalities), len(columns), figsize=(1.9 * len(columns), 1.9 * len(modalities)),
                             squeeze=False)
    for j, (name, image, labels, region) in enumerate(columns):
        outlines = [(None if m is None else m[:, :, z] > 0, colour)
                    for m, colour in ((labels, "red"), (region, "gold"))]
        for i, modality in enumerate(modalities):
            slice_panel(axes[i, j], image[i][:, :, z], outlines, name if i == 0 else None,
                        modality if j == 0 else None)
    fig.suptitle(f"{subject.name}: real anatomy outside the yellow region, the edit inside it", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
