"""What makes learning visible and faster (issue 16): EMA warm-up, Min-SNR-gamma weighting and the
held-out probes (probe.csv), which must not change what a run trains or how it resumes."""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil

import pytest
import torch

from aldm.config import tiny
from aldm.diffusion.schedule import NoiseSchedule, tumour_weighted_mse
from aldm.diffusion.settings import GenerationSettings
from aldm.errors import AldmError
from aldm.train.stages import LDMTask, ProbeSubjects
from aldm.train.trainer import EMA
from tests.training import train_ldm, train_vae


def test_ema_warmup_follows_the_diffusers_schedule():
    module = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(0.0)
    ema = EMA(module, decay=0.999, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(10) == pytest.approx(11 / 20)
    assert ema.decay_at(10**6) == pytest.approx(0.999)
    assert EMA(module, decay=0.9).decay_at(0) == pytest.approx(0.9)  # no warm-up: constant
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update(module, step=0)  # shadow = 0.1 * 0 + 0.9 * 1
    assert float(ema.shadow.weight) == pytest.approx(0.9)


def test_min_snr_gamma_weights_each_sample_by_min_snr_over_snr():
    profile = tiny()
    schedule = NoiseSchedule(profile.diffusion)
    t = torch.tensor([0, 50, 99])
    abar = schedule.alphas_cumprod[t]
    snr = abar / (1 - abar)
    expected = torch.minimum(snr, torch.tensor(5.0)) / snr  # by hand: ~5/SNR at low t, 1 at high t
    assert expected[0] < 0.01 and expected[2] == pytest.approx(1.0)
    eps, eps_hat, mask = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2), torch.zeros(3, 1, 2, 2, 2)
    weighted = tumour_weighted_mse(eps, eps_hat, mask, 2.0, expected.float())
    per_sample = (eps - eps_hat).square().mean(dim=(1, 2, 3, 4))
    assert float(weighted) == pytest.approx(float((per_sample * expected).mean()), rel=1e-5)

    class Zero(torch.nn.Module):
        def forward(self, z_t, t, control, stats, context=None):
            return torch.zeros_like(z_t)

    task = LDMTask(Zero(), schedule, 0.0, torch.zeros(4), torch.ones(4), min_snr_gamma=5.0)
    batch = {"mu": torch.zeros(3, 4, 2, 2, 2), "logvar": torch.zeros(3, 4, 2, 2, 2),
             "eps_posterior": torch.zeros(3, 4, 2, 2, 2), "eps": eps, "t": t,
             "control": torch.zeros(3, 3, 2, 2, 2), "stats": torch.zeros(3, 8), "weight": mask,
             "keep": torch.ones(3)}
    loss, _ = task(batch, 0, 1)
    assert float(loss) == pytest.approx(float((eps.square().mean(dim=(1, 2, 3, 4)) * expected).mean()), rel=1e-5)
    # an inpainting example: only its generated region counts, the mean taken over that region
    unknown = torch.zeros(3, 1, 2, 2, 2)
    unknown[:, :, 0] = 1
    loss, _ = task({**batch, "unknown": unknown}, 0, 1)
    inside = (eps[:, :, 0].square().mean(dim=(1, 2, 3)) * expected).mean()
    assert float(loss) == pytest.approx(float(inside), rel=1e-5)


def _targets(cache, n=2):
    from aldm.artifacts.cache import PreparedCache

    return sorted(r["subject"] for r in PreparedCache(cache).rows("target"))[:n]


def _probe_profile():
    profile = tiny()
    profile.train_vae = dataclasses.replace(profile.train_vae, probe_every=2)
    profile.train_ldm = dataclasses.replace(profile.train_ldm, probe_every=2)
    return profile


@pytest.mark.slow
def test_probes_log_held_out_figures_and_change_nothing_else(prepared_cache, tmp_path):
    cache = str(prepared_cache)
    probe = ProbeSubjects(cache, _targets(cache))
    train_vae(cache, str(tmp_path / "plain"), tiny(), steps=4, progress=False)
    train_vae(cache, str(tmp_path / "probed"), _probe_profile(), steps=4, progress=False, probe=probe)
    plain = torch.load(tmp_path / "plain" / "weights.pt", weights_only=True)["vae"]
    probed = torch.load(tmp_path / "probed" / "weights.pt", weights_only=True)["vae"]
    assert all(torch.equal(plain[k], probed[k]) for k in plain)  # the probe draws no training randomness
    rows = list(csv.DictReader(open(tmp_path / "probed" / "probe.csv")))
    assert [r["step"] for r in rows] == ["2", "4"]
    for key in ("psnr_t1", "ssim_flair"):
        assert all(float(r[key]) == float(r[key]) for r in rows)  # finite numbers, one per modality
    assert -1.0 <= float(rows[-1]["ssim_flair"]) <= 1.0
    assert (tmp_path / "probed" / "probe.png").stat().st_size > 5000  # the curves, redrawn after each probe
    assert not (tmp_path / "plain" / "probe.png").exists()

    # LDM probe: noise error per timestep band; resumed from step 2 it writes the same rows
    train_ldm(cache, str(tmp_path / "ldm"), _probe_profile(), vae_run=str(tmp_path / "plain"), steps=4,
              progress=False, probe=probe)
    ldm_rows = list(csv.DictReader(open(tmp_path / "ldm" / "probe.csv")))
    # step, train_s, 4 bands and their mean (the figure select_by_probe minimises)
    assert [r["step"] for r in ldm_rows] == ["2", "4"] and len(ldm_rows[0]) == 2 + 4 + 1
    bands = [float(v) for k, v in ldm_rows[0].items() if k.startswith("mse_t")]
    assert len(bands) == 4 and float(ldm_rows[0]["mse_mean"]) == pytest.approx(sum(bands) / 4, rel=1e-4)
    os.makedirs(tmp_path / "cut")
    for name in ("run.json", "config.json"):
        shutil.copy(tmp_path / "ldm" / name, tmp_path / "cut" / name)
    shutil.copy(tmp_path / "ldm" / "checkpoint-prev.pt", tmp_path / "cut" / "checkpoint.pt")
    shutil.copy(tmp_path / "ldm" / "probe.csv", tmp_path / "cut" / "probe.csv")  # a row past the checkpoint
    train_ldm(cache, str(tmp_path / "cut"), _probe_profile(), vae_run=str(tmp_path / "plain"), steps=4,
              progress=False, probe=probe, resume=True)
    def figures(path):  # all but train_s, the wall time
        return [{k: v for k, v in r.items() if k != "train_s"} for r in csv.DictReader(open(path))]

    assert figures(tmp_path / "cut" / "probe.csv") == figures(tmp_path / "ldm" / "probe.csv")


@pytest.mark.slow
def test_a_probe_of_training_subjects_is_refused(prepared_cache, tmp_path):
    from aldm.artifacts.cache import PreparedCache

    cache = str(prepared_cache)
    source = [r["subject"] for r in PreparedCache(cache).rows("source")][:1]
    with pytest.raises(AldmError, match="are training subjects"):
        train_vae(cache, str(tmp_path / "vae"), _probe_profile(), steps=2, progress=False,
                  probe=ProbeSubjects(cache, source))


def test_vae_trains_on_random_crops(prepared_cache, tmp_path, monkeypatch):
    from aldm.train import stages

    seen = []
    forward = stages.VAETask.forward

    def spy(self, batch, step, total):
        seen.append(tuple(batch["image"].shape[2:]))
        return forward(self, batch, step, total)

    monkeypatch.setattr(stages.VAETask, "forward", spy)
    profile = tiny()
    profile.vae = dataclasses.replace(profile.vae, train_crop=16)
    train_vae(str(prepared_cache), str(tmp_path / "crop"), profile, steps=2, progress=False)
    assert seen == [(16, 16, 16)] * 2
    # vae.tumour_weight: the label maps travel with the images and are cropped with them
    labelled = []

    def labels_spy(self, batch, step, total):
        labelled.append((tuple(batch["labels"].shape[2:]), set(batch["labels"].unique().tolist())))
        return forward(self, batch, step, total)

    monkeypatch.setattr(stages.VAETask, "forward", labels_spy)
    profile.vae = dataclasses.replace(profile.vae, tumour_weight=2.0)
    train_vae(str(prepared_cache), str(tmp_path / "weighted"), profile, steps=3, progress=False)
    assert [shape for shape, _ in labelled] == [(16, 16, 16)] * 3
    assert set().union(*(values for _, values in labelled)) <= {0, 1, 2, 4}
    profile.vae = dataclasses.replace(profile.vae, tumour_weight=0.0)
    with pytest.raises(AldmError, match="multiple of 4"):  # refused when the config is built
        dataclasses.replace(profile.vae, train_crop=18)
    profile.vae = dataclasses.replace(profile.vae, train_crop=64)
    with pytest.raises(AldmError, match="multiple of 4 up to 32"):
        train_vae(str(prepared_cache), str(tmp_path / "bad"), profile, steps=2, progress=False)


@pytest.mark.slow
def test_a_v_predicting_ldm_trains_and_samples_through_the_pipeline(tiny_runs, prepared_cache, tmp_path):
    """prediction = "v" end to end: a source LDM trained on v, saved with its profile, and sampled by every
    sampler through the pipeline, which converts the guided v to eps (finite volumes in [-1, 1])."""
    from aldm.pipeline import ALDMPipeline

    profile = tiny()
    profile.diffusion = dataclasses.replace(profile.diffusion, prediction="v")
    run = str(tmp_path / "ldm-v")
    train_ldm(str(prepared_cache), run, profile, vae_run=tiny_runs["vae"], steps=3, progress=False)
    pipe = ALDMPipeline.from_pretrained(run, device="cpu")
    assert pipe.profile.diffusion.prediction == "v"
    masks = torch.zeros(2, 1, 32, 32, 32)
    masks[:, :, 10:18, 10:18, 10:18] = 1
    for sampler in ("dpmpp2m", "ddim"):
        image = pipe(masks, GenerationSettings(guidance=3.0, steps=3, sampler=sampler), generator=[0, 1])["image"]
        assert image.shape == (2, 3, 32, 32, 32) and torch.isfinite(image).all() and image.abs().max() <= 1
