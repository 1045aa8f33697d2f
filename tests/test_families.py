"""The family registry: a generator added as one module plus one registry line trains, generates and is
evaluated through the same commands as the built-in ones (docs/design.md, "Adding a model family").

The toy family here is the module a newcomer would write: a "tissue painter" that learns one intensity per
modality inside the tumour and one outside it (an L1 fit, the simplest fill a segmenter can be asked to
find), its training function over :class:`aldm.train.requests.StageRequest` and its pipeline."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn

from aldm.artifacts.run import Run
from aldm.cli import main
from aldm.errors import AldmError
from aldm.models import families
from aldm.pipeline import GenerationPipeline, load_pipeline

TOY = "toypainter"


# ------------------------------------------------------------------------------------------------ the toy family
class PainterTask(nn.Module):
    """Inside / outside intensities (C,) each; the L1 loss of the painted volume against the real one."""

    def __init__(self, channels: int):
        super().__init__()
        self.inside = nn.Parameter(torch.zeros(channels))
        self.outside = nn.Parameter(torch.zeros(channels))

    def paint(self, mask: torch.Tensor) -> torch.Tensor:
        view = (1, -1, 1, 1, 1)
        return mask * self.inside.view(view) + (1 - mask) * self.outside.view(view)

    def forward(self, batch, step, total_steps):
        return torch.mean(torch.abs(self.paint(batch["mask"]) - batch["image"])), {}


def train_painter(kind, request):
    from aldm.train.comparison import load_condition_volumes, open_comparison_run
    from aldm.train.stages import run_stage
    from aldm.train.trainer import step_generator

    profile, stage_config, run, rows, parent = open_comparison_run(kind, request)
    cfg = getattr(profile, stage_config)
    data = load_condition_volumes(request.cache, rows, profile.condition)
    task = PainterTask(profile.vae.in_channels)
    if parent is not None:
        task.load_state_dict(parent["task"])

    def sampler(step, rank):
        idx = torch.randint(len(rows), (cfg.batch_size,), generator=step_generator(cfg.seed, step, rank))
        return {"image": data["image"][idx].float(), "mask": data["mask"][idx, :1].float()}

    trainer, last = run_stage(task, sampler, profile, stage_config, run, request.runtime, name=kind)
    run.save_weights({"task": trainer.ema.shadow.state_dict()})
    return last


class PainterPipeline(GenerationPipeline):
    kind = TOY

    @classmethod
    def from_pretrained(cls, run_dir, device=None, decode_slab=0, precision="auto"):
        run = Run(run_dir).require_generator()
        pipe = cls()
        pipe.profile, pipe.info, pipe.model_hash, pipe.modalities = run.profile, run.info, run.weights_hash(), \
            run.modalities
        pipe.device = torch.device("cpu")
        pipe.task = PainterTask(len(run.modalities))
        pipe.task.load_state_dict(run.weights()["task"])
        return pipe

    def networks(self):
        return [self.task]

    @torch.inference_mode()
    def __call__(self, masks, settings=None, generator=None, progress=False, step_callback=None, brain=None):
        mask = (torch.as_tensor(masks, dtype=torch.float32) > 0).float()
        return {"image": self.task.paint(mask).clamp(-1, 1)}


@pytest.fixture
def toy_family():
    family = families.register(families.Family(
        TOY, "Tissue painter", diffusion=False, networks=("vae",), stages=("train_baseline", "train_baseline_fewshot"),
        trainer=f"{__name__}:train_painter", pipeline=f"{__name__}:PainterPipeline"))
    yield family
    families.unregister(TOY)


# ------------------------------------------------------------------------------------------------ tests
def test_the_registry_lists_every_family_once():
    names = [f.name for f in families.families()]
    assert names[0] == "aldm" and set(families.comparison_models()) == {"cgan", "cgan3m", "vaegan", "pixelddpm"}
    assert families.is_diffusion("pixelddpm") and not families.is_diffusion("cgan")
    assert families.training_stage("pixelddpm", True) == "train_pixel_fewshot"
    with pytest.raises(ValueError, match="registered already"):
        families.register(families.family("cgan"))
    with pytest.raises(AldmError, match="unknown model 'stylegan'"):
        families.family("stylegan")


def test_a_runs_config_holds_its_own_familys_parts_only(tiny_runs, baseline_runs):
    """A GAN run's config.json holds no U-Net or diffusion config, an ALDM run's no GAN or pixel-DDPM one; each
    reads back as the profile it trained with (its own parts), and a run of 0.2 holding every part still loads."""
    from aldm.config import PROFILE_COMMON, Profile, tiny

    for run, kind in ((Run(baseline_runs["cgan"]), "cgan"), (Run(tiny_runs["vae"]), "aldm"),
                      (Run(tiny_runs["fewshot"]), "aldm")):
        held = json.load(open(run.file("config.json")))
        assert set(held) == set(PROFILE_COMMON) | set(families.family(kind).parts), run.path
        assert run.profile_parts() == tuple(k for k in held if k not in PROFILE_COMMON)
        for part in families.family(kind).parts:
            if part.startswith("train_"):
                continue  # the stage's steps and seed are the command's
            assert getattr(run.profile, part) == getattr(tiny(), part), (run.path, part)
    assert "unet" not in json.load(open(Run(baseline_runs["cgan"]).file("config.json")))
    old = Profile.load(os.path.join(os.path.dirname(__file__), "fixtures", "release-0.2", "run", "config.json"))
    assert old.unet.control_in == 3 and old.baseline.gen_channels


@pytest.mark.slow
def test_a_toy_family_trains_generates_and_is_evaluated_through_the_commands(toy_family, prepared_cache, tmp_path,
                                                                              capsys):
    cache, run, samples = str(prepared_cache), str(tmp_path / "toy"), str(tmp_path / "samples")
    assert main(["train", "baseline", TOY, "--data", cache, "--out", run, "--profile", "tiny", "--steps", "3",
                 "--quiet"]) == 0
    assert Run(run).kind == TOY and Run(run).finished
    assert main(["train", "baseline", TOY, "--data", cache, "--out", run + "_k2", "--init", run, "--k", "2",
                 "--n-test", "2", "--steps", "2", "--quiet"]) == 0
    pipe = load_pipeline(run + "_k2", device="cpu")
    assert isinstance(pipe, PainterPipeline) and pipe.condition == "mask"
    assert main(["generate", "--model", run + "_k2", "--out", samples, "--n", "2", "--quiet"]) == 0
    record = json.loads(next((tmp_path / "samples").glob("sample-*/sample.json")).read_text())
    assert record["model_hash"] == pipe.model_hash and record["guidance"] is None  # not a diffusion model
    assert main(["evaluate", "--real", cache, "--synthetic", samples, "--out", str(tmp_path / "eval"),
                 "--frd", "none"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert -1 <= metrics["ssim_3d_patient_mean"] <= 1
