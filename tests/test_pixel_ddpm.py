"""The pixel-space diffusion peer (issue 24 item 4, Med-DDPM's manner): it trains what it says (a U-Net on the
volumes with the control maps at its input, no VAE, no ControlNet), resumes exactly, adapts from its source
weights, and samples through ``aldm generate`` with ALDM's samplers and guidance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from aldm.artifacts.run import Run
from aldm.config import tiny
from aldm.errors import AldmError
from aldm.models.pixel_ddpm import pixel_denoiser
from aldm.pipeline import PixelDiffusionPipeline, load_pipeline
from tests.training import train_baseline


@pytest.fixture(scope="module")
def pixel_runs(prepared_cache, tmp_path_factory):
    """The peer trained in the tiny profile: source (4 steps), then few-shot K = 2 (4 steps)."""
    runs = tmp_path_factory.mktemp("pixel")
    cache = str(prepared_cache)
    train_baseline("pixelddpm", cache, str(runs / "source"), tiny(), progress=False)
    train_baseline("pixelddpm", cache, str(runs / "k2"), init_run=str(runs / "source"), k=2, n_test=2,
                   progress=False)
    return {"source": str(runs / "source"), "k2": str(runs / "k2"), "root": runs}


def _state(run):
    return torch.load(os.path.join(run, "weights.pt"), weights_only=True)["denoiser"]


def test_the_peer_is_a_pixel_space_unet_with_the_condition_at_its_input_and_no_controlnet(pixel_runs):
    run = Run(pixel_runs["k2"]).require_finished()
    assert run.kind == "pixelddpm" and run.fewshot and run.k == 2
    pipe = load_pipeline(pixel_runs["k2"], device="cpu")
    assert isinstance(pipe, PixelDiffusionPipeline)
    (net,) = pipe.networks()
    assert net.controlnet is None and net.unet.control_stem is not None
    assert not any(key.startswith("controlnet") for key in _state(pixel_runs["k2"]))
    # x_t is the volume itself: the stem takes the cache's 3 modalities at 32^3, and no VAE comes with the run
    assert net.unet.stem.in_channels == 3 and not os.path.exists(run.file("vae.pt"))
    assert run.total_train_seconds() > run.train_seconds > 0  # the cost counts the source stage too


def test_few_shot_adapts_the_source_weights(pixel_runs, prepared_cache, tmp_path):
    """The few-shot stage starts from the source run's weights, not from a new initialisation: from a source
    moved far from any init (+0.5 on every weight), one step stays near it and far from the seed's init."""
    from aldm.io.checkpoint import save_checkpoint

    source = str(tmp_path / "source")
    shutil.copytree(pixel_runs["source"], source)
    moved = {k: v + 0.5 if v.is_floating_point() else v for k, v in _state(source).items()}
    save_checkpoint(os.path.join(source, "weights.pt"), {"denoiser": moved})
    train_baseline("pixelddpm", str(prepared_cache), str(tmp_path / "k2"), init_run=source, k=2, n_test=2, steps=1,
                   progress=False)
    adapted = _state(tmp_path / "k2")
    torch.manual_seed(0)
    fresh = pixel_denoiser(tiny()).state_dict()

    def distance(a, b):
        return sum(float((a[k].float() - b[k].float()).norm()) for k in a if a[k].is_floating_point())

    assert distance(adapted, moved) < 0.1 * distance(adapted, fresh)


def test_resume_equals_uninterrupted(prepared_cache, tmp_path):
    cache = str(prepared_cache)
    train_baseline("pixelddpm", cache, str(tmp_path / "straight"), tiny(), progress=False)  # checkpoints at 2, 4
    os.makedirs(tmp_path / "resumed")
    for name in ("run.json", "config.json"):
        shutil.copy(tmp_path / "straight" / name, tmp_path / "resumed" / name)
    shutil.copy(tmp_path / "straight" / "checkpoint-prev.pt", tmp_path / "resumed" / "checkpoint.pt")
    train_baseline("pixelddpm", cache, str(tmp_path / "resumed"), tiny(), resume=True, progress=False)
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_samples_follow_seed_sampler_and_guidance(pixel_runs):
    from aldm.diffusion.settings import GenerationSettings

    pipe = load_pipeline(pixel_runs["k2"], device="cpu")
    mask = torch.zeros(2, 1, 32, 32, 32)
    mask[:, :, 10:20, 12:22, 8:18] = 1
    settings = GenerationSettings(guidance=3.0, sampler="ddim", steps=4)
    out = pipe(mask, settings, generator=[1, 2])["image"]
    assert out.shape == (2, 3, 32, 32, 32) and out.abs().max() <= 1.0
    assert not torch.allclose(out[0], out[1])  # other noise, other volume
    assert torch.allclose(pipe(mask[:1], settings, generator=[1])["image"][0], out[0], atol=1e-5)
    unguided = pipe(mask[:1], GenerationSettings(guidance=1.0, sampler="ddim", steps=4), generator=[1])["image"]
    assert not torch.allclose(unguided[0], out[0])  # the guidance scale reaches the denoiser
    with pytest.raises(AldmError, match="at most T"):
        pipe(mask[:1], GenerationSettings(sampler="ddim", steps=10_000))


@pytest.mark.slow
def test_generate_cli_records_the_diffusion_settings(pixel_runs, tmp_path):
    out = tmp_path / "g"
    done = subprocess.run([sys.executable, "-m", "aldm.cli", "generate", "--model", pixel_runs["k2"], "--out", str(out),
                           "--n", "1", "--steps", "3", "--sampler", "dpmpp2m", "--guidance", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (sample,) = [d for d in out.iterdir() if d.is_dir()]
    record = json.loads((sample / "sample.json").read_text())
    assert (record["guidance"], record["sampler"], record["steps"]) == (2.0, "dpmpp2m", 3)
    for name in ("t1", "t2", "flair", "mask"):
        assert (sample / "model" / f"{name}.nii.gz").is_file()


def test_few_shot_refuses_a_source_run_of_another_kind(pixel_runs, prepared_cache, tmp_path):
    gan = str(tmp_path / "cgan")
    train_baseline("cgan", str(prepared_cache), gan, tiny(), steps=1, progress=False)
    with pytest.raises(AldmError, match="not a finished pixelddpm run"):
        train_baseline("pixelddpm", str(prepared_cache), str(tmp_path / "x"), init_run=gan, k=2, n_test=2,
                       progress=False)
    with pytest.raises(AldmError, match="not a finished cgan run"):
        train_baseline("cgan", str(prepared_cache), str(tmp_path / "y"), init_run=pixel_runs["source"], k=2,
                       n_test=2, progress=False)
