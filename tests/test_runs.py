"""aldm.artifacts.run (one owner of run folders), the generate folder's index, and the single definitions of
names and defaults that every entry point shares."""

from __future__ import annotations

import csv
import inspect
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest

from aldm.artifacts.run import Run
from aldm.errors import AldmError


def test_run_describes_each_stage(tiny_runs):
    vae, ldm, fewshot = (Run(tiny_runs[name]) for name in ("vae", "ldm", "fewshot"))
    assert (vae.kind, ldm.kind, fewshot.kind) == ("vae", "aldm", "aldm")
    assert not vae.can_generate and ldm.can_generate and fewshot.can_generate
    assert all(r.finished and r.exists for r in (vae, ldm, fewshot))
    assert ldm.split() is None and ldm.k is None and not ldm.fewshot
    split = fewshot.split()
    assert fewshot.fewshot and fewshot.k == len(split["k_shot"]) == 2
    assert set(split["k_shot"]).isdisjoint(split["test"])
    assert fewshot.profile.name == "tiny" and fewshot.data == os.path.abspath(fewshot.info["data"])
    assert set(fewshot.weights()) == {"denoiser", "latent_mean", "latent_std"}
    assert len(fewshot.weights_hash()) == 16
    with pytest.raises(AldmError, match="a vae run cannot generate"):
        vae.require_generator()


def test_unfinished_and_foreign_folders_say_what_is_wrong(tiny_runs, tmp_path):
    copy = tmp_path / "ldm"
    shutil.copytree(tiny_runs["ldm"], copy)
    os.remove(copy / "weights.pt")
    with pytest.raises(AldmError, match="training has not finished .*--resume"):
        Run(str(copy)).weights()
    with pytest.raises(AldmError, match="not an aldm run"):
        Run(str(tmp_path)).info  # noqa: B018
    (copy / "run.json").write_text("{ broken")
    with pytest.raises(AldmError, match="damaged run description"):
        Run(str(copy)).stage  # noqa: B018


def test_create_refuses_to_overwrite_or_to_resume_another_stage(tiny_runs, tmp_path):
    ldm = Run(tiny_runs["ldm"])
    info = dict(ldm.info)
    with pytest.raises(AldmError, match="already holds a run"):
        Run.create(ldm.path, info, ldm.profile, resume=False)
    with pytest.raises(AldmError, match="holds a ldm run, not vae"):
        Run.create(ldm.path, {**info, "stage": "vae"}, ldm.profile, resume=True)
    with pytest.raises(AldmError, match="data .* changed"):
        Run.create(ldm.path, {**info, "data_manifest_sha256": "0" * 64}, ldm.profile, resume=True)
    fresh = Run.create(str(tmp_path / "new"), info, ldm.profile, resume=False)
    assert fresh.exists and not fresh.finished and fresh.profile.to_dict() == ldm.profile.to_dict()


@pytest.mark.slow
def test_inference_imports_no_training_code():
    code = ("import sys, aldm.pipeline, aldm.generate, aldm.evaluate, aldm.serve.app, aldm.data.masks; "
            "print(sorted(m for m in sys.modules if m.startswith('aldm.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_older_generate_folders_are_still_read(tiny_runs, tmp_path):
    from aldm.artifacts.samples import SampleSet
    from aldm.diffusion.settings import GenerationSettings
    from aldm.evaluate import load_synthetic
    from aldm.generate import GenerationRequest, GenerationRuntime, generate

    out = tmp_path / "gen"
    rows = generate(GenerationRequest(tiny_runs["fewshot"], str(out), 2, settings=GenerationSettings(steps=2),
                                      native=False, runtime=GenerationRuntime(progress=False)))
    assert SampleSet.is_sample_set(str(out)) and len(SampleSet(str(out)).records()) == 2
    os.replace(out / "samples.csv", out / "manifest.csv")  # what versions before 0.2 wrote
    assert SampleSet.is_sample_set(str(out))
    assert [r["sample"] for r in load_synthetic(str(out))] == [r.sample for r in rows]
    assert SampleSet(str(out)).verify() == (2, [])
    with open(out / "manifest.csv", newline="") as fh:
        assert "sample" in csv.DictReader(fh).fieldnames


def test_a_cache_is_not_a_samples_folder(prepared_cache):
    from aldm.artifacts.cache import PreparedCache
    from aldm.artifacts.samples import SampleSet

    assert not SampleSet.is_sample_set(str(prepared_cache)) and PreparedCache.is_cache(str(prepared_cache))


def test_one_default_sampler_and_version_everywhere():
    from aldm import __version__
    from aldm.cli import build_parser
    from aldm.diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
    from aldm.experiments.table1 import ExperimentConfig
    from aldm.pipeline import ALDMPipeline
    from aldm.serve.app import JobRequest

    assert (DEFAULT_SAMPLER, DEFAULT_STEPS) == ("dpmpp2m", 20) and SAMPLERS[0] == DEFAULT_SAMPLER
    from aldm.diffusion.settings import DEFAULT_GUIDANCE, GenerationSettings

    # unset sampler and steps are the model's own: DPM-Solver++ at 20, a distilled student's grid and steps
    args = build_parser().parse_args(["generate", "--model", "m", "--out", "o"])
    assert (args.sampler, args.steps, args.guidance) == (None, None, DEFAULT_GUIDANCE)
    settings = GenerationSettings().validate(1000)
    assert (settings.sampler, settings.steps, settings.guidance) == (DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE)
    student = GenerationSettings().for_model(1000, {"steps": 4, "guidance_range": [1, 5]})
    assert (student.sampler, student.steps) == ("distilled", 4)
    assert GenerationSettings(sampler="ddim").for_model(1000, {"steps": 4, "guidance_range": [1, 5]}).steps == 20
    request = JobRequest(model="m")
    assert (request.sampler, request.steps) == (None, None)
    cfg = ExperimentConfig(source_cache="s", target_cache="t", out="o")
    assert (cfg.sampler, cfg.sampler_steps) == (DEFAULT_SAMPLER, DEFAULT_STEPS)
    params = inspect.signature(ALDMPipeline.__call__).parameters
    assert params["settings"].default is None  # None: GenerationSettings()
    assert __version__ == version("aldm") != "0+unknown"  # pyproject.toml's, through the package metadata


def test_an_experiment_budget_gives_every_model_the_same_seconds():
    """``budget_s`` of an experiment (issue 24): ALDM's VAE and LDM share the source seconds, each baseline's
    source stage gets all of them, every few-shot stage the few-shot seconds; bad budgets are refused by key."""
    from aldm.config import small
    from aldm.errors import AldmError
    from aldm.experiments.common import ExperimentConfig, with_budgets

    profile = with_budgets(small(), {"source": 600, "fewshot": 60, "vae_share": 0.4})
    assert (profile.train_vae.budget_s, profile.train_ldm.budget_s) == (240.0, 360.0)
    assert profile.train_vae.budget_s + profile.train_ldm.budget_s == profile.train_baseline.budget_s == 600.0
    assert profile.train_fewshot.budget_s == profile.train_baseline_fewshot.budget_s == 60.0
    assert with_budgets(small(), {}) == small()
    for budget, key in (({"source": 600}, "fewshot"), ({"source": 600, "fewshot": -1}, "fewshot"),
                        ({"source": 600, "fewshot": 60, "vae_share": 1.0}, "vae_share"),
                        ({"source": 600, "fewshot": 60, "gan": 1}, "unknown")):
        with pytest.raises(AldmError, match=f'"budget_s".*{key}'):
            ExperimentConfig(source_cache="s", target_cache="t", out="o", budget_s=budget)
    with pytest.raises(AldmError, match="not both"):
        ExperimentConfig(source_cache="s", target_cache="t", out="o", budget_s={"source": 1, "fewshot": 1},
                         steps={"vae": 2})


def test_ablation_rows_join_table1_when_asked():
    from aldm.errors import AldmError
    from aldm.experiments.common import ExperimentConfig, run_key
    from aldm.experiments.table1 import cells

    plain = ExperimentConfig(source_cache="s", target_cache="t", out="o", k=[2, 3], guidance=[1.0, 3.0])
    asked = ExperimentConfig(source_cache="s", target_cache="t", out="o", k=[2, 3], guidance=[1.0, 3.0],
                             ablations=["zero-shot", "no-pretraining", "no-controlnet"])
    extra = [c for c in cells(asked) if c not in cells(plain)]
    # no pre-training and no ControlNet at every K (the claims are asked at K = 10 and 16), zero-shot once
    assert [(c["model"], c["k"], c["s"]) for c in extra] == [
        ("aldm-scratch", 3, 3.0), ("aldm-scratch", 2, 3.0), ("aldm-nocontrolnet", 3, 3.0),
        ("aldm-nocontrolnet", 2, 3.0), ("aldm-zeroshot", 0, 3.0)]
    assert len({c["id"] for c in cells(asked)}) == len(cells(asked))
    # each row samples its own run: one per K for the ablations, the source LDM for zero-shot
    assert [run_key(c) for c in extra] == ["aldm-scratch_k3", "aldm-scratch_k2", "aldm-nocontrolnet_k3",
                                          "aldm-nocontrolnet_k2", "aldm-zeroshot"]
    assert {run_key(c) for c in cells(plain) if c["model"] == "aldm"} == {"aldm_k2", "aldm_k3"}
    with pytest.raises(AldmError, match='"ablations".*no-attention'):
        ExperimentConfig(source_cache="s", target_cache="t", out="o", ablations=["no-attention"])


def test_few_shot_selection_probes_pool_patients_never_test_ones():
    """``select_fewshot`` (issue 24 item 5): ALDM's few-shot stages select on up to 4 pool patients with
    ``select_by_probe``; it needs probes, and a split with no pool patient is one clear error."""
    from aldm.config import small
    from aldm.errors import AldmError
    from aldm.experiments.common import ExperimentConfig, fewshot_selection

    with pytest.raises(AldmError, match='"select_fewshot".*"probe_every"'):
        ExperimentConfig(source_cache="s", target_cache="t", out="o", select_fewshot=True)
    cfg = ExperimentConfig(source_cache="s", target_cache="t", out="o", k=[2], select_fewshot=True, probe_every=5)
    split = {"k_shot": ["a", "b"], "test": ["c", "d"], "pool": ["e", "f", "g", "h", "i"]}
    profile, probe = fewshot_selection(cfg, {2: split}, small(), None)
    assert profile.train_fewshot.select_by_probe and not profile.train_ldm.select_by_probe
    assert probe.subjects == ["e", "f", "g", "h"] and not set(probe.subjects) & set(split["test"] + split["k_shot"])
    assert fewshot_selection(ExperimentConfig(source_cache="s", target_cache="t", out="o"), {2: split}, small(),
                             None) == (small(), None)
    with pytest.raises(AldmError, match="no pool patient"):
        fewshot_selection(cfg, {2: {**split, "pool": []}}, small(), None)


def test_an_experiment_config_with_four_mistakes_reports_all_four(tmp_path):
    import json

    from aldm.errors import AldmError
    from aldm.experiments.common import ExperimentConfig

    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"source_cache": "s", "target_cache": "t", "out": "o", "k": [0], "sampler": "euler",
                                "baselines": ["cgan", "stylegan"], "colour": "blue"}))
    with pytest.raises(AldmError) as caught:
        ExperimentConfig.load(str(path))
    said = str(caught.value)
    assert "\n" not in said and said.startswith(f"{path}: 4 problems: (1) unknown key(s) colour")
    for key in ('"k"', '"sampler"', '"baselines": unknown baseline(s) [\'stylegan\']'):
        assert key in said
    # guidance is judged on its own: a good scale with a bad sampler blames the sampler alone
    path.write_text(json.dumps({"source_cache": "s", "target_cache": "t", "out": "o", "sampler_steps": 0}))
    with pytest.raises(AldmError, match=r'exp.json: "sampler_steps": steps must be'):
        ExperimentConfig.load(str(path))
    path.write_text(json.dumps({"target_cache": "t"}))
    with pytest.raises(AldmError, match="missing key.s. source_cache, out"):
        ExperimentConfig.load(str(path))
