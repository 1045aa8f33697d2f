"""Keyword front doors to the training stages, for tests: each builds the stage's typed request
(:class:`aldm.train.requests.StageRequest`) from keywords and runs it, as the command line does from its
options. The package's own callers build the requests themselves."""

from __future__ import annotations

from aldm.train.baselines import train_comparison
from aldm.train.requests import FewShot, Runtime, StageRequest
from aldm.train.stages import check_latent_parent, fewshot_stage, source_stage, vae_stage


def _request(cache, run_dir, profile=None, fewshot=None, steps=None, seed=None, resume=False, dist_info=None,
             progress=True, precision=None, probe=None, condition=None):
    return StageRequest(cache, run_dir, profile, fewshot, steps, seed, precision, condition,
                        Runtime(resume, dist_info, progress), probe)


def train_vae(cache, run_dir, profile, domain="source", **options) -> dict:
    """Stage 1 (:func:`aldm.train.stages.vae_stage`) on the ``domain`` subjects of ``cache``."""
    return vae_stage(_request(cache, run_dir, profile, **options), domain)


def train_ldm(cache, run_dir, profile=None, vae_run=None, init_run=None, k=None, n_test=None, split_path=None,
              from_scratch=False, **options) -> dict:
    """Stage 3 (``vae_run``: :func:`~aldm.train.stages.source_stage`) or stage 4 (``init_run``:
    :func:`~aldm.train.stages.fewshot_stage`)."""
    check_latent_parent(vae_run, init_run, from_scratch)
    if init_run is None:
        return source_stage(_request(cache, run_dir, profile, **options), vae_run)
    fewshot = FewShot(init_run, split_path, k, n_test, from_scratch)
    return fewshot_stage(_request(cache, run_dir, profile, fewshot, **options))


def train_baseline(kind, cache, run_dir, profile=None, init_run=None, k=None, n_test=None, split_path=None,
                   **options) -> dict:
    """Source training (no ``init_run``) or few-shot adaptation of the comparison model ``kind``."""
    fewshot = FewShot(init_run, split_path, k, n_test) if init_run is not None else None
    return train_comparison(kind, _request(cache, run_dir, profile, fewshot, **options))
