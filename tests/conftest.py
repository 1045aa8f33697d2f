"""Shared fixtures: one small phantom cohort per test session, prepared at a tiny size."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(2)

# Every ``aldm`` subprocess of the suite runs as on a machine without tcmalloc (aldm.allocator), whether or not
# this one has it: its note must never turn a one-line error into two (tests/test_allocator.py covers tcmalloc).
os.environ["ALDM_TCMALLOC"] = "none"


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """3 UPENN-GBM-like + 5 UCSF-PDGM-like subjects in the real layouts (seed 0), with their healthy twins."""
    from aldm.data.synth import Extras, synth_cohorts

    root = tmp_path_factory.mktemp("phantom")
    synth_cohorts(str(root), n_source=3, n_target=5, seed=0, workers=2, progress=False,
                  extras=Extras(healthy_twins=True))
    return root


@pytest.fixture(scope="session")
def prepared_cache(phantom_root, tmp_path_factory):
    """Both phantom cohorts prepared into one cache at 32^3 (resize mode)."""
    from aldm.data.cache import DatasetSource, prepare_dataset
    from aldm.data.preprocess import PrepConfig

    cache = tmp_path_factory.mktemp("cache")
    config = PrepConfig(size=32)
    prepare_dataset(DatasetSource("upenn-gbm", str(phantom_root / "UPENN-GBM")),
                    str(cache), config, workers=2, progress=False)
    prepare_dataset(DatasetSource("ucsf-pdgm", str(phantom_root / "UCSF-PDGM")),
                    str(cache), config, workers=2, progress=False)
    return cache


def write_volume(path, array, affine=None, dtype=np.float32):
    """Write a small NIfTI for bad-input tests."""
    import nibabel as nib

    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))


@pytest.fixture(scope="session")
def tiny_runs(prepared_cache, tmp_path_factory):
    """The four stages in the tiny profile on the 32^3 phantom cache: {'vae', 'ldm', 'fewshot'} run dirs."""
    from aldm.config import tiny
    from tests.training import train_ldm, train_vae

    runs = tmp_path_factory.mktemp("runs")
    cache = str(prepared_cache)
    train_vae(cache, str(runs / "vae"), tiny(), progress=False)
    train_ldm(cache, str(runs / "ldm"), vae_run=str(runs / "vae"), progress=False)
    train_ldm(cache, str(runs / "fewshot"), init_run=str(runs / "ldm"), k=2, n_test=2, progress=False)
    return {name: str(runs / name) for name in ("vae", "ldm", "fewshot")}


@pytest.fixture(scope="session")
def baseline_runs(prepared_cache, tmp_path_factory):
    """Each baseline trained (source, then few-shot K = 2) in the tiny profile: {kind: few-shot run dir}."""
    from aldm.config import tiny
    from aldm.models.families import GANS
    from tests.training import train_baseline

    runs = tmp_path_factory.mktemp("baselines")
    out = {}
    for kind in GANS:
        train_baseline(kind, str(prepared_cache), str(runs / kind), tiny(), progress=False)
        train_baseline(kind, str(prepared_cache), str(runs / f"{kind}_k2"), init_run=str(runs / kind), k=2,
                       n_test=2, progress=False)
        out[kind] = str(runs / f"{kind}_k2")
        out[f"{kind}_source"] = str(runs / kind)
    return out
