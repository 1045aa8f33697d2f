"""``aldm experiment table1``: the paper's whole comparison (§4, Table 1, Figures 2-5) in one command.

Steps, each resumable (a finished stage or cell is never recomputed):

1. one patient-level split of the target cache: held-out test patients + K = max(K) few-shot
   patients; smaller K are stratified subsets of the same shots, so every cell is tested on the
   same held-out patients; 3 x 5-fold CV folds over the non-few-shot patients;
2. ALDM: VAE -> source LDM -> few-shot LDM per K; baselines: source -> few-shot at K = max(K)
   with the same split; ALDM few-shot training in chunks, with a fixed-seed sample after each
   chunk (Figure 4);
3. per cell (model, K, s): generate one volume per held-out test patient from its own mask;
4. per cell: fidelity (:func:`aldm.evaluate.evaluate`) and the downstream classifier — TRTS
   (the paper) on classifiers trained once per fold on real data, and augmentation (K real +
   synthetic vs K real alone), both over the CV folds; the mask-swap check (same seed, two held-out
   masks; added to cells computed before it existed);
5. Table 1 (Markdown + CSV), Figures 2-5, the mask-swap figure and learning curves (PNG) and an HTML
   report (:mod:`aldm.experiments.report`). The downstream segmentation experiment, on the same runs, is
   :mod:`aldm.experiments.segmentation`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

from ..artifacts.cache import PreparedCache
from ..artifacts.run import Run
from ..artifacts.segmenter import SegmenterRun
from ..data.masks import MaskSource
from ..evaluate import EvaluationSettings, evaluate, load_synthetic
from ..evaluators.classifier import ClassifierConfig, cross_validate
from ..generate import GenerationRequest, GenerationRuntime, generate
from ..io.atomic import atomic_write_text
from ..io.lock import exclusive_writer
from ..models.families import is_diffusion, title
from ..pipeline import load_pipeline, parameter_count
from .common import (
    PER_K_ABLATIONS,
    ExperimentConfig,
    generation_settings,
    log,
    make_splits,
    real_items,
    run_key,
    train_all,
)

VAE_BOUND = "vae-reconstruction.json"  # cells/: the VAE reconstruction bound (vae_bound)

__all__ = ["ExperimentConfig", "cells", "run_table1", "write_table1_report"]


def cells(cfg: ExperimentConfig) -> list[dict]:
    """Table 1's rows: the baselines at K = max(K), ALDM at K = max(K) for every s, ALDM at smaller K with
    the largest s (as the paper's ablations), then the ablations of ``cfg.ablations`` at the largest s: no
    pre-training, no ControlNet and the few-step student at every K (largest first), zero-shot once (K = 0)."""
    k_max, s_max = max(cfg.k), max(cfg.guidance)
    # a diffusion peer (the pixel DDPM) is sampled as ALDM is, at the largest s; a GAN takes no s
    rows = [{"name": f"{title(b)} (s={s_max:g})", "model": b, "k": k_max, "s": s_max} if is_diffusion(b)
            else {"name": title(b), "model": b, "k": k_max, "s": None} for b in cfg.baselines]
    rows += [{"name": f"ALDM (K={k}, s={s_max:g})", "model": "aldm", "k": k, "s": s_max}
             for k in sorted(cfg.k) if k != k_max]
    rows += [{"name": f"ALDM (K={k_max}, s={s:g})", "model": "aldm", "k": k_max, "s": s} for s in sorted(cfg.guidance)]
    for model, label in (("aldm-scratch", "no pre-training"), ("aldm-nocontrolnet", "no ControlNet"),
                         ("aldm-student", "few-step student")):
        if PER_K_ABLATIONS[model] in cfg.ablations:  # at every K, as ALDM's own rows
            rows += [{"name": f"ALDM {label} (K={k}, s={s_max:g})", "model": model, "k": k, "s": s_max}
                     for k in sorted(cfg.k, reverse=True)]
    if "zero-shot" in cfg.ablations:  # K = 0: no target patient trained on (its classifier split is K_max's)
        rows.append({"name": f"ALDM zero-shot (s={s_max:g})", "model": "aldm-zeroshot", "k": 0, "s": s_max,
                     "split_k": k_max})
    for row in rows:
        row["id"] = row["name"].lower().replace(" ", "").replace("(", "_").replace(")", "").replace(",", "_") \
            .replace("=", "").replace(".", "p")
    return rows


def _classifier_scores(cfg: ExperimentConfig, split: dict, real: dict, synthetic: list[dict],
                       fold_models: dict) -> dict:
    """TRTS and augmentation of one cell over the CV folds, by the tested protocol
    (:func:`aldm.evaluators.classifier.cross_validate`, leak checks included); classifiers trained on real
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
    from ..evaluators.segmenter import SegmenterConfig, fit_on_caches

    if not cfg.segmenter_steps:
        return None
    folder = os.path.join(cfg.out, "segmenter")
    run = SegmenterRun(folder)
    if not run.finished:
        log("mask-adherence segmenter on real training volumes")
        caches = [cfg.source_cache] + ([cfg.target_cache] if cfg.target_cache != cfg.source_cache else [])
        config = SegmenterConfig(init_filters=cfg.segmenter_width, steps=cfg.segmenter_steps, seed=cfg.seed)
        fit_on_caches(caches, folder, config, held_out=test, progress=progress, resume=run.exists)
    return folder


def _mask_swap(cfg: ExperimentConfig, pipe, cell: dict, test_items: list) -> dict:
    """The mask-swap check of one cell (:mod:`aldm.metrics.mask_swap`) on consecutive held-out masks; the
    first pair's volumes go to ``eval/<cell>/mask_swap.npz`` for the report's figure."""
    import numpy as np

    from ..conditions import needs_brain
    from ..metrics.mask_swap import mask_swap

    log(f"cell {cell['name']}: mask-swap check")
    out = mask_swap(pipe, [t["labels"] for t in test_items],
                    generation_settings(cfg, cell["s"], cfg.seed + 3000, cell["model"]), pairs=cfg.mask_swap_pairs,
                    brains=[t["brain"] for t in test_items] if needs_brain(pipe.condition) else None)
    example = out.pop("example", None)
    if example is not None:
        folder = os.path.join(cfg.out, "eval", cell["id"])
        os.makedirs(folder, exist_ok=True)
        np.savez_compressed(os.path.join(folder, "mask_swap.npz"), **example, modalities=np.array(pipe.modalities))
    return out


def vae_bound(vae_run: str, segmenter: str, items: list[dict], modalities) -> dict:
    """What any latent model on this VAE can reach at most: the held-out test volumes ``items`` encoded and
    decoded (the posterior mean) by the VAE of ``vae_run``, scored as a synthetic set would be — mask Dice per
    region by ``segmenter``, the region-contrast checks against the real volumes, their sharpness and spectrum
    (:func:`aldm.evaluate.sharpness_figures`) — and their 3D SSIM."""
    import numpy as np
    import torch

    from ..artifacts.run import Run
    from ..evaluators.segmenter import load_segmenter, mask_adherence
    from ..metrics.region_contrast import contrast_check
    from ..metrics.similarity import ssim_3d
    from ..models.vae import frozen_vae

    run = Run(vae_run)
    vae = frozen_vae(run.profile.vae, run.vae_state(), "cpu", run.path)
    recons = []
    with torch.inference_mode():
        for item in items:
            mu, _ = vae.encode(torch.from_numpy(item["image"])[None])
            labels = torch.from_numpy(item["labels"].astype("float32"))[None]  # for a decoder_regions VAE
            recons.append(vae.decode(mu, labels=labels.view(1, 1, *labels.shape[-3:]))[0].float().clamp(-1, 1).numpy())
    model, config, _ = load_segmenter(segmenter)
    adherence = mask_adherence(model, config, np.stack(recons), np.stack([i["labels"] for i in items]))
    contrast = contrast_check([(r, i["labels"], i["brain"]) for r, i in zip(recons, items)],
                              [(i["image"], i["labels"], i["brain"]) for i in items], modalities)
    from ..evaluate import sharpness_figures

    sharp = sharpness_figures([(r, i["image"], i["brain"]) for r, i in zip(recons, items)], modalities)
    return {"mask_dice_mean": adherence["mask_dice_mean"], "regions": adherence["regions"], **sharp,
            "region_contrast": contrast, "ssim_3d_mean": float(np.mean([ssim_3d(i["image"], r)
                                                                        for i, r in zip(items, recons)])),
            "n": len(items)}


def cell_cost(run: str, pipe, sample_s: float | None) -> dict:
    """What a row's model cost: ``train_s`` (seconds of optimisation of the run and the runs it was trained
    from: VAE + source LDM + few-shot for ALDM, source + few-shot for a baseline; None when a run predates
    the measure), ``params`` (of the networks sampling uses) and ``sample_s`` (seconds of ``aldm generate``
    per volume, NIfTI writing included)."""
    return {"train_s": Run(run).total_train_seconds(), "params": parameter_count(pipe), "sample_s": sample_s}


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
    target = PreparedCache(cfg.target_cache)
    rows = target.by_subject()
    reference_path = os.path.join(cfg.out, "cells", "real-reference.json")
    real_scores: dict = {}  # what depends on the real test volumes alone, computed by the first cell (evaluate)
    for cell in cells(cfg):
        path = os.path.join(cfg.out, "cells", f"{cell['id']}.json")
        result = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                result = json.load(fh)
            if ("mask_swap" in result or not cfg.mask_swap_pairs) and "cost" in result:
                continue
        run = runs[run_key(cell)]
        pipe = load_pipeline(run)  # one load for the cell's samples and its mask-swap check
        sample_s = None
        if result is None:
            log(f"cell {cell['name']}: generate + evaluate")
            samples_dir = os.path.join(cfg.out, "samples", cell["id"])
            start = time.perf_counter()
            generate(GenerationRequest(run, samples_dir, len(test), MaskSource("cache", cfg.target_cache), test,
                                       generation_settings(cfg, cell["s"], cfg.seed + 1000, cell["model"]),
                                       native=False,
                                       runtime=GenerationRuntime(progress=progress, pipeline=pipe)))
            sample_s = (time.perf_counter() - start) / len(test)
            scoring = EvaluationSettings(inception=cfg.inception, frd_modalities=cfg.frd_modalities,
                                         diversity_pairs=cfg.diversity_pairs, segmenter=segmenter)
            fidelity = evaluate(cfg.target_cache, samples_dir, os.path.join(cfg.out, "eval", cell["id"]), scoring,
                                log=log, reference=real_scores)
            synthetic = [{"subject": s["mask_subject"], "image": s["image"],
                          "mask": target.load(rows[s["mask_subject"]])["mask"],
                          "idh": rows[s["mask_subject"]]["idh"] or None,
                          "grade": rows[s["mask_subject"]]["grade"] or None}
                         for s in load_synthetic(samples_dir)]
            classifier = _classifier_scores(cfg, splits[cell.get("split_k", cell["k"])], real, synthetic,
                                            fold_models)
            result = {**cell, "fidelity": fidelity.to_dict(), "classifier": classifier, "samples": samples_dir}
        if "cost" not in result:  # a cell of before 0.4 keeps its samples: its sampling time is not known
            result["cost"] = cell_cost(run, pipe, sample_s)
        if cfg.mask_swap_pairs and "mask_swap" not in result:
            result["mask_swap"] = _mask_swap(cfg, pipe, cell, [real[s] for s in test])
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    if not os.path.exists(reference_path):
        # the reference rows: classifiers trained and tested on real data (TRTR) and on the K real subjects alone
        split, ccfg, items = splits[k_max], _classifier_config(cfg), list(real.values())
        reference = {"trtr": cross_validate(items, [], split["cv"], "trtr", ccfg, models=fold_models),
                     "few_shot_only": cross_validate(items, [], split["cv"], "few-shot-only", ccfg, split["k_shot"],
                                                     fold_models)}
        atomic_write_text(reference_path, json.dumps(reference, indent=2) + "\n")
    bound_path = os.path.join(cfg.out, "cells", VAE_BOUND)
    if segmenter and not os.path.exists(bound_path):
        log("VAE reconstruction bound: the test volumes through the VAE, scored as samples")
        atomic_write_text(bound_path, json.dumps(vae_bound(runs["vae"], segmenter, [real[s] for s in test],
                                                           target.modalities), indent=2) + "\n")
    return write_table1_report(cfg, splits)


def write_table1_report(cfg: ExperimentConfig, splits: dict) -> str | None:
    """The report from the finished cells on disk (with the segmentation section when that experiment has
    run); None while a cell or the reference rows are missing."""
    from .report import write_report

    paths = [os.path.join(cfg.out, "cells", f"{cell['id']}.json") for cell in cells(cfg)]
    paths.append(os.path.join(cfg.out, "cells", "real-reference.json"))
    if not all(os.path.exists(p) for p in paths):
        return None
    loaded = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            loaded.append(json.load(fh))
    bound_path = os.path.join(cfg.out, "cells", VAE_BOUND)
    if os.path.exists(bound_path):  # experiments of before 0.3 have none: the row is left out
        with open(bound_path, encoding="utf-8") as fh:
            loaded[-1]["vae_bound"] = json.load(fh)
    return write_report(cfg, loaded[:-1], loaded[-1], splits)
