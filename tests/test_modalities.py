"""Modality sets: a cache of T1, T1c, T2 and FLAIR from the dataset readers, and every model trained on it
(VAE, LDM, baselines) takes and writes its four channels; the readers report a missing T1c per subject."""

from __future__ import annotations

import os

import nibabel as nib
import pytest

from aldm.artifacts.cache import PreparedCache
from aldm.artifacts.run import Run
from aldm.cli import main
from aldm.errors import AldmError
from aldm.modalities import parse_modalities

FOUR = ("T1", "T1c", "T2", "FLAIR")


@pytest.fixture(scope="module")
def cache4(phantom_root, tmp_path_factory):
    """Both phantom cohorts with T1c (UPENN-GBM's T1GD, UCSF-PDGM's T1c) at 32^3."""
    out = tmp_path_factory.mktemp("cache4") / "cache"
    for dataset, folder in (("upenn-gbm", "UPENN-GBM"), ("ucsf-pdgm", "UCSF-PDGM")):
        assert main(["data", "prepare", dataset, str(phantom_root / folder), "--out", str(out), "--size", "32",
                     "--modalities", "t1,t1c,t2,flair", "--quiet"]) == 0
    return out


def test_parse_modalities_names_what_is_wrong():
    assert parse_modalities("t1,T1C,t2,flair") == FOUR
    with pytest.raises(AldmError, match="--modalities: unknown modality 'pd'"):
        parse_modalities("t1,pd", "--modalities")
    with pytest.raises(AldmError, match="given twice"):
        parse_modalities(["T1", "t1"])


@pytest.mark.slow  # prepares both phantom cohorts again
def test_a_four_modality_cache(cache4):
    cache = PreparedCache(str(cache4))
    assert cache.modalities == FOUR and cache.verify() == []
    row = cache.rows("source")[0]
    assert row["t1c"].endswith("_T1GD.nii.gz") and cache.rows("target")[0]["t1c"].endswith("_T1c.nii.gz")
    assert cache.load(row)["image"].shape == (4, 32, 32, 32)


@pytest.mark.slow
def test_every_model_takes_and_writes_the_four_channels(cache4, tmp_path):
    from aldm.config import tiny
    from aldm.diffusion.settings import GenerationSettings
    from aldm.generate import GenerationRequest, GenerationRuntime, generate
    from tests.training import train_baseline, train_ldm, train_vae

    vae, ldm, cgan = (str(tmp_path / n) for n in ("vae", "ldm", "cgan"))
    train_vae(str(cache4), vae, tiny(), steps=2, progress=False)
    assert Run(vae).modalities == FOUR and Run(vae).profile.vae.in_channels == 4
    # tiny's own VAE config says 3 channels: the parent VAE run's (4) is the one the LDM keeps
    train_ldm(str(cache4), ldm, tiny(), vae_run=vae, steps=2, progress=False)
    assert Run(ldm).profile.vae.in_channels == 4 and Run(ldm).modalities == FOUR
    train_baseline("cgan3m", str(cache4), cgan, tiny(), steps=1, progress=False)
    for run in (ldm, cgan):
        records = generate(GenerationRequest(run, str(tmp_path / f"gen-{os.path.basename(run)}"), 1,
                                             settings=GenerationSettings(steps=2), native=True,
                                             runtime=GenerationRuntime(progress=False)))
        assert records[0].modalities == list(FOUR)
        folder = tmp_path / f"gen-{os.path.basename(run)}" / records[0].sample
        for space in ("model", "native"):
            assert sorted(os.listdir(folder / space)) == ["flair.nii.gz", "mask.nii.gz", "seg.nii.gz", "t1.nii.gz",
                                                          "t1c.nii.gz", "t2.nii.gz"]
        assert nib.load(folder / "model" / "t1c.nii.gz").shape == (32, 32, 32)
    from aldm.evaluate import EvaluationSettings, evaluate

    result = evaluate(str(cache4), str(tmp_path / "gen-ldm"), str(tmp_path / "ev"),
                      EvaluationSettings(frd_modalities=(), inception=str(tmp_path / "none")))
    assert result.n_samples == 1


def test_the_folder_reader_reports_a_missing_t1c(tmp_path):
    from aldm.data.cohorts import discover
    from tests.test_prepare import _good_subject

    _good_subject(tmp_path / "ds", "a")  # t1, t2, flair, mask; no t1c
    (record,) = discover("folder", str(tmp_path / "ds"), modalities=FOUR)
    assert any("t1c.nii.gz: missing T1c image" in p for p in record.problems)
    (record,) = discover("folder", str(tmp_path / "ds"))
    assert not record.problems
