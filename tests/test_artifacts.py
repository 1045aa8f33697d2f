"""The artifacts layer: what release 0.2 wrote still loads; one schema per thing on disk; configs refuse bad
values when built; no function changes a profile it was given; no import runs against the layer order.

``tests/fixtures/release-0.2`` was written by aldm 0.2.0 (commit bf0f314), the release before the artifacts
layer: a prepared cache of three target subjects (32^3), a tiny few-shot ALDM run (K = 1), two samples it
generated (model space) and a segmenter folder (segmenter.json + segmenter.pt).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from aldm.artifacts.cache import PreparedCache
from aldm.artifacts.run import Run
from aldm.artifacts.samples import SampleRecord, SampleSet
from aldm.artifacts.segmenter import SegmenterRun
from aldm.cli import main
from aldm.config import DiffusionConfig, Profile, TrainConfig, tiny
from aldm.diffusion.settings import GUIDANCE_RANGE, NOT_APPLICABLE, GenerationSettings
from aldm.errors import AldmError
from aldm.modalities import DEFAULT_MODALITIES

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "release-0.2")
CACHE, RUN, SAMPLES, SEGMENTER = (os.path.join(FIXTURE, n) for n in ("cache", "run", "samples", "segmenter"))


# ------------------------------------------------------------------------------------------------ release 0.2
def test_a_release_0_2_cache_reads_with_the_default_modalities():
    cache = PreparedCache(CACHE)
    assert PreparedCache.is_cache(CACHE) and not SampleSet.is_sample_set(CACHE)
    assert cache.modalities == DEFAULT_MODALITIES  # its prepare.json predates the record
    assert [r["subject"] for r in cache.rows("target")] == ["UCSF-PDGM-0005", "UCSF-PDGM-0006", "UCSF-PDGM-0007"]
    data = cache.load("UCSF-PDGM-0005")
    assert data["image"].shape == (3, 32, 32, 32) and data["image"].dtype == np.float32
    assert cache.verify() == [] and cache.image_size() == 32
    assert main(["data", "verify", CACHE]) == 0


def test_a_release_0_2_run_generates_and_its_samples_record_the_new_schema(tmp_path):
    from aldm.generate import GenerationRequest, GenerationRuntime, generate
    from aldm.pipeline import load_pipeline

    run = Run(RUN)
    assert run.kind == "aldm" and run.fewshot and run.modalities == DEFAULT_MODALITIES and run.finished
    assert load_pipeline(RUN, device="cpu").modalities == DEFAULT_MODALITIES
    records = generate(GenerationRequest(RUN, str(tmp_path / "gen"), 1, masks=f"cache:{CACHE}",
                                         subjects=["UCSF-PDGM-0005"],
                                         settings=GenerationSettings(steps=2, precision="fp32"), native=False,
                                         runtime=GenerationRuntime(progress=False)))
    assert records[0].modalities == list(DEFAULT_MODALITIES) and records[0].guidance == 3.0
    assert records[0].steps == 2 and records[0].sampler == "dpmpp2m"
    written = json.load(open(tmp_path / "gen" / records[0].sample / "sample.json"))
    assert set(SampleRecord.columns()) <= set(written) and "guidance_scale" not in written
    assert SampleSet(str(tmp_path / "gen")).records() == records


def test_release_0_2_samples_read_and_evaluate(tmp_path):
    from aldm.evaluate import EvaluationSettings, evaluate, load_synthetic

    samples = SampleSet(SAMPLES)
    records = samples.records()
    assert [r.guidance for r in records] == [3.0, 3.0]  # written as guidance_scale
    assert all(r.channels == DEFAULT_MODALITIES for r in records)
    assert samples.verify() == (2, [])
    loaded = load_synthetic(SAMPLES)
    assert loaded[0]["image"].shape == (3, 32, 32, 32) and loaded[0]["mask"].shape == (1, 32, 32, 32)
    result = evaluate(CACHE, SAMPLES, str(tmp_path / "ev"),
                      EvaluationSettings(frd_modalities=(), inception=str(tmp_path / "none")))
    assert result.n_samples == 2 and 0 < result.ssim_3d_patient_mean <= 1


def test_a_release_0_2_segmenter_loads():
    from aldm.evaluators.segmenter import load_segmenter

    run = SegmenterRun(SEGMENTER)
    assert run.legacy and run.finished and run.exists
    model, config, info = load_segmenter(SEGMENTER)
    assert config.init_filters == 4 and "UCSF-PDGM-0005" not in info["subjects"]


def test_a_new_segmenter_is_a_run_that_resumes_to_the_same_weights(tmp_path):
    import torch

    from aldm.evaluators.segmenter import SegmenterConfig, fit_on_caches, load_segmenter

    config = SegmenterConfig(init_filters=4, steps=4, batch_size=1)
    out = tmp_path / "seg"
    fit_on_caches([CACHE], str(out), config, held_out={"UCSF-PDGM-0005"}, progress=False)
    run = SegmenterRun(str(out))
    assert run.stage == "segmenter" and not run.legacy and run.finished
    assert run.description()["subjects"] == ["UCSF-PDGM-0006", "UCSF-PDGM-0007"]
    expected = load_segmenter(str(out))[0].state_dict()
    # killed after step 3: only the previous checkpoint is left, no weights
    os.remove(out / "weights.pt")
    os.replace(out / "checkpoint-prev.pt", out / "checkpoint.pt")
    with pytest.raises(AldmError, match="already holds a run"):
        fit_on_caches([CACHE], str(out), config, held_out={"UCSF-PDGM-0005"}, progress=False)
    fit_on_caches([CACHE], str(out), config, held_out={"UCSF-PDGM-0005"}, progress=False, resume=True)
    resumed = load_segmenter(str(out))[0].state_dict()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


# ------------------------------------------------------------------------------------------------ settings
def test_generation_settings_refuse_what_no_model_can_take():
    for bad, words in (({"guidance": -5.0}, "between 0 and 20"), ({"guidance": float("inf")}, "finite"),
                       ({"guidance": True}, "finite number"), ({"sampler": "euler"}, "unknown sampler"),
                       ({"steps": 0}, "at least 1"), ({"precision": "fp16"}, "precision"), ({"seed": 1.5}, "seed")):
        with pytest.raises(AldmError, match=words):
            GenerationSettings(**bad)
    assert GUIDANCE_RANGE == (0.0, 20.0)
    assert GenerationSettings(sampler="ddpm").validate(100).steps == 100
    with pytest.raises(AldmError, match="ancestral DDPM runs all T = 100 steps"):
        GenerationSettings(sampler="ddpm", steps=20).validate(100)
    with pytest.raises(AldmError, match="at most T = 100"):
        GenerationSettings(steps=101).validate(100)
    assert GenerationSettings(guidance=7.0).recorded("cgan") == {"guidance": None, "sampler": NOT_APPLICABLE,
                                                                 "steps": None}


def test_the_cli_refuses_a_guidance_outside_the_range_before_loading_anything(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"),
                 "--guidance", "-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "guidance must be between 0 and 20, got -5" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # the baseline runs take ~30 s to train
def test_baseline_samples_record_guidance_as_not_applicable(baseline_runs, tmp_path):
    from aldm.generate import GenerationRequest, GenerationRuntime, generate

    records = generate(GenerationRequest(baseline_runs["cgan"], str(tmp_path / "g"), 1,
                                         settings=GenerationSettings(guidance=7.0), native=False,
                                         runtime=GenerationRuntime(progress=False)))
    assert (records[0].guidance, records[0].sampler, records[0].steps) == (None, NOT_APPLICABLE, None)


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(image_size=-64), "image_size must be a positive multiple of 16"),
    (lambda d: d["unet"].update(channels=[0, 0, 0]), "UNetConfig.channels"),
    (lambda d: d["diffusion"].update(prediction="v_prediction"), "prediction must be one of epsilon, v"),
    (lambda d: d["train_vae"].update(precision="fp16"), "precision must be one of"),
    (lambda d: d["train_ldm"].update(steps=0), "TrainConfig.steps"),
    (lambda d: d["vae"].update(train_crop=30), "multiple of 4"),
])
def test_a_bad_profile_is_one_line_naming_the_file_before_any_work(prepared_cache, tmp_path, capsys, change, words):
    data = tiny().to_dict()
    change(data)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    assert main(["train", "vae", "--data", str(prepared_cache), "--out", str(tmp_path / "run"), "--profile",
                 str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and words in err[0], err
    assert not (tmp_path / "run").exists()


def test_configs_built_in_python_refuse_bad_values():
    with pytest.raises(AldmError, match="prediction"):
        DiffusionConfig(prediction="v_prediction")  # used to train on epsilon without a word
    with pytest.raises(AldmError, match="beta_start < beta_end"):
        DiffusionConfig(beta_start=0.1, beta_end=0.01)
    with pytest.raises(AldmError, match="ema_decay"):
        TrainConfig(ema_decay=1.5)
    with pytest.raises(AldmError, match="image_size"):
        dataclasses.replace(tiny(), image_size=30)


@pytest.mark.parametrize("change, key", [
    ({"sampler": "dpmpp"}, '"sampler"'), ({"frd_modalities": ["flare"]}, '"frd_modalities"'),
    ({"guidance": [3.0, 50.0]}, '"guidance"'), ({"k": [0]}, '"k"'), ({"baselines": ["gan"]}, '"baselines"'),
    ({"steps": {"vea": 10}}, '"steps"'), ({"classifer_epochs": 2}, "classifer_epochs"),
    ({"profile": "smal"}, '"profile"'), ({"segmentation": {"seed": 1}}, '"segmentation"'),
])
def test_a_bad_experiment_config_is_one_line_before_any_training(tmp_path, capsys, change, key):
    out = tmp_path / "exp"
    config = {"source_cache": str(tmp_path / "s"), "target_cache": str(tmp_path / "t"), "out": str(out), **change}
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(config))
    assert main(["experiment", "table1", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and key in err[0], err
    assert not out.exists()


def test_no_stage_changes_the_profile_it_was_given(prepared_cache, tmp_path):
    from aldm.train.stages import with_probe_every
    from tests.training import train_vae

    profile = tiny()
    before = profile.to_dict()
    train_vae(str(prepared_cache), str(tmp_path / "vae"), profile, steps=1, seed=7, progress=False)
    assert profile.to_dict() == before
    probed = with_probe_every(profile, 5)
    assert probed.train_ldm.probe_every == 5 and profile.to_dict() == before
    saved = Profile.load(str(tmp_path / "vae" / "config.json"))
    assert (saved.train_vae.steps, saved.train_vae.seed) == (1, 7)


def test_a_cache_of_other_modalities_is_refused_by_a_run_of_three(prepared_cache, tiny_runs, tmp_path, capsys):
    other = tmp_path / "cache4"
    shutil.copytree(prepared_cache, other)
    settings = json.loads((other / "prepare.json").read_text())
    (other / "prepare.json").write_text(json.dumps({**settings, "modalities": ["T1", "T1c", "T2", "FLAIR"]}))
    assert main(["train", "ldm", "--data", str(other), "--out", str(tmp_path / "ldm"), "--vae", tiny_runs["vae"],
                 "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds T1, T1c, T2, FLAIR but the parent run was trained on T1, T2, FLAIR" in err[0]
