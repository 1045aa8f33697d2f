"""``aldm experiment segmentation``: do synthetic tumours help a segmenter trained on few real patients?

Runs on the same config, split and generator runs as ``aldm experiment table1`` (training whatever
is missing), so the held-out protocol is Table 1's: test patients drawn first, generators trained
on the K few-shot patients only, patient-grouped CV folds over the non-few-shot patients. Steps,
each resumable (a finished segmenter's scores are never recomputed):

1. per generator (ALDM at K = max(K) and guidance s, each baseline at K = max(K)): N_max synthetic
   volumes from the few-shot patients' masks (paper Appendix A: own masks, then relocated ones); and for
   ``aldm-edit`` N_max edited scans: the few-shot patients' real scans, each with another few-shot patient's
   tumour transplanted by the same ALDM run (:mod:`aldm.editing.cohort`);
2. per protocol, seed (and fold, for the ceiling) — :mod:`aldm.evaluators.segmentation_protocols` — a segmenter
   (:mod:`aldm.evaluators.segmenter`) trained on its set after the leak check, scored per test patient
   (Dice, HD95) into ``OUT/segmentation/results/<job>.json``;
3. the table (``segmentation.csv`` / ``.md``), the augmentation figure (Dice against N per generator,
   with the K-real baseline and the all-real ceiling) and the report's segmentation section.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

import numpy as np

from ..data.masks import MaskSource
from ..editing.cohort import edited_cohort
from ..errors import AldmError
from ..evaluate import load_synthetic
from ..evaluators.segmentation_protocols import (
    PAIRED_CAPTION,
    Job,
    SegmentationSettings,
    check_no_leak,
    paired_differences,
    paired_rows,
    plan_jobs,
    score_volumes,
    scored_subjects,
    summarise,
    training_items,
)
from ..evaluators.segmenter import BRATS, WHOLE_TUMOUR, SegmenterConfig, region_targets, segment, train_segmenter
from ..generate import GenerationRequest, GenerationRuntime, generate
from ..io.atomic import atomic_write_text
from ..io.lock import exclusive_writer
from ..models.families import is_diffusion, title
from ..pipeline import load_pipeline
from .common import ExperimentConfig, generation_settings, log, make_splits, real_items, train_all
from .table1 import write_table1_report

FOLDER = "segmentation"
EDITS = "aldm-edit"  # the few-shot patients' scans with each other's tumours transplanted (aldm.editing.cohort)
# "Dice" / "HD95": the whole tumour's; the TC and ET columns when the experiment is in a regions condition
TABLE_COLUMNS = ["Training set", "Generator", "N synthetic", "Dice", "Dice std", "HD95", "HD95 std",
                 "Dice TC", "Dice TC std", "Dice ET", "Dice ET std", "Empty predictions", "Segmenters"]


def generator_label(generator: str | None, guidance: float) -> str:
    """How a generator is named in the table and figure."""
    if generator is None:
        return "-"
    if generator == EDITS:
        return f"ALDM edits of the K scans (s={guidance:g})"
    return f"ALDM (s={guidance:g})" if generator == "aldm" else title(generator)


def _synthetic_sets(cfg: ExperimentConfig, settings: SegmentationSettings, runs: dict, shots: list[str],
                    n_max: int, guidance: float, progress: bool) -> dict:
    """{generator: samples (index rows + image + mask) in generation order}, generated where missing."""
    out = {}
    k_max = max(cfg.k)
    for g in settings.generators:
        run = runs[f"aldm_k{k_max}"] if g in ("aldm", EDITS) else runs[g]
        folder = os.path.join(cfg.out, FOLDER, "samples", g)
        if g == EDITS:
            log(f"{generator_label(g, guidance)}: {n_max} edited scans of the {len(shots)} few-shot patients",
                "segmentation")
            edited_cohort(load_pipeline(run), cfg.target_cache, shots, folder, n_max,
                          generation_settings(cfg, guidance, cfg.seed + 2000))
            out[g] = sorted(load_synthetic(folder), key=lambda r: int(r["index"]))[:n_max]
            continue
        log(f"{generator_label(g, guidance)}: {n_max} synthetic volumes from the {len(shots)} few-shot masks",
            "segmentation")
        generate(GenerationRequest(run, folder, n_max, MaskSource("appendix", cfg.target_cache), shots,
                                   generation_settings(cfg, guidance if is_diffusion(g) else None, cfg.seed + 2000),
                                   native=False, runtime=GenerationRuntime(progress=progress)))
        samples = sorted(load_synthetic(folder), key=lambda r: int(r["index"]))
        out[g] = [s for s in samples if int(s["index"]) < n_max]
    return out


def _run_job(job: Job, settings: SegmentationSettings, real: dict, shots: list[str], synthetic: dict,
             folds: list[dict], progress: bool, regions: tuple = WHOLE_TUMOUR) -> dict:
    """Train one segmenter of ``regions`` (after the leak check) and score it on its test patients: per
    patient the whole tumour's Dice / HD95 and, for a BraTS segmenter, each region's (``regions``)."""
    tested = scored_subjects(job, folds)
    train = training_items(job, real, shots, synthetic, folds)
    check_no_leak(train, set(tested), set(shots))
    config = SegmenterConfig(init_filters=settings.width, steps=settings.steps, batch_size=settings.batch_size,
                             crop=settings.crop, seed=job.seed, in_channels=train[0]["image"].shape[0],
                             regions=regions)
    brats = regions != WHOLE_TUMOUR
    missing = [t["name"] for t in train if brats and t["labels"] is None]
    if missing:
        raise AldmError(f"{missing[0]}: no label map (seg.nii.gz) to train a BraTS-region segmenter on")
    start = time.perf_counter()
    model = train_segmenter(np.stack([t["image"] for t in train]),
                            np.stack([t["labels"] if brats else t["mask"] for t in train]), config, progress=progress)
    pred = segment(model, np.stack([real[s]["image"] for s in tested]), config)
    targets = region_targets(np.stack([real[s]["labels"] if brats else real[s]["mask"] for s in tested]), regions)
    scores = {name: score_volumes(pred[:, i:i + 1], targets[:, i:i + 1]) for i, name in enumerate(regions)}
    dice, hd = scores["WT"]

    def entry(d, h):
        return {"dice": float(d), "hd95": None if np.isnan(h) else float(h)}

    per_patient = {s: {**entry(dice[j], hd[j]), "empty": bool(pred[j, 0].sum() == 0),
                       **({"regions": {name: entry(scores[name][0][j], scores[name][1][j]) for name in regions}}
                          if brats else {})}
                   for j, s in enumerate(tested)}
    return {"protocol": job.protocol, "generator": job.generator, "n": job.n, "seed": job.seed, "fold": job.fold,
            "train": sorted(t["name"] for t in train), "n_train": len(train), "per_patient": per_patient,
            "train_s": round(time.perf_counter() - start, 1)}


def write_table(rows: list[dict], guidance: float, out_dir: str, paired: list[dict] = ()) -> tuple[str, str]:
    """``segmentation.csv`` and ``segmentation.md`` in ``out_dir`` (the md also with the ``paired`` differences
    against K real, :func:`~aldm.evaluators.segmentation_protocols.paired_differences`); returns their paths."""
    def fmt(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    def region(r, name, key):
        return (r.get("regions") or {}).get(name, {}).get(key)

    table = [[r["protocol"], generator_label(r["generator"], guidance), r["n"], r["dice_mean"], r["dice_std"],
              r["hd95_mean"], r["hd95_std"], region(r, "TC", "dice_mean"), region(r, "TC", "dice_std"),
              region(r, "ET", "dice_mean"), region(r, "ET", "dice_std"), r["misses"], r["runs"]] for r in rows]
    csv_path, md_path = os.path.join(out_dir, "segmentation.csv"), os.path.join(out_dir, "segmentation.md")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    writer.writerows(table)
    atomic_write_text(csv_path, buf.getvalue())
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table]
    lines += paired_table(paired)
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def paired_table(paired: list[dict]) -> list[str]:
    """Markdown lines of the paired differences against K real (:func:`paired_rows`); none without them."""
    header, rows = paired_rows(paired)
    if not rows:
        return []
    return ["", PAIRED_CAPTION, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def augmentation_figure(rows: list[dict], k: int, guidance: float, path: str) -> None:
    """Dice against N per generator (error bars: std over seeds and folds), the K-real baseline at N = 0
    and as a line, the all-real ceiling as a line, TSTR as hollow markers at N_max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["protocol"], r["generator"], r["n"]): r for r in rows}
    base, ceiling = by.get(("k-real", None, 0)), next((r for r in rows if r["protocol"] == "all-real"), None)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    generators = sorted({r["generator"] for r in rows if r["generator"]}, key=lambda g: (g != "aldm", g))
    for i, g in enumerate(generators):
        points = sorted((r["n"], r["dice_mean"], r["dice_std"]) for r in rows
                        if r["protocol"] == "k-real+synthetic" and r["generator"] == g)
        if base:
            points = [(0, base["dice_mean"], base["dice_std"])] + points
        n, m, s = zip(*points)
        line = ax.errorbar(n, m, yerr=s, marker="o", capsize=3, label=generator_label(g, guidance),
                           linewidth=2.5 if g == "aldm" else 1.5)
        tstr = next((r for r in rows if r["protocol"] == "synthetic-only" and r["generator"] == g), None)
        if tstr:
            ax.errorbar([tstr["n"] + 0.4 * (i - len(generators) / 2)], [tstr["dice_mean"]], yerr=[tstr["dice_std"]],
                        marker="o", mfc="none", color=line[0].get_color(), linestyle="none", capsize=3)
    if base:
        ax.axhline(base["dice_mean"], color="grey", linestyle="--", label=f"{k} real patients")
    if ceiling:
        ax.axhline(ceiling["dice_mean"], color="black", linestyle=":", label="all real patients (ceiling)")
    ax.set_xlabel("N synthetic volumes added to the K real (hollow: synthetic only)")
    ax.set_ylabel("whole-tumour Dice on held-out patients")
    ax.set_title("Downstream segmentation: augmentation curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_segmentation(cfg: ExperimentConfig, progress: bool = True) -> str:
    """Run (or resume) the segmentation experiment; returns the path of its Markdown table (the HTML
    report is rewritten with a segmentation section when Table 1 has finished). One process at a time per
    experiment folder (:mod:`aldm.io.lock`)."""
    with exclusive_writer(cfg.out, "experiment"):
        return _run_segmentation(cfg, progress)


# what every finished segmenter's result depends on: a rerun that asks otherwise may not reuse them (seeds,
# multipliers, generators and folds only add or leave out segmenters)
RESULT_SETTINGS = ("steps", "width", "crop", "batch_size", "guidance", "k")


def check_same_training(path: str, recorded: dict) -> None:
    """An AldmError naming ``path`` when the results beside it were trained with other :data:`RESULT_SETTINGS`."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        before = json.load(fh)
    differs = [f"{key} {before.get(key)!r} -> {recorded[key]!r}" for key in RESULT_SETTINGS
               if key in before and before[key] != recorded[key]]
    if differs:
        raise AldmError(f"{path}: the segmenters there were trained otherwise ({'; '.join(differs)}); move "
                        f"{os.path.dirname(path)} aside or choose another out to train them anew")


def _run_segmentation(cfg: ExperimentConfig, progress: bool) -> str:
    settings = SegmentationSettings.from_dict(cfg.segmentation, f"{cfg.out}: segmentation")
    settings.generators = settings.generators or ["aldm", EDITS] + list(cfg.baselines)
    unknown = [g for g in settings.generators if g not in ("aldm", EDITS) and g not in cfg.baselines]
    if unknown:
        raise AldmError(f"{cfg.out}: segmentation generator(s) {', '.join(unknown)} are not in the experiment's "
                        f"baselines {cfg.baselines}")
    guidance = settings.guidance if settings.guidance is not None else max(cfg.guidance)
    splits = make_splits(cfg)
    runs = train_all(cfg, splits, progress)
    k = max(cfg.k)
    split = splits[k]
    shots = list(split["k_shot"])
    folds = [f for f in split["cv"] if f["repeat"] == 0]
    folds = folds[:settings.folds] if settings.folds else folds
    out_dir = os.path.join(cfg.out, FOLDER)
    recorded = {**settings.as_dict(), "guidance": guidance, "k": k}
    check_same_training(os.path.join(out_dir, "settings.json"), recorded)
    os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "settings.json"), json.dumps(recorded, indent=2) + "\n")
    n_max = max(settings.multipliers) * k
    synthetic = _synthetic_sets(cfg, settings, runs, shots, n_max, guidance, progress)
    subjects = sorted(set(shots) | {s for f in folds for s in f["train"] + f["test"]})
    real = {i["subject"]: i for i in real_items(cfg.target_cache, subjects)}
    regions = BRATS if cfg.condition != "mask" else WHOLE_TUMOUR  # a regions run: the three BraTS regions
    results = []
    jobs = plan_jobs(settings, settings.generators, k, len(folds), cfg.seed)
    for i, job in enumerate(jobs, 1):
        path = os.path.join(out_dir, "results", f"{job.key}.json")
        if not os.path.exists(path):
            log(f"segmenter {i}/{len(jobs)}: {job.key}", "segmentation")
            atomic_write_text(path, json.dumps(_run_job(job, settings, real, shots, synthetic, folds, progress,
                                                        regions), indent=2) + "\n")
        with open(path, encoding="utf-8") as fh:
            results.append(json.load(fh))
    rows = summarise(results, folds)
    paired = [{**row, "label": generator_label(row["generator"], guidance)}
              for row in paired_differences(results, folds)]
    atomic_write_text(os.path.join(out_dir, "summary.json"),
                      json.dumps({"k": k, "guidance": guidance, "folds": len(folds), "rows": rows,
                                  "paired": paired}, indent=2) + "\n")
    _, md_path = write_table(rows, guidance, out_dir, paired)
    os.makedirs(os.path.join(cfg.out, "figures"), exist_ok=True)
    augmentation_figure(rows, k, guidance, os.path.join(cfg.out, "figures", "segmentation_augmentation.png"))
    write_table1_report(cfg, splits)
    return md_path
