"""Held-out probes: what the EMA weights have learnt so far, measured during training.

A probe is a callable ``probe(ema_task, step) -> {name: value}`` that the trainer runs every
``probe_every`` steps on rank 0 and appends to the run's ``probe.csv``. Probes draw no random numbers
from torch's global generator (their noise is fixed when they are built), so a run with probes
trains exactly as one without, and resumes bit for bit.

* :func:`vae_probe` — reconstruction of held-out volumes through the posterior mean: PSNR (dB) and
  3D SSIM per modality, in model space [-1, 1] (data range 2), as MONAI computes them, and the sharpness
  of the reconstruction (:mod:`aldm.metrics.sharpness`: its mean gradient magnitude in the real head over
  the real volume's; 1.0 = as sharp);
* :func:`ldm_probe` — the denoiser's conditional noise-prediction MSE (Eq. 3.9 without the tumour
  weight) on held-out latents, per band of timesteps, with fixed t and noise: learning shows as the
  low- and mid-t bands falling; the high-t band stays near its floor. Their mean is the figure a stage
  with ``select_by_probe`` keeps the best weights by (a few-shot stage that starts to learn its K
  patients by heart shows as this figure rising on other patients).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..metrics.sharpness import gradient_sharpness, head_mask
from ..modalities import file_stems


def vae_probe(images: torch.Tensor, modalities, labels: torch.Tensor | None = None) -> Callable:
    """Probe of a VAE task on held-out volumes ``images`` (P, C, S, S, S) in [-1, 1], channel c being
    ``modalities[c]``, with their label maps ``labels`` (P, 1, S, S, S; a ``decoder_regions`` VAE decodes with
    them): PSNR, 3D SSIM and sharpness of the reconstruction per modality."""
    from monai.metrics import PSNRMetric, SSIMMetric

    psnr, ssim = PSNRMetric(max_val=2.0), SSIMMetric(spatial_dims=3, data_range=2.0)

    def probe(task, step: int) -> dict:
        device = next(task.parameters()).device
        out: dict = {}
        for i in range(len(images)):
            x = images[i:i + 1].to(device)
            mu, _ = task.vae.encode(x)
            x_hat = task.vae.decode(mu, labels=None if labels is None else labels[i:i + 1].to(device))
            x_hat = x_hat.float().clamp(-1, 1).cpu()
            real = images[i].numpy()
            head = head_mask(real)
            ratio = gradient_sharpness(x_hat[0].numpy(), head) / gradient_sharpness(real, head)
            for c, name in enumerate(file_stems(modalities)):
                a, b = x_hat[:, c:c + 1].cpu(), images[i:i + 1, c:c + 1]
                out.setdefault(f"psnr_{name}", []).append(float(psnr(a, b).mean()))
                out.setdefault(f"ssim_{name}", []).append(float(ssim(a, b).mean()))
                out.setdefault(f"sharp_{name}", []).append(float(ratio[c]))
        return {k: sum(v) / len(v) for k, v in out.items()}

    return probe


SELECTION = "mse_mean"  # the LDM probe's figure for checkpoint selection: its bands' mean


def ldm_probe(encoded: dict, timesteps: int, bands: int = 4, per_band: int = 4, seed: int = 0) -> Callable:
    """Probe of an LDM task on held-out subjects' cached posteriors ``encoded`` (as
    :func:`aldm.train.stages.encode_subjects` returns): MSE per band of ``timesteps`` / ``bands`` steps,
    ``per_band`` evenly spaced t per band, noise fixed by ``seed``, and their mean (``mse_mean``, the figure
    ``select_by_probe`` minimises: the probe's ``selection`` attribute names it)."""
    g = torch.Generator().manual_seed(seed)
    n = encoded["mu"].shape[0]
    edges = [round(timesteps * b / bands) for b in range(bands + 1)]
    batches = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        ts = torch.linspace(lo, hi - 1, per_band).round().long()
        t = ts.repeat_interleave(n)
        idx = torch.arange(n).repeat(per_band)
        batch = {key: encoded[key][idx] for key in ("mu", "logvar", "control", "stats", "weight")}
        batch["eps_posterior"] = torch.zeros_like(batch["mu"])  # the posterior mean
        batch["eps"] = torch.randn(batch["mu"].shape, generator=g)
        batch["t"] = t
        batch["keep"] = torch.ones(len(t))
        batches.append((f"mse_t{lo}-{hi - 1}", batch))

    def probe(task, step: int) -> dict:
        out = {}
        for name, batch in batches:
            eps, eps_hat, _ = task.noise_prediction(batch)
            out[name] = float((eps - eps_hat).square().mean())  # plain MSE: no tumour or SNR weight
        out[SELECTION] = sum(out.values()) / len(out)
        return out

    probe.selection = SELECTION  # what TrainConfig.select_by_probe minimises
    return probe
