"""The downstream classifier: metrics against hand-computed cases, labels, learning, leak checks."""

from __future__ import annotations

import numpy as np
import pytest

from aldm.evaluators.classifier import ClassifierConfig, binary_metrics, cross_validate, volume_slices


def test_binary_metrics_hand_computed():
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    assert m["bacc"] == pytest.approx(0.5)  # TNR 1/2, TPR 1/2
    assert m["f1"] == pytest.approx(0.5)  # TP 1, FP 1, FN 1
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ranked right
    m = binary_metrics(np.array([0, 0, 0, 1]), np.array([0.2, 0.3, 0.1, 0.8]))
    assert m["bacc"] == 1.0 and m["f1"] == 1.0 and m["auc"] == 1.0
    assert binary_metrics(np.array([1, 1]), np.array([0.7, 0.2]))["auc"] is None


def _subject(name, tumour_slices, idh="wildtype", grade=4, size=24, rng=None):
    rng = rng or np.random.default_rng(abs(hash(name)) % 2**32)
    image = np.full((3, size, size, size), -1.0, np.float32)
    image[:, 4:-4, 4:-4, 2:-2] = rng.normal(0, 0.1, size=(3, size - 8, size - 8, size - 4))
    mask = np.zeros((1, size, size, size), np.uint8)
    for z in tumour_slices:
        mask[0, 8:14, 8:14, z] = 1
        image[:, 8:14, 8:14, z] = 0.9  # a bright lesion: learnable
    return {"subject": name, "image": image, "mask": mask, "idh": idh, "grade": grade}


def test_volume_slices_labels():
    s = _subject("a", [5, 6, 7], idh="mutant", grade=2)
    x, y = volume_slices(s["image"], s["mask"], "tumour-slice")
    assert x.shape == (20, 3, 24, 24) and y.sum() == 3  # slices 2..21 hold anatomy
    x, y = volume_slices(s["image"], s["mask"], "idh", s["idh"], s["grade"])
    assert len(y) == 3 and set(y) == {1}
    _, y = volume_slices(s["image"], s["mask"], "grade", s["idh"], s["grade"])
    assert set(y) == {0}
    _, y = volume_slices(s["image"], s["mask"], "idh", None, 4)
    assert len(y) == 0


def test_classifier_learns_a_separable_task_and_trts_scores_synthetic():
    rng = np.random.default_rng(0)
    real = [_subject(f"r{i}", list(range(6 + i % 3, 12 + i % 3)), rng=rng) for i in range(8)]
    synthetic = [_subject(f"r{i}", list(range(8, 13)), rng=rng) for i in range(8)]
    folds = [{"repeat": 0, "fold": f, "train": [f"r{i}" for i in range(8) if i % 2 != f],
              "test": [f"r{i}" for i in range(8) if i % 2 == f]} for f in range(2)]
    cfg = ClassifierConfig(task="tumour-slice", epochs=6, width=8, batch_size=32)
    trtr = cross_validate(real, synthetic, folds, "trtr", cfg)
    assert trtr["folds_scored"] == 2 and trtr["auc_mean"] > 0.9
    trts = cross_validate(real, synthetic, folds, "trts", cfg)
    assert trts["auc_mean"] > 0.9 and trts["folds"][0]["n_test"] == 4 * 20
    # augmentation: the few-shot subjects (r0, r1) are never in a test fold
    cv = [{"repeat": 0, "fold": f, "train": [f"r{i}" for i in range(2, 8) if i % 2 != f],
           "test": [f"r{i}" for i in range(2, 8) if i % 2 == f]} for f in range(2)]
    aug = cross_validate(real, synthetic, cv, "augment", cfg, few_shot=["r0", "r1"])
    alone = cross_validate(real, synthetic, cv, "few-shot-only", cfg, few_shot=["r0", "r1"])
    assert aug["folds_scored"] == alone["folds_scored"] == 2
    assert aug["folds"][0]["n_train"] > alone["folds"][0]["n_train"] == 2 * 20


def test_leaks_are_refused():
    real = [_subject("a", [5]), _subject("b", [6])]
    cfg = ClassifierConfig(epochs=1, width=4)
    with pytest.raises(ValueError, match="overlap"):
        cross_validate(real, [], [{"train": ["a", "b"], "test": ["b"]}], "trtr", cfg)
    with pytest.raises(ValueError, match="few-shot subjects inside a test fold"):
        cross_validate(real, [], [{"train": ["a"], "test": ["b"]}], "augment", cfg, few_shot=["b"])
