"""Diffusion maths: Eq. 3.5, 3.8, 3.9 and the samplers against an analytic Gaussian model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aldm.config import DiffusionConfig, tiny
from aldm.diffusion.guidance import GuidedNoise, combine_guidance, guided_noise
from aldm.diffusion.samplers import (
    ddim_timesteps,
    initial_noise,
    logsnr_timesteps,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
)
from aldm.diffusion.schedule import NoiseSchedule, tumour_weighted_mse
from aldm.errors import AldmError
from aldm.models.blocks import ResBlock
from aldm.models.unet import ConditionalDenoiser
from aldm.train.stages import LDMTask

SCHEDULE = NoiseSchedule(DiffusionConfig())


def test_linear_schedule_matches_the_paper():
    assert SCHEDULE.betas[0] == pytest.approx(1e-4) and SCHEDULE.betas[-1] == pytest.approx(2e-2)
    assert SCHEDULE.timesteps == 1000
    expected = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0)
    assert torch.allclose(SCHEDULE.alphas_cumprod, expected)


def test_q_sample_eq_3_5():
    z0, eps = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    t = torch.tensor([0, 999])
    zt = SCHEDULE.q_sample(z0, t, eps)
    a = SCHEDULE.alphas_cumprod[[0, 999]].float().view(2, 1, 1, 1, 1)
    assert torch.allclose(zt, a.sqrt() * z0 + (1 - a).sqrt() * eps)


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0, 3.0])
def test_cfg_eq_3_8_every_scale_one_batched_forward(scale):
    calls = []

    def model(z, t, control, stats):
        calls.append(z.shape[0])
        cond = control.flatten(1).sum(1).view(-1, 1, 1, 1, 1)  # 0 for the null condition
        return z * 0 + 1.0 + cond

    z, t = torch.zeros(2, 1, 2, 2, 2), torch.tensor([5, 5])
    control, stats = torch.ones(2, 3, 2, 2, 2), torch.ones(2, 8)
    out = guided_noise(model, z, t, control, stats, scale)
    eps_c, eps_u = torch.full_like(z, 25.0), torch.full_like(z, 1.0)
    assert torch.allclose(out, eps_u + scale * (eps_c - eps_u))
    assert torch.allclose(combine_guidance(eps_c, eps_u, scale), eps_u + scale * (eps_c - eps_u))
    assert len(calls) == 1  # cond + uncond in one forward (or one pass when s is 0 or 1)
    assert calls[0] == (2 if scale in (0.0, 1.0) else 4)


@pytest.mark.parametrize("input_control", [False, True])
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
@torch.no_grad()
def test_guided_noise_with_shared_prefix_and_cached_hint_equals_the_plain_batch(scale, input_control):
    """The sampling path (hint once per run, z_t / t layers shared by cond and null halves) computes
    the same eps_guided as stacking [cond, null] and running the whole denoiser, for a denoiser
    whose weights are all random (the zero-initialised ControlNet outputs and FiLM would hide errors);
    also when the U-Net takes the control maps at its input (input_control)."""
    torch.manual_seed(0)
    config = dataclasses.replace(tiny().unet, input_control=input_control)
    model = ConditionalDenoiser(config, 4).eval()
    for p in model.parameters():
        p.normal_(0.0, 0.2)
    z, t = torch.randn(2, 4, 8, 8, 8), torch.tensor([3, 70])
    control, stats = torch.rand(2, 3, 8, 8, 8), torch.randn(2, 8)
    fast = GuidedNoise(model, control, stats, scale)
    for step in range(2):  # the cached hint is reused across steps
        zs, ts = z + step, t + step
        expected = guided_noise(model, zs, ts, control, stats, scale)
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(fast(zs, ts), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_resblock_copies_equal_the_repeated_batch():
    torch.manual_seed(1)
    block = ResBlock(4, 8, 16, 8, groups=4).eval()
    for p in block.parameters():
        p.normal_(0.0, 0.3)
    x, temb, stats = torch.randn(2, 4, 6, 6, 6), torch.randn(2, 16), torch.randn(6, 8)
    shared = block(x, temb, stats, copies=3)
    assert shared.shape == (6, 8, 6, 6, 6)
    torch.testing.assert_close(shared, block(torch.cat([x] * 3), torch.cat([temb] * 3), stats), rtol=1e-5, atol=1e-5)


def test_tumour_weighted_mse_eq_3_9():
    eps, eps_hat = torch.zeros(1, 1, 2, 1, 1), torch.ones(1, 1, 2, 1, 1)
    weight = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
    assert tumour_weighted_mse(eps, eps_hat, weight, 2.0) == pytest.approx((3.0 + 1.0) / 2)


def test_v_prediction_targets_conversion_and_loss_by_hand():
    """v = sqrt(abar) eps - sqrt(1 - abar) z_0; eps_from_v inverts it at z_t (what samplers and probes see);
    a v-predicting LDM's loss is the tumour-weighted MSE on v, with Min-SNR weight min(SNR, gamma) / (SNR + 1)."""
    profile = tiny()
    profile.diffusion = dataclasses.replace(profile.diffusion, prediction="v")
    schedule = NoiseSchedule(profile.diffusion)
    t = torch.tensor([0, 50, 99])
    abar = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
    torch.manual_seed(0)
    z0, eps = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    v = schedule.v_target(z0, t, eps)
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * z0)
    z_t = schedule.q_sample(z0, t, eps)
    torch.testing.assert_close(schedule.eps_from_v(v, z_t, t), eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(schedule.as_noise(v, z_t, t), eps, rtol=1e-5, atol=1e-5)
    assert torch.equal(NoiseSchedule(tiny().diffusion).as_noise(v, z_t, t), v)  # epsilon: unchanged

    class Zero(torch.nn.Module):
        def forward(self, z_t, t, control, stats, context=None):
            return torch.zeros_like(z_t)

    mask = torch.zeros(3, 1, 2, 2, 2)
    batch = {"mu": z0, "logvar": torch.full_like(z0, -60.0), "eps_posterior": torch.zeros_like(z0), "eps": eps,
             "t": t, "control": torch.zeros(3, 3, 2, 2, 2), "stats": torch.zeros(3, 8), "weight": mask,
             "keep": torch.ones(3)}
    per_sample = v.square().mean(dim=(1, 2, 3, 4))  # the zero denoiser's error on v
    loss, _ = LDMTask(Zero(), schedule, 0.0, torch.zeros(4), torch.ones(4))(batch, 0, 1)
    assert float(loss) == pytest.approx(float(per_sample.mean()), rel=1e-4)
    snr = abar.flatten() / (1 - abar.flatten())
    weight = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1)
    loss, _ = LDMTask(Zero(), schedule, 0.0, torch.zeros(4), torch.ones(4), min_snr_gamma=5.0)(batch, 0, 1)
    assert float(loss) == pytest.approx(float((per_sample * weight).mean()), rel=1e-4)
    # the probes' view: the zero v-prediction means eps_hat = sqrt(1 - abar) z_t
    eps_true, eps_hat, _ = LDMTask(Zero(), schedule, 0.0, torch.zeros(4), torch.ones(4)).noise_prediction(batch)
    torch.testing.assert_close(eps_hat, (1 - abar).sqrt() * z_t, rtol=1e-4, atol=1e-5)
    with pytest.raises(AldmError, match="prediction must be one of"):
        type(profile).from_dict({**profile.to_dict(), "diffusion": {"prediction": "x0"}})


def _gaussian_eps(mu: float, sigma: float):
    """The exact noise predictor when z0 ~ N(mu, sigma^2) elementwise (Eq. 3.5)."""
    def eps_fn(z, t):
        a = SCHEDULE.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
        var = a * sigma**2 + (1 - a)
        return (1 - a).sqrt() * (z - a.sqrt() * mu) / var
    return eps_fn


def _sample(sampler: str, mu: float, sigma: float, steps: int = 0):
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    z_T = initial_noise((2, 1, 16, 16, 16), gens, "cpu")
    if sampler == "ddpm":
        return sample_ddpm(_gaussian_eps(mu, sigma), SCHEDULE, z_T, gens)
    solver = sample_ddim if sampler == "ddim" else sample_dpmpp_2m
    return solver(_gaussian_eps(mu, sigma), SCHEDULE, z_T, steps)


@pytest.mark.parametrize("sampler,steps,tol", [("ddpm", 1000, 0.02), ("ddim", 200, 0.01), ("dpmpp2m", 10, 0.01),
                                               ("dpmpp2m", 25, 0.005)])
def test_samplers_recover_an_analytic_gaussian(sampler, steps, tol):
    mu, sigma = 0.5, 0.3
    z0 = _sample(sampler, mu, sigma, steps)
    assert float(z0.mean()) == pytest.approx(mu, abs=0.02)
    assert float(z0.std()) == pytest.approx(sigma, abs=tol)


def test_ddim_discretisation_error_shrinks_with_steps():
    # DDIM under-disperses at few steps (first-order ODE solver); the error must fall with steps.
    errors = [abs(float(_sample("ddim", 0.5, 0.3, n).std()) - 0.3) for n in (10, 25, 50, 200)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1) == [999]
    ts = ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)
    ls = logsnr_timesteps(SCHEDULE, 10)
    assert ls[0] == 999 and ls[-1] == 0 and len(ls) == 10


def test_per_sample_noise_does_not_depend_on_the_batch():
    a = initial_noise((2, 1, 3, 3, 3), [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)], "cpu")
    b = initial_noise((1, 1, 3, 3, 3), [torch.Generator().manual_seed(8)], "cpu")
    assert torch.equal(a[1], b[0])
