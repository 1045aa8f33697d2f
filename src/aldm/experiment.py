"""``aldm experiment table1``: the paper's whole comparison (§4, Table 1, Figures 2-5) in one command.

Steps, each resumable (a finished stage or cell is never recomputed):

1. one patient-level split of the target cache: held-out test patients + K = max(K) few-shot
   patients; smaller K are stratified subsets of the same shots, so every cell is tested on the
   same held-out patients; 3 x 5-fold CV folds over the non-few-shot patients;
2. ALDM: VAE -> source LDM -> few-shot LDM per K; baselines: source -> few-shot at K = max(K)
   with the same split; ALDM few-shot training in chunks, with a fixed-seed sample after each
   chunk (Figure 4);
3. per cell (model, K, s): generate one volume per held-out test patient from its own mask;
4. per cell: fidelity (:func:`aldm.eval.evaluate.evaluate`) and the downstream classifier — TRTS
   (the paper) on classifiers trained once per fold on real data, and augmentation (K real +
   synthetic vs K real alone), both over the CV folds; the mask-swap check (same seed, two held-out
   masks; added to cells computed before it existed);
5. Table 1 (Markdown + CSV), Figures 2-5, the mask-swap figure and learning curves (PNG) and an HTML
   report (:mod:`aldm.eval.report`). The downstream segmentation experiment, on the same runs, is
   :mod:`aldm.experiment_segmentation`.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from .config import get_profile
from .data.cache import load_cached, read_manifest
from .data.splits import MAX_TEST_PATIENTS, few_shot_split, save_split, with_cv_folds
from .diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
from .errors import AldmError
from .eval.classifier import ClassifierConfig, cross_validate
from .eval.evaluate import evaluate, load_synthetic
from .eval.segmentation import SegmentationSettings
from .generate import generate
from .io.atomic import atomic_write_text
from .io.lock import exclusive_writer
from .modalities import MODALITY_FILES
from .models.baselines.generator import BASELINE_NAMES
from .pipeline import load_pipeline
from .runs import WEIGHTS, Run
from .train.baselines import train_baseline
from .train.stages import ProbeSubjects, train_ldm, train_vae, with_probe_every


@dataclass
class ExperimentConfig:
    """The JSON config of ``aldm experiment table1``: caches, output folder, profile, K values,
    guidance scales, baselines, test size, sampler, CV folds, classifier and evaluation settings."""
    source_cache: str
    target_cache: str
    out: str
    profile: str = "small"
    k: list = field(default_factory=lambda: [10, 16])
    guidance: list = field(default_factory=lambda: [0.3, 0.5, 1.0, 3.0])
    baselines: list = field(default_factory=lambda: ["cgan", "cgan3m", "vaegan"])
    n_test: int = MAX_TEST_PATIENTS
    seed: int = 0
    sampler: str = DEFAULT_SAMPLER
    sampler_steps: int = DEFAULT_STEPS
    folds: int = 5
    repeats: int = 3
    classifier_task: str = "tumour-slice"
    classifier_epochs: int = 6
    classifier_width: int = 16
    inception: str | None = None
    frd_modalities: list = field(default_factory=lambda: list(MODALITY_FILES))
    diversity_pairs: int = 100
    figure4_snapshots: int = 3
    probe_every: int = 0  # held-out learning probes of the ALDM stages every N steps (probe.csv; 0: none)
    segmenter_steps: int = 300  # the mask-adherence segmenter (0: no mask Dice)
    segmenter_width: int = 8
    mask_swap_pairs: int = 3  # same seed, two held-out masks: where the difference lies (0: skip)
    steps: dict = field(default_factory=dict)  # optional overrides: vae, ldm, fewshot, baseline, baseline_fewshot
    segmentation: dict = field(default_factory=dict)  # aldm experiment segmentation (eval.segmentation settings)

    @classmethod
    def load(cls, path: str) -> ExperimentConfig:
        """The config in ``path`` (an AldmError naming the file when missing or invalid)."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            config = cls(**data)
        except FileNotFoundError:
            raise AldmError(f"{path}: experiment config not found") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise AldmError(f"{path}: not a valid experiment config ({exc})") from exc
        SegmentationSettings.from_dict(config.segmentation, f"{path}: \"segmentation\"")  # fail early, name the file
        return config


def cells(cfg: ExperimentConfig) -> list[dict]:
    """Table 1's rows: the baselines at K = max(K), ALDM at K = max(K) for every s, ALDM at smaller K with
    the largest s (as the paper's ablations)."""
    k_max, s_max = max(cfg.k), max(cfg.guidance)
    rows = [{"name": f"{BASELINE_NAMES[b]}", "model": b, "k": k_max, "s": None} for b in cfg.baselines]
    rows += [{"name": f"ALDM (K={k}, s={s_max:g})", "model": "aldm", "k": k, "s": s_max}
             for k in sorted(cfg.k) if k != k_max]
    rows += [{"name": f"ALDM (K={k_max}, s={s:g})", "model": "aldm", "k": k_max, "s": s} for s in sorted(cfg.guidance)]
    for row in rows:
        row["id"] = row["name"].lower().replace(" ", "").replace("(", "_").replace(")", "").replace(",", "_") \
            .replace("=", "").replace(".", "p")
    return rows


def _done(run: str) -> bool:
    return Run(run).finished


def _resume(run: str) -> bool:
    return Run(run).exists


def _log(text: str) -> None:
    print(f"[table1 {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def make_splits(cfg: ExperimentConfig) -> dict:
    """{k: split} with a shared test set and nested few-shot subjects; CV folds over non-shot patients."""
    path = os.path.join(cfg.out, "splits.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            return {int(k): v for k, v in json.load(fh).items()}
    rows = [r for r in read_manifest(cfg.target_cache) if r["domain"] == "target"]
    if not rows:
        raise AldmError(f"{cfg.target_cache}: no target-domain subjects")
    k_max = max(cfg.k)
    patients = len({r["patient"] for r in rows})
    n_test = min(cfg.n_test, patients - k_max)
    if n_test < cfg.folds:
        raise AldmError(f"{cfg.target_cache}: {patients} target patients leave {n_test} for testing after K={k_max}; "
                        f"need at least {cfg.folds}")
    base = with_cv_folds(rows, few_shot_split(rows, k_max, n_test, seed=cfg.seed), cfg.folds, cfg.repeats, cfg.seed)
    splits = {k_max: base}
    shot_rows = [r for r in rows if r["subject"] in set(base["k_shot"])]
    for k in cfg.k:
        if k != k_max:
            sub = few_shot_split(shot_rows, k, 0, seed=cfg.seed)
            splits[k] = {**base, "k_shot": sub["k_shot"], "k": k,
                         "pool": sorted(set(base["pool"]) | (set(base["k_shot"]) - set(sub["k_shot"])))}
    os.makedirs(cfg.out, exist_ok=True)
    save_split(path, {str(k): v for k, v in splits.items()})
    for k, split in splits.items():
        save_split(os.path.join(cfg.out, f"split_k{k}.json"), split)
    return splits


def train_all(cfg: ExperimentConfig, splits: dict, progress: bool = True) -> dict:
    """Every training run of the experiment; returns {model key: run dir}. Figure-4 snapshots included."""
    runs_dir = os.path.join(cfg.out, "runs")
    profile = get_profile(cfg.profile)
    probe = None
    if cfg.probe_every:
        with_probe_every(profile, cfg.probe_every)
        probe = ProbeSubjects(cfg.target_cache, splits[max(cfg.k)]["test"][:2])  # held out from every stage
    steps = cfg.steps or {}
    runs = {"vae": os.path.join(runs_dir, "vae"), "ldm": os.path.join(runs_dir, "ldm")}
    if not _done(runs["vae"]):
        _log("stage 1: VAE")
        train_vae(cfg.source_cache, runs["vae"], copy.deepcopy(profile), steps=steps.get("vae"), seed=cfg.seed,
                  resume=_resume(runs["vae"]), progress=progress, probe=probe)
    if not _done(runs["ldm"]):
        _log("stages 2-3: source LDM")
        train_ldm(cfg.source_cache, runs["ldm"], copy.deepcopy(profile), vae_run=runs["vae"],
                  steps=steps.get("ldm"), seed=cfg.seed, resume=_resume(runs["ldm"]), progress=progress, probe=probe)
    total = steps.get("fewshot") or profile.train_fewshot.steps
    for k in sorted(cfg.k):
        run = runs[f"aldm_k{k}"] = os.path.join(runs_dir, f"aldm_k{k}")
        split_path = os.path.join(cfg.out, f"split_k{k}.json")
        if _done(run) and (k != max(cfg.k) or os.path.exists(os.path.join(cfg.out, "figure4", f"k{k}_step{total}"))):
            continue
        _log(f"stage 4: few-shot LDM, K={k}")
        chunks = max(1, cfg.figure4_snapshots) if k == max(cfg.k) else 1
        for i in range(1, chunks + 1):
            target = max(1, round(total * i / chunks))
            snap = os.path.join(cfg.out, "figure4", f"k{k}_step{target}")
            if os.path.exists(snap):
                continue
            # LDM losses do not depend on the total length, so chunked training equals one run
            train_ldm(cfg.target_cache, run, copy.deepcopy(profile), init_run=runs["ldm"], split_path=split_path,
                      steps=target, seed=cfg.seed, resume=_resume(run), progress=progress, probe=probe)
            if k == max(cfg.k):
                generate(run, snap, n=1, masks=f"cache:{cfg.target_cache}", subjects=splits[k]["test"][:1],
                         guidance_scale=max(cfg.guidance), steps=cfg.sampler_steps, sampler=cfg.sampler,
                         seed=cfg.seed, progress=False, native=False)
            if Run(run).finished and i < chunks:
                os.remove(Run(run).file(WEIGHTS))  # not finished yet: the next chunk continues
    k_max = max(cfg.k)
    for b in cfg.baselines:
        src, few = os.path.join(runs_dir, b), os.path.join(runs_dir, f"{b}_k{k_max}")
        runs[b] = few
        if not _done(src):
            _log(f"baseline {b}: source training")
            train_baseline(b, cfg.source_cache, src, copy.deepcopy(profile), steps=steps.get("baseline"),
                           seed=cfg.seed, resume=_resume(src), progress=progress)
        if not _done(few):
            _log(f"baseline {b}: few-shot K={k_max}")
            train_baseline(b, cfg.target_cache, few, copy.deepcopy(profile), init_run=src,
                           split_path=os.path.join(cfg.out, f"split_k{k_max}.json"),
                           steps=steps.get("baseline_fewshot"), seed=cfg.seed, resume=_resume(few), progress=progress)
    return runs


def real_items(cache: str, subjects: list) -> list[dict]:
    """Cached target volumes of ``subjects``: dicts with subject, image (3, S, S, S), mask (1, S, S, S),
    idh and grade."""
    rows = {r["subject"]: r for r in read_manifest(cache)}
    items = []
    for s in subjects:
        data = load_cached(cache, rows[s])
        items.append({"subject": s, "image": data["image"], "mask": data["mask"], "idh": rows[s]["idh"] or None,
                      "grade": rows[s]["grade"] or None})
    return items


def _classifier_scores(cfg: ExperimentConfig, split: dict, real: dict, synthetic: list[dict],
                       fold_models: dict) -> dict:
    """TRTS and augmentation of one cell over the CV folds, by the tested protocol
    (:func:`aldm.eval.classifier.cross_validate`, leak checks included); classifiers trained on real
    data are shared between cells through ``fold_models``."""
    ccfg = _classifier_config(cfg)
    items = list(real.values())
    return {protocol: cross_validate(items, synthetic, split["cv"], protocol, ccfg, split["k_shot"], fold_models)
            for protocol in ("trts", "augment")}


def _classifier_config(cfg: ExperimentConfig) -> ClassifierConfig:
    return ClassifierConfig(task=cfg.classifier_task, epochs=cfg.classifier_epochs, width=cfg.classifier_width,
                            seed=cfg.seed)


def _train_segmenter(cfg: ExperimentConfig, test: set, progress: bool) -> str | None:
    """The mask-adherence segmenter (once): trained on the source cache and the target subjects outside
    the held-out test set; its folder, or None when ``segmenter_steps`` is 0."""
    from .eval.segmenter import INFO, SegmenterConfig, fit_on_caches

    if not cfg.segmenter_steps:
        return None
    folder = os.path.join(cfg.out, "segmenter")
    if not os.path.exists(os.path.join(folder, INFO)):
        _log("mask-adherence segmenter on real training volumes")
        caches = [cfg.source_cache] + ([cfg.target_cache] if cfg.target_cache != cfg.source_cache else [])
        config = SegmenterConfig(init_filters=cfg.segmenter_width, steps=cfg.segmenter_steps, seed=cfg.seed)
        fit_on_caches(caches, folder, config, held_out=test, progress=progress)
    return folder


def _mask_swap(cfg: ExperimentConfig, pipe, cell: dict, test_masks: list) -> dict:
    """The mask-swap check of one cell (:mod:`aldm.eval.mask_swap`) on consecutive held-out masks; the
    first pair's volumes go to ``eval/<cell>/mask_swap.npz`` for the report's figure."""
    import numpy as np

    from .eval.mask_swap import mask_swap

    _log(f"cell {cell['name']}: mask-swap check")
    out = mask_swap(pipe, test_masks, seed=cfg.seed + 3000,
                    guidance_scale=cell["s"] if cell["s"] is not None else 1.0, steps=cfg.sampler_steps,
                    sampler=cfg.sampler, pairs=cfg.mask_swap_pairs)
    example = out.pop("example", None)
    if example is not None:
        folder = os.path.join(cfg.out, "eval", cell["id"])
        os.makedirs(folder, exist_ok=True)
        np.savez_compressed(os.path.join(folder, "mask_swap.npz"), **example)
    return out


def run_table1(cfg: ExperimentConfig, progress: bool = True) -> str:
    """Run (or resume) the whole experiment; returns the path of the HTML report. One process at a time
    per experiment folder (:mod:`aldm.io.lock`)."""
    with exclusive_writer(cfg.out, "experiment"):
        return _run_table1(cfg, progress)


def _run_table1(cfg: ExperimentConfig, progress: bool) -> str:
    os.makedirs(cfg.out, exist_ok=True)
    atomic_write_text(os.path.join(cfg.out, "config.json"), json.dumps(asdict(cfg), indent=2) + "\n")
    splits = make_splits(cfg)
    runs = train_all(cfg, splits, progress)
    k_max = max(cfg.k)
    test = splits[k_max]["test"]
    cv_subjects = {s for f in splits[k_max]["cv"] for s in f["train"] + f["test"]}
    all_subjects = sorted(cv_subjects | set(splits[k_max]["k_shot"]))
    real = {i["subject"]: i for i in real_items(cfg.target_cache, all_subjects)}
    fold_models: dict = {}
    segmenter = _train_segmenter(cfg, set(test), progress)
    rows = {r["subject"]: r for r in read_manifest(cfg.target_cache)}
    reference_path = os.path.join(cfg.out, "cells", "real-reference.json")
    real_scores: dict = {}  # what depends on the real test volumes alone, computed by the first cell (evaluate)
    for cell in cells(cfg):
        path = os.path.join(cfg.out, "cells", f"{cell['id']}.json")
        result = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                result = json.load(fh)
            if "mask_swap" in result or not cfg.mask_swap_pairs:
                continue
        run = runs[f"aldm_k{cell['k']}"] if cell["model"] == "aldm" else runs[cell["model"]]
        pipe = load_pipeline(run)  # one load for the cell's samples and its mask-swap check
        if result is None:
            _log(f"cell {cell['name']}: generate + evaluate")
            samples_dir = os.path.join(cfg.out, "samples", cell["id"])
            generate(run, samples_dir, n=len(test), masks=f"cache:{cfg.target_cache}", subjects=test,
                     guidance_scale=cell["s"] if cell["s"] is not None else 1.0, steps=cfg.sampler_steps,
                     sampler=cfg.sampler, seed=cfg.seed + 1000, progress=progress, native=False, pipeline=pipe)
            fidelity = evaluate(cfg.target_cache, samples_dir, os.path.join(cfg.out, "eval", cell["id"]),
                                inception=cfg.inception, log=_log, frd_modalities=tuple(cfg.frd_modalities),
                                diversity_pairs=cfg.diversity_pairs, segmenter=segmenter, reference=real_scores)
            synthetic = [{"subject": s["mask_subject"], "image": s["image"],
                          "mask": load_cached(cfg.target_cache, rows[s["mask_subject"]])["mask"],
                          "idh": rows[s["mask_subject"]]["idh"] or None,
                          "grade": rows[s["mask_subject"]]["grade"] or None}
                         for s in load_synthetic(samples_dir)]
            classifier = _classifier_scores(cfg, splits[cell["k"]], real, synthetic, fold_models)
            result = {**cell, "fidelity": fidelity, "classifier": classifier, "samples": samples_dir}
        if cfg.mask_swap_pairs:
            result["mask_swap"] = _mask_swap(cfg, pipe, cell, [real[s]["mask"] for s in test])
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    if not os.path.exists(reference_path):
        # the reference rows: classifiers trained and tested on real data (TRTR) and on the K real subjects alone
        split, ccfg, items = splits[k_max], _classifier_config(cfg), list(real.values())
        reference = {"trtr": cross_validate(items, [], split["cv"], "trtr", ccfg, models=fold_models),
                     "few_shot_only": cross_validate(items, [], split["cv"], "few-shot-only", ccfg, split["k_shot"],
                                                     fold_models)}
        atomic_write_text(reference_path, json.dumps(reference, indent=2) + "\n")
    return write_table1_report(cfg, splits)


def write_table1_report(cfg: ExperimentConfig, splits: dict) -> str | None:
    """The report from the finished cells on disk (with the segmentation section when that experiment has
    run); None while a cell or the reference rows are missing."""
    from .eval.report import write_report

    paths = [os.path.join(cfg.out, "cells", f"{cell['id']}.json") for cell in cells(cfg)]
    paths.append(os.path.join(cfg.out, "cells", "real-reference.json"))
    if not all(os.path.exists(p) for p in paths):
        return None
    loaded = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            loaded.append(json.load(fh))
    return write_report(cfg, loaded[:-1], loaded[-1], splits)
