"""Baselines (CGAN, 3M-CGAN, VAE-GAN): trained by the one trainer, sampled through the shared path."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from aldm.config import tiny
from aldm.errors import AldmError
from aldm.generate import GenerationRequest, GenerationRuntime, generate
from aldm.models.families import GANS
from aldm.pipeline import BaselinePipeline, load_pipeline
from aldm.train.baselines import GANTask
from tests.training import train_baseline

pytestmark = pytest.mark.slow  # trains several stages or runs subprocesses; see pyproject.toml


@pytest.mark.parametrize("kind", GANS)
def test_trains_with_finite_losses_in_both_stages(baseline_runs, kind):
    for run in (baseline_runs[f"{kind}_source"], baseline_runs[kind]):
        rows = list(csv.DictReader(open(os.path.join(run, "metrics.csv"))))
        assert len(rows) == 4
        for row in rows:
            assert math.isfinite(float(row["d_loss"])) and math.isfinite(float(row["g_adv"]))
    info = json.load(open(os.path.join(baseline_runs[kind], "run.json")))
    assert info["model"] == kind and info["fewshot"] and info["k"] == 2
    assert os.path.exists(os.path.join(baseline_runs[kind], "split.json"))


def _masks(offset: int) -> torch.Tensor:
    m = torch.zeros(1, 1, 32, 32, 32)
    m[..., offset:offset + 7, 10:17, 10:17] = 1
    return m


@pytest.mark.parametrize("kind", GANS)
def test_moving_the_mask_moves_the_synthetic_tumour(baseline_runs, kind):
    pipe = load_pipeline(baseline_runs[kind], device="cpu")
    assert isinstance(pipe, BaselinePipeline)
    a = pipe(_masks(4), generator=[3])["image"][0]
    b = pipe(_masks(20), generator=[3])["image"][0]  # same noise, mask moved along D
    diff = (a - b).abs().mean(0).numpy()
    region_a = ndimage.binary_dilation(_masks(4)[0, 0].numpy() > 0, iterations=3)
    region_b = ndimage.binary_dilation(_masks(20)[0, 0].numpy() > 0, iterations=3)
    near = diff[region_a | region_b].mean()
    far = diff[~ndimage.binary_dilation(region_a | region_b, iterations=3)].mean()
    assert near > 2 * far, (near, far)  # (instance norm spreads a little of any change everywhere)
    # and the changes follow the mask: the difference's centre of mass lies between the two positions
    centre = ndimage.center_of_mass(diff * (region_a | region_b))
    assert 6 < centre[0] < 25


@pytest.mark.parametrize("kind", GANS)
def test_samples_come_from_noise_not_copies(baseline_runs, kind):
    pipe = load_pipeline(baseline_runs[kind], device="cpu")
    out = pipe(torch.cat([_masks(8), _masks(8)]), generator=[1, 2])["image"]
    assert out.shape == (2, 3, 32, 32, 32) and out.abs().max() <= 1.0
    assert not torch.allclose(out[0], out[1])  # different noise, different volume
    again = pipe(_masks(8), generator=[1])["image"][0]
    assert torch.allclose(again, out[0], atol=1e-5)


def test_generate_through_the_shared_path(baseline_runs, tmp_path):
    rows = generate(GenerationRequest(baseline_runs["vaegan"], str(tmp_path / "g"), 2,
                                      runtime=GenerationRuntime(progress=False)))
    split = json.load(open(os.path.join(baseline_runs["vaegan"], "split.json")))
    assert {r.mask_subject for r in rows} <= set(split["test"])
    sample = tmp_path / "g" / rows[0].sample
    for name in ("t1", "t2", "flair", "mask"):
        assert (sample / "model" / f"{name}.nii.gz").is_file() and (sample / "native" / f"{name}.nii.gz").is_file()
    assert rows[0].stage == "baseline"


def test_discriminator_phase_does_not_train_the_generator():
    task = GANTask("cgan", tiny(), augment=True)
    batch = {"image": torch.rand(2, 3, 32, 32, 32) * 2 - 1, "mask": _masks(8).repeat(2, 1, 1, 1, 1),
             "control": torch.rand(2, 3, 32, 32, 32), "domain": torch.zeros(2), "noise": torch.randn(2, 2, 8, 8, 8),
             "eps_posterior": torch.randn(2, 4, 8, 8, 8), "aug_seed": torch.tensor([5])}
    loss, _ = task(batch, 0, 10, "d")
    loss.backward()
    assert all(p.grad is None for p in task.generator.parameters())
    assert any(p.grad is not None for p in task.discriminators.parameters())
    task.zero_grad(set_to_none=True)
    loss, _ = task(batch, 0, 10, "g")
    loss.backward()
    assert all(p.grad is None for p in task.discriminators.parameters())
    assert all(p.requires_grad for p in task.discriminators.parameters())


def test_fewshot_needs_a_run_of_the_same_kind(baseline_runs, prepared_cache, tmp_path):
    with pytest.raises(AldmError, match="not a finished cgan run"):
        train_baseline("cgan", str(prepared_cache), str(tmp_path / "x"), init_run=baseline_runs["vaegan_source"],
                       k=2, progress=False)
    with pytest.raises(AldmError, match="unknown model .stylegan."):
        train_baseline("stylegan", str(prepared_cache), str(tmp_path / "y"), progress=False)


def test_same_noise_gives_same_volume_in_any_batch(baseline_runs):
    pipe = load_pipeline(baseline_runs["cgan"], device="cpu")
    masks = torch.cat([_masks(4), _masks(12)])
    both = pipe(masks, generator=[7, 8])["image"]
    single = pipe(masks[1:], generator=[8])["image"]
    assert np.allclose(both[1].numpy(), single[0].numpy(), atol=1e-5)


def test_coordinates_give_the_generator_absolute_position():
    """With ``baseline.coordinates`` the generator knows where a voxel is (CoordConv): given no mask and no
    noise, its output varies in the middle of a 64^3 volume, beyond the reach of the borders; without, the
    middle is one constant (zero padding is its only cue to position, hence the GANs' "boxes")."""
    from dataclasses import replace

    from aldm.models.baselines.networks import Generator3D, coordinate_channels

    grid = coordinate_channels(torch.zeros(1, 1, 4, 5, 6))
    assert grid.shape == (1, 3, 4, 5, 6) and float(grid[0, 0, 0, 0, 0]) == -1.0 and float(grid[0, 2, 0, 0, -1]) == 1.0
    cfg = tiny().baseline
    spread = {}
    for coordinates in (False, True):
        torch.manual_seed(0)
        g = Generator3D(replace(cfg, coordinates=coordinates)).eval()
        with torch.no_grad():
            out = g(torch.zeros(1, 3, 64, 64, 64), torch.zeros(1), torch.zeros(1, cfg.noise_channels, 16, 16, 16))
        spread[coordinates] = float(out[0, :, 28:36, 28:36, 28:36].std(dim=(1, 2, 3)).max())  # over space
    assert spread[False] < 1e-5 < 1e-3 < spread[True]
