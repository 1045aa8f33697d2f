"""The networks of §3: shapes, Eq. 3.2-3.4 and 3.6-3.7, ControlNet zero-init."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from aldm.config import paper, tiny
from aldm.models.blocks import FiLM, sinusoidal_embedding
from aldm.models.unet import ConditionalDenoiser
from aldm.models.vae import (
    VAE3D,
    gradient_loss,
    kl_divergence,
    kl_weight,
    region_weight,
    spectral_loss,
    ssim_loss,
    vae_loss,
)


@pytest.mark.slow
@torch.no_grad()
def test_paper_vae_maps_112_to_8x28():
    vae = VAE3D(paper().vae).eval()
    mu, logvar = vae.encode(torch.randn(1, 3, 112, 112, 112))
    assert mu.shape == logvar.shape == (1, 8, 28, 28, 28)
    x_hat = vae.decode(mu)
    assert x_hat.shape == (1, 3, 112, 112, 112)
    assert x_hat.abs().max() <= 1.0  # tanh


def test_level_blocks_add_residual_blocks_at_half_resolution_and_leave_the_papers_keys_alone():
    """level_blocks = 0 is the paper's VAE, with the keys of checkpoints saved before the option existed;
    level_blocks = 2 adds two residual blocks at S/2 in the encoder and two in the decoder, and still maps
    S -> S/4 -> S."""
    plain = VAE3D(tiny().vae)
    keys = set(plain.state_dict())
    assert not any(k.startswith("mid.") for k in keys)
    assert {"encoder.0.0.weight", "encoder.1.0.weight", "encoder.2.0.weight", "up1.0.weight"} <= keys
    deep = VAE3D(dataclasses.replace(tiny().vae, level_blocks=2))
    c1 = tiny().vae.channels[1]
    assert len(deep.mid) == 2 and all(b.body[0].in_channels == c1 for b in deep.mid)
    assert deep.encoder[2].body[0].in_channels == c1 and deep.encoder[3].body[0].in_channels == c1
    x = torch.randn(1, 3, 32, 32, 32)
    mu, _ = deep.encode(x)
    assert mu.shape == (1, tiny().vae.latent_channels, 8, 8, 8)
    assert deep.decode(mu).shape == x.shape


def test_logvar_is_clamped():
    vae = VAE3D(tiny().vae)
    torch.nn.init.constant_(vae.logvar.bias, 100.0)
    _, logvar = vae.encode(torch.randn(1, 3, 32, 32, 32))
    assert logvar.max() <= tiny().vae.logvar_clamp[1]


@pytest.mark.parametrize("step,expected", [(0, 0.0), (35, 0.5), (70, 1.0), (71, 1.0), (200, 1.0)])
def test_kl_warmup_eq_3_3(step, expected):
    # T = 200, rho = 0.35 -> ramp over 70 steps to lambda_KL = 1
    assert kl_weight(step, 200, 1.0, 0.35) == pytest.approx(expected)


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 4, 3, 3, 3)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert kl_divergence(mu, logvar) == pytest.approx(float(torch.distributions.kl_divergence(q, p).mean()), rel=1e-5)


def test_gradient_loss_eq_3_4_known_volume():
    d = torch.arange(8, dtype=torch.float32)
    ramp = (0.25 * d).view(1, 1, 8, 1, 1).expand(1, 1, 8, 8, 8)  # slope 0.25 along D only
    assert gradient_loss(torch.zeros_like(ramp), ramp) == pytest.approx(0.25)
    both = ramp + ramp.permute(0, 1, 3, 2, 4)  # + slope 0.25 along H
    assert gradient_loss(torch.zeros_like(both), both) == pytest.approx(0.5)
    assert gradient_loss(both, both) == 0


def test_vae_loss_combines_terms():
    cfg = tiny().vae
    x = torch.zeros(1, 3, 8, 8, 8)
    x_hat = torch.full_like(x, 0.5)
    mu, logvar = torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)
    loss, parts = vae_loss(x, x_hat, mu, logvar, cfg, step=10, total_steps=10)
    assert parts["rec"] == pytest.approx(0.5) and parts["kl"] == 0 and parts["grad"] == 0
    assert loss == pytest.approx(cfg.rec_weight * 0.5)


def test_sinusoidal_embedding_eq_3_6():
    t = torch.tensor([0, 5])
    emb = sinusoidal_embedding(t, 8)
    freqs = [10000 ** (-k / 4) for k in range(4)]
    expected = [math.cos(5 * f) for f in freqs] + [math.sin(5 * f) for f in freqs]
    assert torch.allclose(emb[1], torch.tensor(expected), atol=1e-5)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_film_eq_3_7_identity_at_zero_and_known_modulation():
    film = FiLM(stats_dim=8, channels=2)
    h = torch.randn(3, 2, 4, 4, 4)
    assert torch.equal(film(h, torch.randn(3, 8)), h)  # zero-initialised: identity
    with torch.no_grad():
        film.mlp[-1].bias.copy_(torch.tensor([1.0, 1.0, 2.0, 2.0]))  # gamma = 1, beta = 2
    assert torch.allclose(film(h, torch.randn(3, 8)), h * 1.1 + 0.2, atol=1e-6)


def test_controlnet_zero_init_leaves_unet_unchanged():
    cfg = tiny().unet
    model = ConditionalDenoiser(cfg, 4)
    z, t = torch.randn(2, 4, 8, 8, 8), torch.tensor([3, 70])
    stats, control = torch.randn(2, 8), torch.rand(2, 3, 8, 8, 8)
    with torch.no_grad():
        full = model(z, t, control, stats)
        bare = model.unet(z, t, stats, None)
    assert torch.equal(full, bare)
    residuals = model.controlnet(z, t, control)
    assert [r.shape[1] for r in residuals] == list(cfg.channels)
    assert all(torch.count_nonzero(r) == 0 for r in residuals)
    # ...but the ControlNet path gets gradients (its zero convolutions are trainable)
    model(z, t, control, stats).square().mean().backward()
    assert model.controlnet.outputs[0].weight.grad.abs().sum() > 0


@torch.no_grad()
def test_paper_unet_shapes_28_14_7():
    cfg = paper().unet
    model = ConditionalDenoiser(cfg, 8).eval()
    out = model(torch.randn(1, 8, 28, 28, 28), torch.tensor([500]), torch.rand(1, 3, 28, 28, 28), torch.rand(1, 8))
    assert out.shape == (1, 8, 28, 28, 28)
    sizes = [r.shape[2] for r in model.controlnet(torch.randn(1, 8, 28, 28, 28), torch.tensor([1]),
                                                   torch.rand(1, 3, 28, 28, 28))]
    assert sizes == [28, 14, 7]


def test_deterministic_trilinear_upsampling_equals_interpolate():
    import torch.nn.functional as F

    from aldm.models.blocks import trilinear_x2_by_conv

    x = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    ref = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    out = trilinear_x2_by_conv(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-12)
    g = torch.randn_like(ref)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    (grad_out,) = torch.autograd.grad(out, x, g)
    assert torch.allclose(grad_out, grad_ref, atol=1e-12)


@pytest.mark.slow
def test_deterministic_flag_runs_and_repeats(prepared_cache, tmp_path):
    """``aldm --deterministic`` trains (deterministic kernels, the conv form of the upsampling) and
    two such runs agree bit for bit."""
    import subprocess
    import sys

    for name in ("a", "b"):
        out = subprocess.run([sys.executable, "-m", "aldm.cli", "--deterministic", "train", "vae", "--data",
                              str(prepared_cache), "--out", str(tmp_path / name), "--profile", "tiny", "--steps", "2",
                              "--quiet"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    a = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert all(torch.equal(a["vae"][k], b["vae"][k]) for k in a["vae"])


def test_channels_last_decode_equals_contiguous():
    """The pipeline decodes in channels-last 3D (faster on CPU); same numbers within float tolerance."""
    torch.manual_seed(0)
    vae = VAE3D(tiny().vae).eval()
    z = torch.randn(2, tiny().vae.latent_channels, 8, 8, 8)
    with torch.inference_mode():
        ref = vae.decode(z)
        fast = vae.to(memory_format=torch.channels_last_3d).decode(z.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(ref, fast, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@torch.no_grad()
def test_split_decode_equals_whole_volume_decode(channels_last):
    """Depth slabs with halos and whole-volume instance-norm statistics: the same volume as decode(),
    for odd and anisotropic latent sizes, slabs of 1 plane up to more than the depth, and a
    conditional decoder (the VAE-GAN's) and a decoder with residual blocks at S/2 (``level_blocks``)."""
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    for cond_channels, level_blocks in ((0, 0), (2, 0), (0, 1)):
        config = dataclasses.replace(tiny().vae, level_blocks=level_blocks)
        vae = VAE3D(config, cond_channels=cond_channels).eval()
        for p in vae.parameters():  # random norms and biases too: defaults (1, 0) would hide a wrong statistic
            p.normal_(0.0, 0.3)
        for shape in ((7, 8, 9), (5, 5, 5)):
            z = torch.randn(2, config.latent_channels, *shape) + 0.5
            cond = torch.rand(2, cond_channels, *shape) if cond_channels else None
            truth = vae.double().decode(z.double(), None if cond is None else cond.double())
            vae = vae.float().to(memory_format=fmt)
            z = z.contiguous(memory_format=fmt)
            whole_error = (vae.decode(z, cond).double() - truth).abs().max()
            assert truth.std() > 0.05
            for slab in (1, 3, 7, 64):
                split_error = (vae.decode(z, cond, slab=slab).double() - truth).abs().max()
                # as close to the float64 decode as the float32 whole-volume decode is (random weights
                # make large activations: both are ~1e-5 off; a wrong halo or statistic is ~1e-1)
                assert split_error <= max(2 * whole_error, 1e-5), (slab, split_error, whole_error)
    with pytest.raises(ValueError, match="at least 1 plane"):
        vae.decode(z, cond, slab=-1)


def test_input_control_is_the_concatenated_input_and_sees_the_mask_at_initialisation():
    """input_control: the U-Net's stem acts on [z_t; control maps] (conv of the concatenation = the sum of
    the two stems), so unlike the zero-initialised ControlNet it responds to the mask from step 0; the
    default (the paper) does not have the extra stem."""
    assert ConditionalDenoiser(tiny().unet, 4).unet.control_stem is None
    cfg = dataclasses.replace(tiny().unet, input_control=True)
    model = ConditionalDenoiser(cfg, 4).eval()
    z, t = torch.randn(2, 4, 8, 8, 8), torch.tensor([3, 70])
    stats, control = torch.randn(2, 8), torch.rand(2, 3, 8, 8, 8)
    with torch.no_grad():
        concat = torch.nn.Conv3d(4 + 3, cfg.channels[0], 3, padding=1)
        concat.weight.copy_(torch.cat([model.unet.stem.weight, model.unet.control_stem.weight], dim=1))
        concat.bias.copy_(model.unet.stem.bias)
        joint = concat(torch.cat([z, control], dim=1))
        assert torch.allclose(joint, model.unet.stem(z) + model.unet.control_stem(control), atol=1e-5)
        moved = model(z, t, torch.roll(control, 3, dims=2), stats)
        assert (moved - model(z, t, control, stats)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="input_control"):
        model.unet(z, t, stats, None)


def test_spectral_loss_hand_computed_and_added_when_weighted():
    """JukeboxLoss with the orthonormal FFT: a constant offset c over M elements has one non-zero
    amplitude, c sqrt(M), at DC, so the mean squared amplitude difference is c^2; a shift in space keeps
    every amplitude, so it costs nothing (L1 would charge it)."""
    x = torch.zeros(2, 3, 8, 8, 8)
    assert spectral_loss(x + 0.5, x).item() == pytest.approx(0.25, rel=1e-5)
    wave = torch.sin(torch.arange(8.0) * math.pi / 2).view(1, 1, 1, 1, 8).expand(1, 3, 8, 8, 8)
    assert spectral_loss(torch.roll(wave, 1, dims=-1), wave).item() == pytest.approx(0.0, abs=1e-10)
    cfg = dataclasses.replace(tiny().vae, spectral_weight=2.0)
    mu, logvar = torch.zeros(2, 4, 2, 2, 2), torch.zeros(2, 4, 2, 2, 2)
    with_spectral, parts = vae_loss(x, x + 0.5, mu, logvar, cfg, step=10, total_steps=10)
    without, plain = vae_loss(x, x + 0.5, mu, logvar, tiny().vae, step=10, total_steps=10)
    assert "spectral" not in plain and parts["spectral"].item() == pytest.approx(0.25, rel=1e-5)
    assert (with_spectral - without).item() == pytest.approx(0.5, rel=1e-5)


def test_a_denoiser_without_controlnet_has_none_and_samples_through_guidance():
    """The no-ControlNet ablation (issue 24): no ControlNet parameters; the condition reaches the U-Net through
    the FiLM statistics alone, so guidance still changes the output (the statistics are dropped for null)."""
    from aldm.diffusion.guidance import GuidedNoise

    cfg = dataclasses.replace(tiny().unet, controlnet=False)
    model = ConditionalDenoiser(cfg, 4).eval()
    assert model.controlnet is None and not any(k.startswith("controlnet.") for k in model.state_dict())
    with_control = ConditionalDenoiser(tiny().unet, 4)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in with_control.parameters())
    z, t = torch.randn(2, 4, 8, 8, 8), torch.tensor([3, 70])
    stats, control = torch.randn(2, 8), torch.rand(2, 3, 8, 8, 8)
    torch.nn.init.normal_(model.unet.out[-1].weight)  # a trained-looking output layer (a zero one hides FiLM)
    films = [m for m in model.modules() if isinstance(m, FiLM)]
    assert films
    for film in films:  # and trained-looking FiLM layers: zero-initialised, they are the identity (Eq. 3.7)
        torch.nn.init.normal_(film.mlp[-1].weight)
    with torch.no_grad():
        assert torch.equal(model(z, t, control, stats), model.unet(z, t, stats, None))
        guided = GuidedNoise(model, control, stats, 3.0)(z, t)
        conditional = GuidedNoise(model, control, stats, 1.0)(z, t)
    # the null half has no statistics: guidance moves the output by far more than float rounding
    assert guided.shape == z.shape and (guided - conditional).abs().max() > 1e-2


def test_ssim_loss_is_zero_for_the_volume_itself_grows_with_blur_and_is_added_when_weighted():
    """1 - SSIM: 0 for identical volumes; a blurred copy costs more than a slightly blurred one; a constant
    offset (which L1 charges in full) costs much less than a blur of the same L1; the weighted term reaches
    vae_loss."""
    torch.manual_seed(0)
    x = 0.5 + 0.3 * (torch.rand(1, 3, 16, 16, 16) * 2 - 1)  # structure around a local mean of 0.5
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    mild = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)
    strong = torch.nn.functional.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False)
    assert 0.05 < ssim_loss(mild, x).item() < ssim_loss(strong, x).item()
    offset = x + torch.abs(mild - x).mean()  # the same L1 as the mild blur, no structure lost
    assert ssim_loss(offset, x).item() < 0.2 * ssim_loss(mild, x).item()
    cfg = dataclasses.replace(tiny().vae, ssim_weight=2.0)
    mu, logvar = torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 4, 4, 4, 4)
    weighted, parts = vae_loss(x, mild, mu, logvar, cfg, step=10, total_steps=10)
    plain, plain_parts = vae_loss(x, mild, mu, logvar, tiny().vae, step=10, total_steps=10)
    assert "ssim" not in plain_parts
    assert (weighted - plain).item() == pytest.approx(2.0 * parts["ssim"].item(), rel=1e-5)


def test_region_weight_counts_nested_brats_regions_and_weights_the_l1_term():
    """vae.tumour_weight: background 1, oedema 1 + w, necrosis 1 + 2 w, enhancing 1 + 3 w; the L1 term is the
    weight-averaged error, so an error inside the enhancing tumour costs more than the same error outside,
    and equal weights give the plain mean."""
    labels = torch.tensor([0, 2, 1, 4], dtype=torch.uint8).view(1, 1, 4, 1, 1)
    assert region_weight(labels, 2.0).flatten().tolist() == [1.0, 3.0, 5.0, 7.0]
    cfg = dataclasses.replace(tiny().vae, tumour_weight=2.0)
    x = torch.zeros(1, 2, 4, 1, 1)
    mu, logvar = torch.zeros(1, 8, 1, 1, 1), torch.zeros(1, 8, 1, 1, 1)
    inside, outside = x.clone(), x.clone()
    inside[:, :, 3] = 1.0  # an error of 1 in the enhancing voxel
    outside[:, :, 0] = 1.0  # the same error in the background voxel
    weight = region_weight(labels, cfg.tumour_weight)
    _, at_et = vae_loss(x, inside, mu, logvar, cfg, 10, 10, weight)
    _, at_bg = vae_loss(x, outside, mu, logvar, cfg, 10, 10, weight)
    assert float(at_et["rec"]) == pytest.approx(7 / 16) and float(at_bg["rec"]) == pytest.approx(1 / 16)
    _, plain = vae_loss(x, inside, mu, logvar, cfg, 10, 10)
    _, flat = vae_loss(x, inside, mu, logvar, cfg, 10, 10, torch.full_like(weight, 3.0))
    assert float(flat["rec"]) == pytest.approx(float(plain["rec"])) == pytest.approx(1 / 4)


def test_onednn_convolutions_agree_with_conv3d_and_leave_training_alone():
    """The pipelines' convolutions (models/cpu_convolution.py): the same outputs as nn.Conv3d at batch 1 on a small
    latent (where PyTorch would take its im2col path), the same state dict, gradients as before in training."""
    import torch.nn as nn

    from aldm.models.cpu_convolution import OneDNNConv3d, onednn_convolutions

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(8, 32, 3, padding=1), nn.SiLU(), nn.Conv3d(32, 8, 3, stride=2, padding=1))
    x = torch.randn(1, 8, 16, 16, 16)
    with torch.no_grad():
        before = net(x)
    keys = list(net.state_dict())
    onednn_convolutions(net)
    if torch.backends.mkldnn.is_available():
        assert isinstance(net[0], OneDNNConv3d)
    assert list(net.state_dict()) == keys
    with torch.no_grad():
        assert torch.allclose(net(x), before, atol=1e-5)
    net(x.requires_grad_()).sum().backward()  # in training the layers run as nn.Conv3d, gradients and all
    assert net[0].weight.grad is not None and x.grad is not None
