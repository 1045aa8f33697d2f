"""The mask-adherence segmenter: Dice / HD95 on hand-made volumes, the shuffled-mask floor, a trained
segmenter scoring real volumes near its ceiling and a constant volume near zero, and the leak check."""

from __future__ import annotations

import numpy as np
import pytest

from aldm.diffusion.settings import GenerationSettings
from aldm.errors import AldmError
from aldm.evaluators.segmenter import (
    SegmenterConfig,
    dice,
    fit_on_caches,
    hd95,
    load_segmenter,
    mask_adherence,
    shuffled_masks,
)


def _cube(lo, hi, size=16):
    m = np.zeros((1, 1, size, size, size), np.uint8)
    m[0, 0, lo:hi, lo:hi, lo:hi] = 1
    return m


def test_dice_and_hd95_on_hand_made_masks():
    a, b = _cube(4, 8), _cube(6, 10)  # 64 voxels each, 2^3 = 8 shared
    assert dice(a, a)[0] == pytest.approx(1.0)
    assert dice(a, b)[0] == pytest.approx(2 * 8 / (64 + 64))
    assert dice(a, np.zeros_like(a))[0] == pytest.approx(0.0)
    assert dice(np.zeros_like(a), np.zeros_like(a))[0] == pytest.approx(1.0)  # nothing to find, nothing found
    assert hd95(a, a)[0] == pytest.approx(0.0)
    shifted = np.roll(a, 3, axis=2)
    assert hd95(a, shifted)[0] == pytest.approx(3.0)  # a 3-voxel shift along one axis


def test_shuffled_masks_never_keep_their_own():
    masks = np.stack([_cube(i, i + 2)[0] for i in range(7)])
    for seed in range(5):
        shuffled = shuffled_masks(masks, seed)
        assert sorted(int(m.argmax()) for m in shuffled) == sorted(int(m.argmax()) for m in masks)
        assert all(not np.array_equal(s, m) for s, m in zip(shuffled, masks))
    with pytest.raises(AldmError, match="at least two"):
        shuffled_masks(masks[:1])


@pytest.fixture(scope="module")
def trained(prepared_cache, tmp_path_factory):
    """A small segmenter on the tiny cache with two target subjects held out."""
    from aldm.artifacts.cache import PreparedCache

    rows = PreparedCache(str(prepared_cache)).rows()
    held = {r["subject"] for r in rows if r["domain"] == "target"}
    held = set(sorted(held)[:2])
    folder = tmp_path_factory.mktemp("segmenter")
    fit_on_caches([str(prepared_cache)], str(folder), SegmenterConfig(init_filters=8, steps=60),
                  held_out=held, progress=False)
    return folder, held


@pytest.mark.slow
def test_real_volumes_score_high_and_a_constant_volume_near_zero(prepared_cache, trained):
    from aldm.artifacts.cache import PreparedCache

    folder, held = trained
    model, config, info = load_segmenter(str(folder))
    assert not set(info["subjects"]) & held and len(info["subjects"]) == 6
    data = [PreparedCache(str(prepared_cache)).load(r) for r in PreparedCache(str(prepared_cache)).rows()
            if r["subject"] in held]
    images = np.stack([d["image"] for d in data])
    masks = np.stack([d["mask"] for d in data]).astype(np.uint8)
    real = mask_adherence(model, config, images, masks)
    assert real["mask_dice_mean"] > 0.5, real
    constant = mask_adherence(model, config, np.full_like(images, -1.0), masks)
    assert constant["mask_dice_mean"] < 0.1, constant


@pytest.mark.slow
def test_evaluate_refuses_a_segmenter_that_saw_the_test_patients(tiny_runs, prepared_cache, tmp_path):
    from aldm.evaluate import evaluate
    from aldm.generate import generate

    generate(tiny_runs["fewshot"], str(tmp_path / "gen"), n=2,
             settings=GenerationSettings(steps=2), progress=False, native=False)
    leaky = tmp_path / "leaky"
    fit_on_caches([str(prepared_cache)], str(leaky), SegmenterConfig(init_filters=4, steps=2), held_out=set(),
                  progress=False)
    with pytest.raises(AldmError, match="trained on 2 of the evaluated mask subjects"):
        evaluate(str(prepared_cache), str(tmp_path / "gen"), str(tmp_path / "ev"), frd_modalities=(),
                 inception=str(tmp_path / "none.pth"), segmenter=str(leaky))
    clean = tmp_path / "clean"
    fit_on_caches([str(prepared_cache)], str(clean), SegmenterConfig(init_filters=4, steps=2),
                  held_out=set(tiny_runs_test_subjects(tiny_runs)), progress=False)
    result = evaluate(str(prepared_cache), str(tmp_path / "gen"), str(tmp_path / "ev"), frd_modalities=(),
                      inception=str(tmp_path / "none.pth"), segmenter=str(clean))
    adherence = result["mask_adherence"]
    assert adherence["n_samples"] == 2 and 0 <= adherence["mask_dice_mean"] <= 1
    assert 0 <= adherence["real_dice_mean"] <= 1 and adherence["shuffled_dice_mean"] is not None


def tiny_runs_test_subjects(tiny_runs):
    from aldm.artifacts.run import Run

    return Run(tiny_runs["fewshot"]).split()["test"]
