"""Downstream segmentation protocols: training sets per protocol, leak checks, scores on hand-made volumes,
the summary over seeds and folds, settings validation, and crop training (determinism, tumour crops).
The end-to-end run (generation, resumption, report) is in tests/test_experiment.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aldm.errors import AldmError
from aldm.evaluators.segmentation_protocols import (
    Job,
    SegmentationSettings,
    check_no_leak,
    paired_differences,
    plan_jobs,
    sample_sources,
    score_volumes,
    scored_subjects,
    summarise,
    training_items,
)
from aldm.evaluators.segmenter import SegmenterConfig, random_crops, train_segmenter

SHOTS = ["s1", "s2"]
FOLDS = [{"repeat": 0, "fold": 0, "train": ["p3", "p4"], "test": ["p1", "p2"]},
         {"repeat": 0, "fold": 1, "train": ["p1", "p2"], "test": ["p3", "p4"]}]


def _item(name):
    return {"subject": name, "image": np.zeros((3, 8, 8, 8), np.float32), "mask": np.zeros((1, 8, 8, 8), np.uint8)}


def _sample(i, source, context):
    return {"sample": f"sample-{i:04d}", "index": i, "mask_source": source, "context_subject": context,
            "image": np.zeros((3, 8, 8, 8), np.float32), "mask": np.zeros((1, 8, 8, 8), np.uint8)}


REAL = {s: _item(s) for s in SHOTS + ["p1", "p2", "p3", "p4"]}
SYNTHETIC = {"aldm": [_sample(0, "cache:s1", "s1"), _sample(1, "cache:s2", "s2"),
                      _sample(2, "relocated:s1->s2", "s2"), _sample(3, "relocated:s2->s1", "s1")]}


def test_training_sets_per_protocol():
    names = lambda job: [t["name"] for t in training_items(job, REAL, SHOTS, SYNTHETIC, FOLDS)]  # noqa: E731
    assert names(Job("k-real", None, 0, 0)) == SHOTS
    assert names(Job("all-real", None, 0, 0, fold=1)) == SHOTS + ["p1", "p2"]
    assert names(Job("k-real+synthetic", "aldm", 2, 0)) == SHOTS + ["sample-0000", "sample-0001"]
    assert names(Job("synthetic-only", "aldm", 4, 0)) == [f"sample-{i:04d}" for i in range(4)]
    with pytest.raises(AldmError, match="needs 8"):
        training_items(Job("synthetic-only", "aldm", 8, 0), REAL, SHOTS, SYNTHETIC, FOLDS)
    # the ceiling is scored on its fold, every other protocol on all folds' test patients
    assert scored_subjects(Job("all-real", None, 0, 0, fold=0), FOLDS) == ["p1", "p2"]
    assert scored_subjects(Job("k-real", None, 0, 0), FOLDS) == ["p1", "p2", "p3", "p4"]


def test_sample_sources_name_every_subject_a_sample_carries():
    assert sample_sources(_sample(0, "cache:s1", "s1")) == {"s1"}
    assert sample_sources(_sample(0, "relocated:s1->s2", "s2")) == {"s1", "s2"}
    edited = {**_sample(0, "edit:transplant-s1", "s2"), "mask_subject": "s1"}  # s1's tumour in s2's scan
    assert sample_sources(edited) == {"s1", "s2"}
    with pytest.raises(AldmError, match="cannot tell"):
        sample_sources(_sample(0, "folder:/x/m.nii.gz", ""))


def test_leak_checks_refuse_tested_patients_and_their_masks():
    job = Job("all-real", None, 0, 0, fold=0)
    ok = training_items(job, REAL, SHOTS, SYNTHETIC, FOLDS)
    check_no_leak(ok, set(scored_subjects(job, FOLDS)), set(SHOTS))
    # a fold's test patient in its own training set
    bad = training_items(Job("all-real", None, 0, 0, fold=0), REAL, SHOTS, SYNTHETIC, FOLDS)
    with pytest.raises(AldmError, match="tested patient"):
        check_no_leak(bad, {"p3"}, set(SHOTS))
    # a sample made from a tested patient's mask, or placed in a tested patient's brain
    for source, context in (("cache:p1", "p1"), ("relocated:s1->p2", "p2"), ("relocated:p1->s2", "s2")):
        synthetic = {"aldm": [_sample(0, source, context)]}
        items = training_items(Job("synthetic-only", "aldm", 1, 0), REAL, SHOTS, synthetic, FOLDS)
        with pytest.raises(AldmError, match="tested patient"):
            check_no_leak(items, {"p1", "p2"}, set(SHOTS))
    # a sample from a subject that is neither tested nor a few-shot patient (e.g. a pool patient)
    items = training_items(Job("synthetic-only", "aldm", 1, 0), REAL, SHOTS,
                           {"aldm": [_sample(0, "cache:p3", "p3")]}, FOLDS)
    with pytest.raises(AldmError, match="not a few-shot patient"):
        check_no_leak(items, {"p1"}, set(SHOTS))


def test_plan_covers_every_protocol_seed_and_fold_once():
    settings = SegmentationSettings(multipliers=[1, 4], seeds=2)
    jobs = plan_jobs(settings, ["aldm", "cgan"], k=3, n_folds=5, seed=7)
    assert len(jobs) == len({j.key for j in jobs}) == 2 * (1 + 5 + 2 * (2 + 1))
    assert {j.n for j in jobs if j.protocol == "k-real+synthetic"} == {3, 12}
    assert {j.n for j in jobs if j.protocol == "synthetic-only"} == {12}
    assert {j.seed for j in jobs} == {7, 8}
    assert Job("k-real+synthetic", "aldm", 12, 7).key == "k-real+synthetic_aldm_n12_seed7"


def test_scores_on_hand_made_volumes():
    size = 12
    pred, target = np.zeros((3, 1, size, size, size), np.uint8), np.zeros((3, 1, size, size, size), np.uint8)
    pred[0, 0, 2:6, 2:6, 2:6] = target[0, 0, 2:6, 2:6, 2:6] = 1  # identical
    pred[1, 0, 5, 5, 5], target[1, 0, 5, 5, 9] = 1, 1  # two single voxels 4 apart
    target[2, 0, 2:6, 2:6, 2:6] = 1  # nothing predicted
    d, h = score_volumes(pred, target)
    assert d.tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert h[0] == pytest.approx(0.0) and h[1] == pytest.approx(4.0) and np.isnan(h[2])


def test_summary_is_mean_and_std_over_seeds_and_folds():
    def result(protocol, seed, fold, dice):
        per = {s: {"dice": dice[s], "hd95": 2.0, "empty": dice[s] == 0} for s in dice}
        return {"protocol": protocol, "generator": None, "n": 0, "seed": seed, "fold": fold, "per_patient": per}

    results = [result("k-real", 0, None, {"p1": 0.2, "p2": 0.4, "p3": 0.6, "p4": 0.0}),
               result("all-real", 0, 0, {"p1": 0.8, "p2": 0.6}), result("all-real", 0, 1, {"p3": 0.7, "p4": 0.9})]
    rows = {r["protocol"]: r for r in summarise(results, FOLDS)}
    assert rows["k-real"]["dice_mean"] == pytest.approx(np.mean([0.3, 0.3]))  # folds: (0.2+0.4)/2, (0.6+0)/2
    assert rows["k-real"]["misses"] == 1 and rows["k-real"]["scores"] == 2
    assert rows["all-real"]["dice_mean"] == pytest.approx(0.75)
    assert rows["all-real"]["dice_std"] == pytest.approx(0.05)
    assert [r["protocol"] for r in summarise(results, FOLDS)] == ["k-real", "all-real"]


def test_settings_name_the_bad_key():
    with pytest.raises(AldmError, match="exp.json: unknown segmentation setting.*epochs"):
        SegmentationSettings.from_dict({"epochs": 3}, "exp.json")
    with pytest.raises(AldmError, match="multipliers"):
        SegmentationSettings.from_dict({"multipliers": [0]}, "exp.json")
    with pytest.raises(AldmError, match="multiple of 8"):
        SegmentationSettings.from_dict({"crop": 20}, "exp.json")
    assert SegmentationSettings.from_dict({}, "exp.json").multipliers == [1, 4]


def test_tumour_crops_and_deterministic_crop_training():
    x = torch.randn(2, 3, 32, 32, 32)
    y = torch.zeros(2, 1, 32, 32, 32)
    y[:, :, 28:31, 28:31, 28:31] = 1  # a tumour in a corner
    hits = 0
    for step in range(40):
        cx, cy = random_crops(x, y, 16, torch.Generator().manual_seed(step))
        assert cx.shape == (2, 3, 16, 16, 16) and cy.shape == (2, 1, 16, 16, 16)
        hits += int(cy[0].sum() > 0)
    assert 12 <= hits <= 35  # about half the crops are centred on tumour, the rest mostly miss the corner
    images, masks = x.numpy(), y.numpy().astype(np.uint8)
    config = SegmenterConfig(init_filters=8, steps=3, crop=16, seed=3)
    a, b = train_segmenter(images, masks, config), train_segmenter(images, masks, config)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_a_bad_segmentation_section_names_the_config_file(tmp_path):
    from aldm.experiments.table1 import ExperimentConfig

    path = tmp_path / "exp.json"
    path.write_text('{"source_cache": "a", "target_cache": "b", "out": "o", "segmentation": {"epochs": 3}}')
    with pytest.raises(AldmError, match=r"exp.json: \"segmentation\": unknown segmentation setting.*epochs"):
        ExperimentConfig.load(str(path))


def test_summary_per_brats_region():
    def result(fold, values):
        per = {s: {"dice": wt, "hd95": 1.0, "empty": False,
                   "regions": {"WT": {"dice": wt, "hd95": 1.0}, "TC": {"dice": tc, "hd95": None},
                               "ET": {"dice": et, "hd95": 3.0}}} for s, (wt, tc, et) in values.items()}
        return {"protocol": "all-real", "generator": None, "n": 0, "seed": 0, "fold": fold, "per_patient": per}

    results = [result(0, {"p1": (0.8, 0.6, 0.0), "p2": (0.6, 0.4, 1.0)}),
               result(1, {"p3": (0.9, 0.7, 0.5), "p4": (0.7, 0.5, 0.5)})]
    row = summarise(results, FOLDS)[0]
    assert row["dice_mean"] == pytest.approx(0.75) and row["regions"]["WT"]["dice_mean"] == pytest.approx(0.75)
    assert row["regions"]["TC"]["dice_mean"] == pytest.approx(0.55)  # folds 0.5, 0.6
    assert row["regions"]["TC"]["dice_std"] == pytest.approx(0.05) and row["regions"]["TC"]["hd95_mean"] is None
    assert row["regions"]["ET"]["dice_mean"] == pytest.approx(0.5) and row["regions"]["ET"]["dice_std"] == 0.0


def test_paired_differences_pair_each_seed_with_k_real():
    """Per seed, Dice(K real + N) - Dice(K real) on the same patients: a constant per-seed offset (what a seed does to
    both segmenters) cancels, so the spread is that of the differences, not of the seeds."""
    patients = [s for f in FOLDS for s in f["test"]]

    def result(protocol, generator, n, seed, wt, tc):
        per = {s: {"dice": wt, "hd95": 1.0, "empty": False,
                   "regions": {"WT": {"dice": wt, "hd95": 1.0}, "TC": {"dice": tc, "hd95": None}}} for s in patients}
        return {"protocol": protocol, "generator": generator, "n": n, "seed": seed, "fold": None, "per_patient": per}

    offsets = [0.0, 0.3, -0.2]  # a seed moves both segmenters alike
    results = [result("k-real", None, 0, seed, 0.5 + o, 0.4 + o) for seed, o in enumerate(offsets)]
    results += [result("k-real+synthetic", "aldm", 4, seed, 0.55 + o + 0.01 * seed, 0.4 + o)
                for seed, o in enumerate(offsets)]
    results += [result("k-real+synthetic", "aldm", 8, 7, 0.9, 0.9)]  # no K-real segmenter with seed 7: not paired
    (row,) = paired_differences(results, FOLDS)
    assert (row["generator"], row["n"], row["seeds"]) == ("aldm", 4, 3)
    assert row["regions"]["WT"]["mean"] == pytest.approx(0.06) and row["regions"]["WT"]["std"] == pytest.approx(0.01)
    assert row["regions"]["WT"]["higher"] == 3
    assert row["regions"]["TC"]["mean"] == pytest.approx(0.0, abs=1e-12) and row["regions"]["TC"]["higher"] == 0


def test_a_rerun_with_other_segmenter_training_is_refused(tmp_path):
    import json

    from aldm.experiments.segmentation import check_same_training

    path = tmp_path / "settings.json"
    check_same_training(str(path), {"steps": 100})  # nothing there yet
    path.write_text(json.dumps({"steps": 100, "width": 8, "seeds": 3, "guidance": 3.0}))
    check_same_training(str(path), {"steps": 100, "width": 8, "seeds": 5, "guidance": 3.0})  # more seeds: fine
    with pytest.raises(AldmError, match=r"settings.json: .*steps 100 -> 300"):
        check_same_training(str(path), {"steps": 300, "width": 8, "seeds": 3, "guidance": 3.0})
