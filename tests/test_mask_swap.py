"""The mask-swap check on generators whose answer is known: one that paints the tumour where the mask
is (locality near 1), one that ignores the mask (no difference at all), one whose change is global
(locality near the chance level)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aldm.diffusion.settings import GenerationSettings
from aldm.metrics.mask_swap import mask_swap, swap_region, swap_scores

S = 16


def _mask(x0):
    m = np.zeros((1, S, S, S), np.uint8)
    m[0, x0:x0 + 3, 6:9, 6:9] = 1
    return m


class _Generator:
    """A stand-in pipeline: seeded noise background plus a mask-dependent term."""

    def __init__(self, kind):
        self.kind = kind

    def __call__(self, masks, settings, generator):
        out = []
        for m, seed in zip(masks, generator):
            x = 0.1 * torch.randn(3, S, S, S, generator=torch.Generator().manual_seed(seed)).numpy()
            if self.kind == "local":
                x = x + 1.5 * m
            elif self.kind == "global":
                x = x + 0.3 * float(np.argwhere(m[0])[:, 0].mean())  # every voxel shifts with the tumour's place
            out.append(x)
        return {"image": torch.as_tensor(np.stack(out), dtype=torch.float32)}


MASKS = [_mask(2), _mask(8), _mask(12)]
SETTINGS = GenerationSettings(guidance=3.0, steps=1, sampler="ddim", seed=0)


def test_region_is_the_dilated_union():
    region = swap_region(MASKS[0], MASKS[1], margin=1)
    assert region[2:5, 6:9, 6:9].all() and region[8:11, 6:9, 6:9].all()
    assert region[1, 7, 7] and not region[0, 7, 7]
    assert region.sum() > 2 * 27


def test_a_mask_following_generator_changes_only_near_the_masks():
    out = mask_swap(_Generator("local"), MASKS, SETTINGS, pairs=2)
    assert out["pairs"] == 2 and out["locality"] > 0.99
    assert out["inside"] > 0.2 and out["outside"] == pytest.approx(0.0, abs=1e-6)
    assert out["chance"] < 0.2
    assert out["example"]["x_a"].shape == (3, S, S, S)


def test_a_mask_ignoring_generator_shows_no_difference():
    out = mask_swap(_Generator("ignore"), MASKS, SETTINGS)
    assert out["inside"] == 0.0 and out["outside"] == 0.0 and out["locality"] is None


def test_a_global_change_scores_the_chance_level():
    out = mask_swap(_Generator("global"), MASKS, SETTINGS)
    assert out["locality"] == pytest.approx(out["chance"], abs=1e-6)
    x = np.zeros((3, S, S, S))
    assert swap_scores(x, x + 1.0, swap_region(MASKS[0], MASKS[1]))["locality"] == pytest.approx(
        swap_region(MASKS[0], MASKS[1]).mean())
