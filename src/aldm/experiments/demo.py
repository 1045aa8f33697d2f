"""``aldm demo``: the whole pipeline on a fresh machine with no data.

Phantom cohorts (with their healthy and shrunk-tumour twins) -> prepared caches -> the Table 1 experiment
(ALDM stages + baselines, generation, evaluation, report) -> the scan-editing experiment on a few held-out patients (its
figure and tables join the report). The default settings use the ``small`` profile sized for ~15 minutes on 2 CPU
cores; ``--quick`` uses the ``tiny`` profile (32^3, a few steps) and runs in a few minutes — a
smoke test of every stage, not a result. ``--regions``: the same demo with the four BraTS modalities
(T1, T1c, T2, FLAIR) and every generator conditioned on the BraTS regions of the label map
(``condition`` ``regions``); Table 1 then has the Dice per region and Figure 5 shows T1c.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

from ..data.cache import DatasetSource, prepare_dataset
from ..data.preprocess import PrepConfig
from ..data.synth import RESIZED_ROOT, TWINS_ROOT, Extras, synth_cohorts
from ..diffusion.settings import GenerationSettings
from ..modalities import DEFAULT_MODALITIES, KNOWN_MODALITIES
from .common import ExperimentConfig, make_splits
from .editing import SHRINK, EditExperiment, run_edit_experiment
from .segmentation import run_segmentation
from .table1 import run_table1, write_table1_report

SETTINGS = {
    # K = 16 only and two guidance scales: the cells that inform within 15 minutes on 2 CPU cores in fp32
    # (the long benchmark, benchmarks/phantom-long.json, has K = 10 and s = 1 too)
    "full": {"profile": "small", "size": 64, "n_source": 12, "n_target": 26, "k": [16], "n_test": 10,
             "folds": 3, "repeats": 1, "steps": {"vae": 1100, "ldm": 800, "fewshot": 150, "baseline": 25,
                                                 "baseline_fewshot": 12},
             "guidance": [0.3, 3.0], "sampler_steps": 15, "classifier_epochs": 3, "frd": ["flair"],
             "diversity_pairs": 20, "segmenter_steps": 100,
             "segmentation": {"multipliers": [1, 2], "seeds": 1, "steps": 100, "width": 8, "crop": 32},
             "edit_subjects": 4},
    "quick": {"profile": "tiny", "size": 32, "n_source": 3, "n_target": 10, "k": [2, 3], "n_test": 4,
              "folds": 2, "repeats": 1, "steps": {"vae": 3, "ldm": 3, "fewshot": 3, "baseline": 2,
                                                  "baseline_fewshot": 2},
              # no FRD: radiomics features are a quarter of a smoke run's time (aldm evaluate's tests cover them)
              "guidance": [1.0, 3.0], "sampler_steps": 3, "classifier_epochs": 1, "frd": [],
              "diversity_pairs": 6, "segmenter_steps": 20,
              "segmentation": {"multipliers": [1, 2], "seeds": 1, "steps": 4, "width": 8, "crop": 16},
              "edit_subjects": 2},
}


#: seconds of the whole ``aldm demo`` per second of one small-profile VAE training step (batch 2, 32^3 crops,
#: fp32), measured on two 2-core machines: 878 s at ~0.13 s per step (tcmalloc) and 2129 s at 0.33 s (glibc)
DEMO_SECONDS_PER_VAE_STEP_SECOND = 6500.0


def vae_step_seconds(channels: int = 3, steps: int = 3) -> float:
    """Seconds of one small-profile VAE training step (batch 2, random 32^3 crops, fp32) on this machine: the
    median of ``steps`` timed steps after one untimed one, on random data (no cohort needed)."""
    import statistics

    import torch

    from ..config import small
    from ..models.vae import VAE3D, vae_loss

    profile = small()
    config = replace(profile.vae, in_channels=channels)
    vae = VAE3D(config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x = torch.rand(2, channels, 32, 32, 32) * 2 - 1
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        x_hat, mu, logvar = vae(x)
        loss, _ = vae_loss(x, x_hat, mu, logvar, config, 1, 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def estimated_demo_seconds(step_seconds: float, regions: bool = False) -> float:
    """The demo's expected wall time from one VAE step's seconds on this machine (regions mode: x1.26, its
    measured 1105 s against 878 s)."""
    return DEMO_SECONDS_PER_VAE_STEP_SECOND * step_seconds * (1105 / 878 if regions else 1.0)


def _edit_experiment(cfg: ExperimentConfig, s: dict, data: str, seed: int, progress: bool) -> None:
    """``aldm experiment edit`` on a few held-out patients of the largest-K ALDM run, into ``table1/edit``."""
    run_edit_experiment(EditExperiment(
        model=os.path.join(cfg.out, "runs", f"aldm_k{max(s['k'])}"), out=os.path.join(cfg.out, "edit"),
        subjects=s["edit_subjects"], settings=GenerationSettings(steps=s["sampler_steps"], seed=seed),
        twins=os.path.join(data, TWINS_ROOT), segmenter=os.path.join(cfg.out, "segmenter"),
        resized_twins=resized if os.path.isdir(resized := os.path.join(data, RESIZED_ROOT)) else None),
        log=(lambda line: print(line, file=sys.stderr)) if progress else (lambda line: None))


def run_demo(out: str, quick: bool = False, seed: int = 0, workers: int = 2, progress: bool = True,
             segmentation: bool = False, regions: bool = False) -> str:
    """Phantom cohorts -> caches -> Table 1 experiment in ``out``; returns the report's path.
    ``quick``: the tiny profile, a smoke run of every stage; ``segmentation``: then the downstream
    segmentation experiment too (its section joins the report); ``regions``: four modalities and the
    ``regions`` condition (see the module docstring)."""
    s = SETTINGS["quick" if quick else "full"]
    if progress and not quick:
        step = vae_step_seconds(4 if regions else 3)
        minutes = estimated_demo_seconds(step, regions) / 60
        print(f"aldm demo: expect about {minutes:.0f} minutes on this machine (a VAE step takes {step:.2f} s here; "
              f"the demo took 878 s where one took 0.13 s)", file=sys.stderr)
    start = time.perf_counter()
    data, caches = os.path.join(out, "phantom"), os.path.join(out, "cache")
    if not os.path.exists(os.path.join(data, "UCSF-PDGM", "UCSF-PDGM-metadata_v5.csv")):
        synth_cohorts(data, s["n_source"], s["n_target"], seed=seed, workers=workers, progress=progress,
                      extras=Extras(healthy_twins=True, resized_twins=SHRINK))
    config = PrepConfig(size=s["size"], modalities=KNOWN_MODALITIES if regions else DEFAULT_MODALITIES)
    prepare_dataset(DatasetSource("upenn-gbm", os.path.join(data, "UPENN-GBM")), os.path.join(caches, "source"),
                    config, workers=workers, progress=progress)
    prepare_dataset(DatasetSource("ucsf-pdgm", os.path.join(data, "UCSF-PDGM")), os.path.join(caches, "target"),
                    config, workers=workers, progress=progress)
    cfg = ExperimentConfig(
        source_cache=os.path.join(caches, "source"), target_cache=os.path.join(caches, "target"),
        out=os.path.join(out, "table1"), profile=s["profile"], condition="regions" if regions else "mask",
        k=s["k"], guidance=s["guidance"],
        n_test=s["n_test"], seed=seed, sampler_steps=s["sampler_steps"], folds=s["folds"], repeats=s["repeats"],
        classifier_epochs=s["classifier_epochs"], classifier_width=8, steps=s["steps"], frd_modalities=s["frd"],
        diversity_pairs=s["diversity_pairs"], segmenter_steps=s["segmenter_steps"], segmentation=s["segmentation"],
    )
    report = run_table1(cfg, progress=progress)
    if segmentation:
        run_segmentation(cfg, progress=progress)
    if not os.path.exists(os.path.join(cfg.out, "edit", "edit.json")):
        _edit_experiment(cfg, s, data, seed, progress)
    report = write_table1_report(cfg, make_splits(cfg)) or report
    with open(os.path.join(out, "demo_time.txt"), "w", encoding="utf-8") as fh:
        fh.write(f"{time.perf_counter() - start:.1f} s\n")
    return report
