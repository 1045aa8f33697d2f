"""Seconds per generated 3x112^3 volume and per training step, paper profile, on the present device.

Run: ``python benchmarks/aldm_speed.py [--device cuda] [--ddim-steps 50] [--reps 3] [--json out.json]``

Measured directly: one guided denoiser step (cond + uncond batched, batch 1 -> 2), one VAE decode,
a complete DDIM run of ``--measure-steps`` steps (decode included), one VAE and one LDM training
step (batch 1, forward + backward + AdamW). Derived: DDPM-1000 and DDIM-50 per volume =
steps x (guided step) + decode, stated as such. FLOPs per step from torch.utils.flop_counter.
Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from aldm.config import paper
from aldm.data.control import control_maps, mask_statistics
from aldm.diffusion.guidance import guided_noise
from aldm.diffusion.samplers import initial_noise, sample_ddim
from aldm.diffusion.schedule import NoiseSchedule
from aldm.models.unet import ConditionalDenoiser
from aldm.models.vae import VAE3D, vae_loss


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps: int) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / reps


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--measure-steps", type=int, default=5, help="DDIM steps of the end-to-end run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    prof = paper()
    s, zc = prof.latent_size, prof.vae.latent_channels
    vae = VAE3D(prof.vae).to(device)
    den = ConditionalDenoiser(prof.unet, zc).to(device)
    mask = torch.zeros(1, 1, 112, 112, 112)
    mask[..., 40:70, 40:70, 40:70] = 1
    control, stats = control_maps(mask, s).to(device), mask_statistics(mask).to(device)
    z = torch.randn(1, zc, s, s, s, device=device)
    t = torch.tensor([500], device=device)
    out = {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
           "threads": torch.get_num_threads()}

    with torch.inference_mode():
        step = lambda: guided_noise(den, z, t, control, stats, 3.0)  # noqa: E731
        out["guided_step_s"] = timed(step, device, args.reps)
        out["guided_step_gflop"] = flops(step) / 1e9
        decode = lambda: vae.decode(z)  # noqa: E731
        out["vae_decode_s"] = timed(decode, device, max(1, args.reps // 2))
        schedule = NoiseSchedule(prof.diffusion)
        gens = [torch.Generator().manual_seed(0)]

        def run():
            zt = initial_noise((1, zc, s, s, s), gens, device)
            z0 = sample_ddim(lambda a, b: guided_noise(den, a, b, control, stats, 3.0), schedule, zt,
                             args.measure_steps)
            return vae.decode(z0)

        out[f"ddim{args.measure_steps}_end_to_end_s"] = timed(run, device, 1)
    out["ddpm1000_per_volume_s_derived"] = 1000 * out["guided_step_s"] + out["vae_decode_s"]
    out["ddim50_per_volume_s_derived"] = 50 * out["guided_step_s"] + out["vae_decode_s"]
    out["guided_step_gflop_per_s"] = out["guided_step_gflop"] / out["guided_step_s"]

    x = torch.rand(1, 3, 112, 112, 112, device=device) * 2 - 1
    opt_vae = torch.optim.AdamW(vae.parameters(), lr=1e-4)

    def vae_step():
        opt_vae.zero_grad(set_to_none=True)
        mu, logvar = vae.encode(x)
        x_hat = vae.decode(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
        loss, _ = vae_loss(x, x_hat, mu, logvar, prof.vae, 10, 100)
        loss.backward()
        opt_vae.step()

    out["vae_train_step_s"] = timed(vae_step, device, max(1, args.reps // 2))
    out["vae_train_step_gflop"] = flops(vae_step) / 1e9
    opt_den = torch.optim.AdamW(den.parameters(), lr=1e-4)

    def ldm_step():
        opt_den.zero_grad(set_to_none=True)
        eps = torch.randn_like(z)
        loss = (den(z, t, control, stats) - eps).square().mean()
        loss.backward()
        opt_den.step()

    out["ldm_train_step_s"] = timed(ldm_step, device, args.reps)
    out["ldm_train_step_gflop"] = flops(ldm_step) / 1e9
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    text = json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
