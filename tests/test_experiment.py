"""The Table 1 experiment end to end (aldm demo --quick): held-out protocol, report files, resumption."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

from aldm.cli import main

pytestmark = pytest.mark.slow  # trains several stages or runs subprocesses; see pyproject.toml


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--quick", "--quiet", "--segmentation"]) == 0
    return out


def test_report_files_hold_the_csv_numbers(quick_demo):
    t1 = quick_demo / "table1"
    for name in ("table1.csv", "table1.md", "report.html", "figures/figure2_metrics.png",
                 "figures/figure3_guidance.png", "figures/figure4_training.png", "figures/figure5_montage.png"):
        assert (t1 / name).is_file(), name
    rows = list(csv.DictReader(open(t1 / "table1.csv")))
    assert [r["model"] for r in rows][:3] == ["CGAN", "3M-CGAN", "VAE-GAN"]
    assert rows[-1]["model"].startswith("Real")
    report = (t1 / "report.html").read_text()
    for row in rows:
        for key in ("SSIM 2D", "TRTS AUC"):
            if row[key]:
                assert f"{float(row[key]):.3f}" in report
    assert "FID not computed" in report  # no Inception weights on this machine: said, not faked
    # mask adherence: every generated cell has a mask Dice and its floor, the reference row the ceiling
    for row in rows[:-2]:
        assert 0.0 <= float(row["Mask Dice"]) <= 1.0 and 0.0 <= float(row["Mask Dice floor"]) <= 1.0
    assert 0.0 <= float(rows[-1]["Mask Dice"]) <= 1.0
    # the VAE reconstruction bound: the real test volumes through the VAE, scored like a sample set
    assert rows[-2]["model"].startswith("VAE reconstruction") and not rows[-2]["K"]
    assert 0.0 <= float(rows[-2]["Mask Dice"]) <= 1.0 and 0.0 < float(rows[-2]["SSIM 3D"]) <= 1.0
    # sharpness: every generated cell and the VAE bound have one (synthetic over real gradient magnitude,
    # lowest modality), the spectrum figure shows them against the real volumes
    for row in rows[:-1]:
        assert 0.0 < float(row["Sharpness"]) < 10.0, row["model"]
    assert not rows[-1]["Sharpness"]
    assert (t1 / "figures" / "spectrum.png").stat().st_size > 5_000
    # mask swap: every cell has a locality in [0, 1] (or none when its two samples were identical), the
    # reference row the chance level; the figure shows ALDM's first pair
    assert 0.0 < float(rows[-1]["Swap locality"]) < 1.0
    for row in rows[:-1]:
        assert row["Swap locality"] == "" or 0.0 <= float(row["Swap locality"]) <= 1.0
    assert (t1 / "figures" / "mask_swap.png").is_file()
    trained_on = set(json.load(open(t1 / "segmenter" / "run.json"))["subjects"])
    assert not trained_on & set(json.load(open(t1 / "splits.json"))["3"]["test"])  # never a test patient


def test_the_demo_edits_held_out_scans_and_reports_it(quick_demo):
    """aldm experiment edit as the demo runs it (2 held-out patients, the phantoms' healthy twins, Table 1's
    segmenter): every fill and edit scored, the removal against the twins, the figure and tables in the report."""
    from aldm.experiments.editing import FILLS

    t1 = quick_demo / "table1"
    results = json.loads((t1 / "edit" / "edit.json").read_text())
    for part in ("healthy_fill", "removal"):  # removal: scored against each subject's healthy twin
        assert results[part]["n"] == 2 and set(results[part]["fills"]) == set(FILLS), part
        for scores in results[part]["fills"].values():
            assert 0 < scores["ssim"]["mean"] <= 1 and scores["mse"]["mean"] > 0
    assert set(results["edits"]) >= {"transplant", "grow", "shrink", "remove", "insert into twin"}
    for part in results["edits"].values():
        assert part["n"] == 2 and part["seam"]["mean"] > 0 and part["sharpness_over_input"]["mean"] > 0
        assert 0 <= part["dice"]["WT"]["edited"] <= 1
    # the shrunk tumours against their truth: the demo's phantoms carry twins with each tumour shrunk x0.7
    truth = results["edits"]["shrink"]["against_truth"]
    assert truth["n"] == 2 and 0 < truth["ssim"]["mean"] <= 1 and truth["mse"]["mean"] > 0
    assert set(truth["dice_truth"]) == set(results["edits"]["shrink"]["dice"])
    assert all(0 <= v <= 1 for v in truth["dice_truth"].values())
    assert "Against the truth" in (t1 / "edit" / "edit.md").read_text()
    assert (t1 / "edit" / "edit-figure.png").stat().st_size > 10_000
    report = (t1 / "report.html").read_text()
    assert "Editing real scans" in report and "edit/edit-figure.png" in report
    assert f"{results['healthy_fill']['fills']['edit']['ssim']['mean']:.3f}" in report


def test_equal_budget_table_with_ablations_and_cost_columns(quick_demo, tmp_path):
    """Issue 24 end to end on the quick demo's caches: every model gets the same seconds (each stage fits its
    steps, recorded in run.json), the ablation rows train what they say, and Table 1 shows each row's cost."""
    from aldm.artifacts.run import Run
    from aldm.experiments.common import ExperimentConfig
    from aldm.experiments.table1 import run_table1

    caches, out = quick_demo / "cache", tmp_path / "budget"
    cfg = ExperimentConfig(source_cache=str(caches / "source"), target_cache=str(caches / "target"), out=str(out),
                           profile="tiny", k=[2, 3], guidance=[3.0], baselines=["cgan", "pixelddpm"], n_test=4, folds=2,
                           repeats=1,
                           sampler_steps=3, classifier_epochs=1, frd_modalities=[], diversity_pairs=6,
                           segmenter_steps=4, mask_swap_pairs=0, budget_s={"source": 3.0, "fewshot": 1.5},
                           ablations=["zero-shot", "no-pretraining", "no-controlnet", "few-step"])
    assert run_table1(cfg, progress=False)
    runs = out / "runs"
    for name, seconds in (("vae", 1.5), ("ldm", 1.5), ("aldm_k3", 1.5), ("cgan", 3.0), ("cgan_k3", 1.5),
                          ("pixelddpm", 3.0), ("pixelddpm_k3", 1.5),
                          ("aldm_scratch_k3", 3.0), ("ldm_nocontrolnet", 1.5), ("aldm_nocontrolnet_k3", 1.5),
                          ("aldm_k2", 1.5), ("aldm_scratch_k2", 3.0), ("aldm_nocontrolnet_k2", 1.5)):
        run = Run(str(runs / name))
        assert run.info["budget"]["budget_s"] == seconds, name
        assert run.train_seconds is not None and run.train_seconds > 0, name
    for k in (2, 3):  # the ablations at every K: each trained on its own K patients
        scratch, plain = Run(str(runs / f"aldm_scratch_k{k}")), Run(str(runs / f"aldm_nocontrolnet_k{k}"))
        assert scratch.info["from_scratch"]
        assert scratch.info["k"] == len(scratch.split()["k_shot"]) == k
        assert not plain.profile.unet.controlnet
        assert not any(n.startswith("controlnet.") for n in plain.weights()["denoiser"])
    rows = {r["model"]: r for r in csv.DictReader(open(out / "table1.csv"))}
    for name in ("CGAN", "Pixel DDPM (s=3)", "ALDM (K=3, s=3)", "ALDM no pre-training (K=3, s=3)",
                 "ALDM no ControlNet (K=3, s=3)", "ALDM zero-shot (s=3)", "ALDM (K=2, s=3)",
                 "ALDM no pre-training (K=2, s=3)", "ALDM no ControlNet (K=2, s=3)"):
        row = rows[name]
        assert float(row["Train s"]) > 0 and float(row["Params M"]) > 0 and float(row["Sample s/vol"]) > 0, name
        assert 0.0 <= float(row["copies % (held-out)"] or 0.0) <= 100.0, name
    assert rows["ALDM zero-shot (s=3)"]["K"] == "0" and rows["ALDM zero-shot (s=3)"]["copies % (held-out)"] == ""
    # the zero-shot row cost its VAE and source LDM; the adapted row those and its few-shot stage
    assert float(rows["ALDM (K=3, s=3)"]["Train s"]) > float(rows["ALDM zero-shot (s=3)"]["Train s"])
    assert float(rows["ALDM no ControlNet (K=3, s=3)"]["Params M"]) < float(rows["ALDM (K=3, s=3)"]["Params M"])
    # the pixel DDPM's cell was sampled as a diffusion model: with the experiment's s, sampler and steps
    pixel = json.load(open(out / "cells" / "pixelddpm_s3.json"))
    assert pixel["s"] == 3.0 and float(rows["Pixel DDPM (s=3)"]["s"]) == 3.0
    (sample,) = [d for d in os.listdir(pixel["samples"]) if os.path.isdir(os.path.join(pixel["samples"], d))][:1]
    record = json.load(open(os.path.join(pixel["samples"], sample, "sample.json")))
    assert (record["guidance"], record["steps"]) == (3.0, 3)
    # the few-step row: a student of the few-shot run, sampled on its own grid in its own steps; what it cost
    # counts its teacher's training
    student = json.load(open(out / "cells" / "aldmfew-stepstudent_k3_s3.json"))
    (sample,) = [d for d in os.listdir(student["samples"]) if os.path.isdir(os.path.join(student["samples"], d))][:1]
    record = json.load(open(os.path.join(student["samples"], sample, "sample.json")))
    steps = Run(str(runs / "aldm_student_k3")).info["distill"]["steps"]
    assert (record["sampler"], record["steps"]) == ("distilled", steps)
    assert float(rows["ALDM few-step student (K=3, s=3)"]["Train s"]) > float(rows["ALDM (K=3, s=3)"]["Train s"])


def test_protocol_holds_out_the_few_shot_subjects(quick_demo):
    t1 = quick_demo / "table1"
    splits = json.load(open(t1 / "splits.json"))
    k_max = max(splits, key=int)
    test, shots = set(splits[k_max]["test"]), set(splits[k_max]["k_shot"])
    assert test and shots and not test & shots
    for split in splits.values():
        assert set(split["k_shot"]) <= shots and not set(split["k_shot"]) & test
        for fold in split["cv"]:
            assert not set(fold["train"]) & set(fold["test"]) and not set(fold["test"]) & shots
    for cell in os.listdir(t1 / "samples"):
        manifest = list(csv.DictReader(open(t1 / "samples" / cell / "samples.csv")))
        assert {r["mask_subject"] for r in manifest} == test


def test_segmentation_experiment_holds_out_the_tested_patients(quick_demo):
    t1 = quick_demo / "table1"
    split = json.load(open(t1 / "split_k3.json"))
    shots = set(split["k_shot"])
    folds = [f for f in split["cv"] if f["repeat"] == 0]
    # synthetic training volumes: made from (and placed in) few-shot patients only
    for generator in ("aldm", "cgan", "cgan3m", "vaegan"):
        rows = list(csv.DictReader(open(t1 / "segmentation" / "samples" / generator / "samples.csv")))
        assert len(rows) == 2 * len(shots)  # the demo's largest multiplier
        for row in rows:
            assert set(row["mask_source"].split(":", 1)[1].split("->")) | {row["context_subject"]} <= shots
    # edited scans: a few-shot patient's own scan with another few-shot patient's tumour
    rows = list(csv.DictReader(open(t1 / "segmentation" / "samples" / "aldm-edit" / "samples.csv")))
    assert len(rows) == 2 * len(shots)
    assert all({r["mask_subject"], r["context_subject"]} <= shots and r["mask_subject"] != r["context_subject"]
               for r in rows)
    results = [json.load(open(t1 / "segmentation" / "results" / name))
               for name in os.listdir(t1 / "segmentation" / "results")]
    assert {r["protocol"] for r in results} == {"k-real", "k-real+synthetic", "synthetic-only", "all-real"}
    for r in results:
        scored = set(r["per_patient"])
        assert not scored & set(r["train"]) and not scored & shots
        if r["fold"] is None:
            assert scored == {s for f in folds for s in f["test"]}
        else:
            assert scored == set(folds[r["fold"]]["test"])
        if r["protocol"] == "k-real":
            assert set(r["train"]) == shots
        for value in r["per_patient"].values():
            assert 0.0 <= value["dice"] <= 1.0
    table = list(csv.DictReader(open(t1 / "segmentation" / "segmentation.csv")))
    # K real, ceiling, per generator (ALDM, ALDM edits, three GANs) two N values and TSTR
    assert len(table) == 1 + 1 + 5 * 3
    edits = [r for r in table if r["Generator"].startswith("ALDM edits")]
    assert len(edits) == 3 and all(0.0 <= float(r["Dice"]) <= 1.0 for r in edits)
    assert (t1 / "figures" / "segmentation_augmentation.png").stat().st_size > 10_000
    report = (t1 / "report.html").read_text()
    assert "Downstream segmentation" in report and f"{float(table[0]['Dice']):.3f}" in report
    paired = json.loads((t1 / "segmentation" / "summary.json").read_text())["paired"]
    assert len(paired) == 5 * 2 and all(set(p["regions"]) >= {"WT"} and p["seeds"] >= 1 for p in paired)
    assert "Paired by seed against K real" in report and "Paired by seed" in (t1 / "segmentation" /
                                                                            "segmentation.md").read_text()


def test_rerun_recomputes_nothing(quick_demo):
    cells = quick_demo / "table1" / "cells"
    stamps = {name: os.path.getmtime(cells / name) for name in os.listdir(cells)}
    results = quick_demo / "table1" / "segmentation" / "results"
    seg_stamps = {name: os.path.getmtime(results / name) for name in os.listdir(results)}
    weights = os.path.getmtime(quick_demo / "table1" / "runs" / "vae" / "weights.pt")
    assert main(["demo", "--out", str(quick_demo), "--quick", "--quiet", "--segmentation"]) == 0
    assert stamps == {name: os.path.getmtime(cells / name) for name in os.listdir(cells)}
    assert seg_stamps == {name: os.path.getmtime(results / name) for name in os.listdir(results)}
    assert weights == os.path.getmtime(quick_demo / "table1" / "runs" / "vae" / "weights.pt")


def test_regions_demo_reports_every_brats_region(quick_demo, tmp_path):
    """aldm demo --quick --regions --segmentation: four modalities, regions-conditioned generators, Table 1
    with TC / ET Dice and the contrast checks, the segmentation experiment per region, T1c in Figure 5. The
    phantom cohorts are the plain demo's (the demo writes them only when missing; they hold T1c)."""
    out = tmp_path / "regions"
    shutil.copytree(quick_demo / "phantom", out / "phantom")
    assert main(["demo", "--out", str(out), "--quick", "--quiet", "--regions", "--segmentation"]) == 0
    t1 = out / "table1"
    config = json.loads((t1 / "runs" / "aldm_k3" / "config.json").read_text())
    assert config["condition"] == "regions" and config["vae"]["in_channels"] == 4
    rows = list(csv.DictReader(open(t1 / "table1.csv")))
    for row in rows:
        assert 0.0 <= float(row["Dice TC"]) <= 1.0 and 0.0 <= float(row["Dice ET"]) <= 1.0, row["model"]
        assert row["Contrast signs"].endswith("/3"), row["model"]  # T1c present: all three checks scored
    cell = json.load(open(t1 / "cells" / sorted(os.listdir(t1 / "cells"))[0]))
    assert set(cell["fidelity"]["mask_adherence"]["regions"]) == {"WT", "TC", "ET"}
    table = list(csv.DictReader(open(t1 / "segmentation" / "segmentation.csv")))
    assert all(r["Dice TC"] not in ("", "-") and r["Dice ET"] not in ("", "-") for r in table)
    sample = next((t1 / "samples").iterdir())
    assert any((d / "model" / "seg.nii.gz").is_file() for d in sample.iterdir() if d.name.startswith("sample-"))
