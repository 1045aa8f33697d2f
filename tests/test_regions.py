"""Pathology-aware conditioning (#26): label maps with the BraTS regions, the brain mask, seg.nii.gz outputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from aldm.conditions import brats_label_map, control_channel_count, is_brats_label_map, statistic_count
from aldm.config import Profile, UNetConfig, tiny, with_condition
from aldm.data.control import condition_control, condition_statistics, control_maps, mask_statistics, region_masks
from aldm.errors import AldmError

from .conftest import write_volume


def _label_map(size: int = 16, enhancing: bool = True) -> torch.Tensor:
    """A sphere of oedema (2) around a core of necrosis (1) with an enhancing rim (4) when asked."""
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
    r = np.sqrt(((grid - size / 2) ** 2).sum(0))
    labels = np.zeros((size,) * 3, np.float32)
    labels[r < 6] = 2
    labels[r < 4] = 4 if enhancing else 1
    labels[r < 2.5] = 1
    return torch.from_numpy(labels)[None, None]


def test_mask_condition_is_the_papers_binary_control_whatever_the_labels():
    labels = _label_map()
    binary = (labels > 0).float()
    assert torch.equal(condition_control(labels, "mask", 8), control_maps(binary, 8))
    assert torch.equal(condition_statistics(labels, "mask"), mask_statistics(binary))


def test_regions_condition_has_nested_brats_regions_and_an_empty_region_is_zero():
    labels = _label_map()
    masks = region_masks(labels)
    wt, tc, et = (masks[0, i].bool() for i in range(3))
    assert (tc <= wt).all() and (et <= tc).all()  # nested: ET in TC in WT
    assert int(et.sum()) == int((labels == 4).sum()) and int(tc.sum()) == int(((labels == 1) | (labels == 4)).sum())
    control = condition_control(labels, "regions", 8)
    assert control.shape == (1, control_channel_count("regions"), 8, 8, 8) == (1, 9, 8, 8, 8)
    assert torch.equal(control[:, :3], condition_control(labels, "mask", 8))  # WT first: the paper's maps
    no_et = _label_map(enhancing=False)
    stats = condition_statistics(no_et, "regions")
    assert stats.shape == (1, statistic_count("regions")) == (1, 24)
    assert torch.count_nonzero(condition_control(no_et, "regions", 8)[:, 6:]) == 0  # ET channels empty
    assert torch.count_nonzero(stats[:, 16:]) == 0 and stats[0, 15] == 1.0  # ET absent, TC present


def test_regions_brain_needs_the_brain_and_adds_its_maps():
    labels = _label_map()
    with pytest.raises(AldmError, match="brain"):
        condition_control(labels, "regions+brain", 8)
    brain = torch.zeros_like(labels)
    brain[..., 1:15, 1:15, 1:15] = 1
    control = condition_control(labels, "regions+brain", 8, brain)
    assert control.shape[1] == 12
    assert torch.equal(control[:, 9:], control_maps(brain, 8))


def test_label_maps_are_checked_and_brats_2023_enhancing_is_read_as_4():
    assert set(np.unique(brats_label_map(np.array([0, 1, 2, 3.0]), "x.nii.gz"))) == {0, 1, 2, 4}
    with pytest.raises(AldmError, match=r"x\.nii\.gz: labels \[5, 255\] are not BraTS labels"):
        brats_label_map(np.array([0, 1, 5, 255.0]), "x.nii.gz")
    with pytest.raises(AldmError, match="whole numbers"):
        brats_label_map(np.array([0, 0.5]), "x.nii.gz")
    with pytest.raises(AldmError, match=r"\[3\]"):  # 3 beside 4 is no convention
        brats_label_map(np.array([0, 3, 4.0]), "x.nii.gz")
    assert is_brats_label_map(np.array([0, 1, 2, 4])) and not is_brats_label_map(np.array([0, 1]))
    assert not is_brats_label_map(np.array([0, 255]))


def test_profile_condition_sizes_the_unet_and_old_configs_read_as_mask():
    profile = with_condition(tiny(), "regions+brain")
    assert (profile.condition, profile.unet.control_in, profile.unet.stats_dim) == ("regions+brain", 12, 32)
    assert Profile.from_dict(profile.to_dict()) == profile
    old = tiny().to_dict()
    del old["condition"]
    assert Profile.from_dict(old).condition == "mask"
    # the condition's sizes are derived, not stored: a config.json leaves them out, a profile built with other
    # sizes gets the condition's
    assert "control_in" not in profile.to_dict()["unet"] and "stats_dim" not in profile.to_dict()["unet"]
    built = Profile(name="x", image_size=32, condition="regions", unet=UNetConfig())
    assert (built.unet.control_in, built.unet.stats_dim) == (9, 24)
    with pytest.raises(AldmError, match="unknown condition"):
        with_condition(tiny(), "subregions")


@pytest.fixture(scope="module")
def region_runs(prepared_cache, tiny_runs, tmp_path_factory):
    """A regions+brain LDM (source, then few-shot K = 2) on the tiny VAE, and a regions CGAN."""
    from tests.training import train_baseline, train_ldm

    runs = tmp_path_factory.mktemp("region_runs")
    cache = str(prepared_cache)
    train_ldm(cache, str(runs / "ldm"), vae_run=tiny_runs["vae"], progress=False, condition="regions+brain")
    train_ldm(cache, str(runs / "fewshot"), init_run=str(runs / "ldm"), k=2, n_test=2, progress=False)
    train_baseline("cgan", cache, str(runs / "cgan"), tiny(), progress=False, condition="regions")
    return {name: str(runs / name) for name in ("ldm", "fewshot", "cgan")}


@pytest.mark.slow  # trains a regions LDM and CGAN (module fixture, ~1 minute)
def test_regions_runs_train_and_few_shot_keeps_the_condition(region_runs, prepared_cache, tmp_path):
    from aldm.artifacts.run import Run
    from tests.training import train_ldm

    assert Run(region_runs["fewshot"]).profile.condition == "regions+brain"
    assert Run(region_runs["cgan"]).profile.condition == "regions"
    with pytest.raises(AldmError, match="keeps its condition"):
        train_ldm(str(prepared_cache), str(tmp_path / "x"), init_run=region_runs["ldm"], k=2, n_test=2,
                  progress=False, condition="mask")


@pytest.mark.slow  # trains a regions LDM and CGAN (module fixture, ~1 minute)
@pytest.mark.parametrize("model", ["fewshot", "cgan"])
def test_generation_writes_the_label_map_in_model_space_and_on_the_native_grid(region_runs, prepared_cache,
                                                                              tmp_path, model):
    import nibabel as nib

    from aldm.artifacts.cache import PreparedCache
    from aldm.artifacts.samples import SampleSet
    from aldm.generate import GenerationRequest, GenerationRuntime, generate

    out = tmp_path / "samples"
    records = generate(GenerationRequest(region_runs[model], str(out), 2, runtime=GenerationRuntime(progress=False)))
    cache = PreparedCache(str(prepared_cache))
    samples = SampleSet(str(out))
    for record in records:
        assert record.condition == Run_condition(region_runs[model])
        labels = samples.load_labels(record)
        assert np.array_equal(labels, cache.load(record.mask_subject)["labels"])
        native = nib.load(os.path.join(samples.sample_dir(record.sample), "native", "seg.nii.gz"))
        row = cache.by_subject()[record.mask_subject]
        assert native.shape == tuple(json.loads(row["native_shape"]))
        assert set(np.unique(np.asarray(native.dataobj))) <= {0, 1, 2, 4}
    assert samples.verify() == (2, [])


def Run_condition(run_dir: str) -> str:
    from aldm.artifacts.run import Run

    return Run(run_dir).profile.condition


@pytest.mark.slow  # trains a regions LDM and CGAN (module fixture, ~1 minute)
def test_folder_label_maps_for_a_regions_model(region_runs, prepared_cache, tmp_path):
    from aldm.artifacts.cache import PreparedCache
    from aldm.artifacts.samples import SampleSet
    from aldm.generate import GenerationRequest, GenerationRuntime, generate

    data = PreparedCache(str(prepared_cache)).load(PreparedCache(str(prepared_cache)).rows()[0])
    folder = tmp_path / "maps"
    labels = data["labels"][0].astype(np.float32)
    labels[labels == 4] = 3  # a BraTS 2023 label map
    write_volume(folder / "case.nii.gz", labels, data["affine"], np.uint8)
    with pytest.raises(AldmError, match=r"case\.nii\.gz: this model is conditioned on the brain too"):
        generate(GenerationRequest(region_runs["fewshot"], str(tmp_path / "a"), 1, masks=f"folder:{folder}",
                                   runtime=GenerationRuntime(progress=False)))
    write_volume(folder / "case_brain.nii.gz", data["brain"][0], data["affine"], np.uint8)
    records = generate(GenerationRequest(region_runs["fewshot"], str(tmp_path / "b"), 1, masks=f"folder:{folder}",
                                         runtime=GenerationRuntime(progress=False)))
    assert [r.mask_subject for r in records] == ["case"]
    assert np.array_equal(SampleSet(str(tmp_path / "b")).load_labels(records[0]), data["labels"])
    bad = labels.copy()
    bad[0, 0, 0] = 7
    write_volume(tmp_path / "bad" / "x.nii.gz", bad, data["affine"], np.uint8)
    with pytest.raises(AldmError, match=r"x\.nii\.gz: labels \[7\] are not BraTS labels"):
        generate(GenerationRequest(region_runs["cgan"], str(tmp_path / "c"), 1, masks=f"folder:{tmp_path / 'bad'}",
                                   runtime=GenerationRuntime(progress=False)))


@pytest.mark.slow  # trains a regions LDM and CGAN (module fixture, ~1 minute)
def test_relocation_moves_the_whole_label_map(region_runs, prepared_cache, tmp_path):
    from aldm.artifacts.cache import PreparedCache
    from aldm.artifacts.samples import SampleSet
    from aldm.generate import GenerationRequest, GenerationRuntime, generate

    records = generate(GenerationRequest(region_runs["cgan"], str(tmp_path / "s"), 2,
                                         masks=f"relocated:{prepared_cache}",
                                         runtime=GenerationRuntime(progress=False)))
    cache = PreparedCache(str(prepared_cache))
    for record in records:
        source = record.mask_source.split(":")[1].split("->")[0]
        moved = SampleSet(str(tmp_path / "s")).load_labels(record)
        original = cache.load(source)["labels"]
        assert {v: int((moved == v).sum()) for v in (1, 2, 4)} == {v: int((original == v).sum()) for v in (1, 2, 4)}


def test_region_contrast_signs_against_hand_made_volumes():
    from aldm.metrics.region_contrast import contrast_check, region_contrasts

    labels = _label_map().numpy()[0]
    brain = np.ones_like(labels)
    modalities = ("T1", "T1c", "T2", "FLAIR")
    real = np.zeros((4, *labels.shape[1:]), np.float32)
    real[0][labels[0] == 1] = -0.5  # necrosis dark on T1
    real[1][labels[0] == 4] = 0.6  # enhancing bright on T1c
    real[3][labels[0] == 2] = 0.4  # oedema bright on FLAIR
    contrasts = region_contrasts(real, labels, brain, modalities)
    assert contrasts["necrosis"]["T1"] == pytest.approx(-0.5) and contrasts["oedema"]["FLAIR"] == pytest.approx(0.4)
    flat = np.zeros_like(real)
    inverted = -real
    check = contrast_check([(real, labels, brain), (inverted, labels, brain), (inverted, labels, brain)],
                           [(real, labels, brain)], modalities)
    assert check["scored"] == 3 and check["right_signs"] == 0  # the synthetic mean has every sign wrong
    assert all(np.sign(c["real"]) == c["expected_sign"] for c in check["checks"])
    good = contrast_check([(real[[0, 2, 3]], labels, brain)], [(flat[[0, 2, 3]], labels, brain)], ("T1", "T2", "FLAIR"))
    assert (good["scored"], good["right_signs"]) == (2, 2)  # no T1c: the enhancing check is not scored
