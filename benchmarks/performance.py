"""Issue 8's benchmark: one run, on whatever device is present, writes JSON + a Markdown table.

    python benchmarks/performance.py                         # every section, this device
    python benchmarks/performance.py --sections sampling,peers --reps 2
    python benchmarks/performance.py --sections quality --quality-model runs/k16 --quality-n 8
    python benchmarks/performance.py --update-docs           # also splice the table into docs/performance.md

Sections (paper profile, 112^3 volumes, random weights unless it says otherwise; speed does not
depend on the weights):

* ``sampling``  one guided denoiser step as the samplers run it (aldm.diffusion.guidance.GuidedNoise:
  cond + null in one forward sharing the z_t layers) and as one stacked batch, with FLOPs
  (torch.utils.flop_counter) and achieved FLOP/s, one VAE decode, and seconds per generated
  3x112^3 volume for DDPM-1000, DDIM-50, DDIM-25, DPM-Solver++(2M)-20 and -10 — in fp32, and under
  bf16 autocast where the device computes bf16 natively. With ``--full`` every sampler runs end to
  end; otherwise (the CPU default) per volume = steps x step + hint + decode, marked "derived".
* ``training``  the VAE and the LDM (U-Net + ControlNet, tumour-weighted loss) training step at
  112^3, batch 1: seconds, volumes/s and peak memory (CUDA: max allocated; CPU: the peak resident
  size of a child process that runs only that step); fp32, and bf16 autocast (``:bf16``, what the
  trainer uses) where the device computes bf16 natively (aldm.precision).
* ``batches``   the ``gpu`` profile's VAE (on its 64^3 training crops) and LDM training steps, through the
  training tasks themselves, at batch 1, 2, 3, 4: seconds, volumes/s and peak memory, each in its own
  process (issue 23: what a GPU user's batch size costs).
* ``peers``     MONAI's ``AutoencoderKL`` (64/128/256, no attention, latent 8 x 28^3) training step
  and ``DiffusionModelUNet`` (96/192/384, no attention) guided step, alone and with MONAI's
  ``ControlNet`` at the same widths, measured in the same run; ratios ours / MONAI.
* ``scaling``   guided step + decode for volumes of 64, 96, 112, 128, 160 cubed, and per-volume
  time for batches of 1, 2, 4 at 112^3 (DPM-Solver++-20).
* ``quality``   (needs ``--quality-model``, a trained ALDM run) the samplers against DDPM-1000 on
  the model's held-out masks: FRD per sampler set vs the DDPM-1000 set, and mean 3D SSIM of each
  sample to the DDPM-1000 sample of the same mask and seed, and to the DDIM-1000 sample (the
  probability-flow ODE's solution that DDIM and DPM-Solver++ approximate).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from aldm.allocator import current_allocator, relaunch_with_fast_allocator
from aldm.config import paper
from aldm.data.control import control_maps, latent_tumour_weight_mask, mask_statistics
from aldm.diffusion.guidance import GuidedNoise, guided_noise
from aldm.models.unet import ConditionalDenoiser
from aldm.models.vae import VAE3D, vae_loss
from aldm.precision import autocast, native_bf16, with_bf16_weights

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("ddim", 25), ("dpmpp2m", 20), ("dpmpp2m", 10))
STUDENT_STEPS = (4, 2, 1)  # a distilled student's steps (one network evaluation each)
SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp2m": "DPM-Solver++(2M)"}
SECTIONS = ("sampling", "training", "batches", "peers", "scaling", "quality")
DOC_START, DOC_END = "<!-- performance.py:start -->", "<!-- performance.py:end -->"


# ---------------------------------------------------------------------------------------------- utils
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int) -> float:
    """Mean seconds of ``fn`` over ``reps`` calls after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def timed_interleaved(fns: dict, device: torch.device, reps: int) -> dict:
    """Median seconds per call of each of ``fns`` (name -> callable), called in turn ``reps`` times
    (A, B, A, B, ...) after one warm-up each, so that a drift of the machine's speed during the
    run (this VM's drifts by a quarter) hits every candidate alike and their ratio stays fair."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def tumour_mask(size: int) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size, size)
    a, b = int(size * 0.36), int(size * 0.62)
    m[..., a:b, a:b, a:b] = 1
    return m


def aldm_inputs(size: int, batch: int, device: torch.device):
    prof = dataclasses.replace(paper(), image_size=size)
    s, zc = prof.latent_size, prof.vae.latent_channels
    mask = tumour_mask(size).expand(batch, -1, -1, -1, -1)
    control, stats = control_maps(mask, s).to(device), mask_statistics(mask).to(device)
    z = torch.randn(batch, zc, s, s, s, device=device)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)
    return prof, mask, control, stats, z, t


# -------------------------------------------------------------------------------------------- sections
def section_sampling(device: torch.device, reps: int, full: bool) -> dict:
    """fp32, and bf16 autocast where the device computes bf16 natively (aldm.precision; what
    ``--precision auto`` picks there). Keys of the bf16 figures end in ``_bf16``."""
    from aldm.diffusion.samplers import initial_noise, run_sampler
    from aldm.diffusion.schedule import NoiseSchedule

    prof, _, control, stats, z, t = aldm_inputs(112, 1, device)
    vae = VAE3D(prof.vae).to(device, memory_format=torch.channels_last_3d).eval()
    z_cl = z.contiguous(memory_format=torch.channels_last_3d)
    den = ConditionalDenoiser(prof.unet, prof.vae.latent_channels).to(device).eval()
    precisions = ("fp32", "bf16") if native_bf16(device) else ("fp32",)
    out = {"precisions": list(precisions)}
    # under bf16 the pipeline runs a copy of the denoiser with bf16 weights (aldm.precision.with_bf16_weights)
    nets = {"fp32": den, **({"bf16": with_bf16_weights(den)} if "bf16" in precisions else {})}
    with torch.inference_mode():
        guided = {}
        for precision, net in nets.items():
            with autocast(device, precision):
                guided[precision] = GuidedNoise(net, control, stats, 3.0)

        def step(precision="fp32"):  # what the samplers run per step
            with autocast(device, precision):
                return guided[precision](z, t)

        stacked = lambda: guided_noise(den, z, t, control, stats, 3.0)  # noqa: E731  ([cond, null] stacked, all layers)

        def decode(precision="fp32"):
            with autocast(device, precision):
                return vae.decode(z_cl)

        times = timed_interleaved({"step": step, "stacked": stacked,
                                   **({"step_bf16": lambda: step("bf16")} if "bf16" in precisions else {})},
                                  device, max(2, reps))
        out["guided_step_s"], out["guided_step_stacked_s"] = times["step"], times["stacked"]
        out["guided_step_gflop"], out["guided_step_stacked_gflop"] = gflop(step), gflop(stacked)
        out["guided_step_gflop_per_s"] = out["guided_step_gflop"] / out["guided_step_s"]
        out["guided_prepare_s"] = timed(lambda: GuidedNoise(den, control, stats, 3.0), device, reps)  # once a run
        # a distilled student (aldm.train.distillation): the guidance scale an input, one forward of batch 1 a step
        student = ConditionalDenoiser(dataclasses.replace(prof.unet, guidance_input=True),
                                      prof.vae.latent_channels).to(device).eval()
        student_step = GuidedNoise(student, control, stats, 3.0)
        out["student_step_s"] = timed(lambda: student_step(z, t), device, max(2, reps))
        times_decode = timed_interleaved({p: (lambda p=p: decode(p)) for p in precisions}, device,
                                         max(1, reps // 2))
        out["vae_decode_s"] = times_decode["fp32"]
        out["vae_decode_gflop"] = gflop(decode)
        if "bf16" in precisions:
            out["guided_step_bf16_s"], out["vae_decode_bf16_s"] = times["step_bf16"], times_decode["bf16"]
        schedule = NoiseSchedule(prof.diffusion)
        for precision in precisions:
            tag = "" if precision == "fp32" else "_bf16"
            for sampler, steps in SAMPLERS:
                key = f"{sampler}{steps}_per_volume_s{tag}"
                if not full:
                    out[key + "_derived"] = (steps * out[f"guided_step{tag}_s"] + out["guided_prepare_s"]
                                             + out[f"vae_decode{tag}_s"])
                    continue
                gens = [torch.Generator().manual_seed(0)]

                def run(sampler=sampler, steps=steps, gens=gens, precision=precision):
                    zt = initial_noise(tuple(z.shape), gens, device)
                    with autocast(device, precision):
                        guided_run = GuidedNoise(nets[precision], control, stats, 3.0)

                    def eps(a, b):
                        with autocast(device, precision):
                            return guided_run(a, b).float()

                    z0 = run_sampler(sampler, eps, schedule, zt, steps, gens)
                    with autocast(device, precision):
                        return vae.decode(z0.contiguous(memory_format=torch.channels_last_3d))

                out[key] = timed(run, device, 1)
    for steps in STUDENT_STEPS:  # derived: steps x student step + hint + decode
        out[f"student{steps}_per_volume_s_derived"] = (steps * out["student_step_s"] + out["guided_prepare_s"]
                                                       + out["vae_decode_s"])
    ref = out.get("ddpm1000_per_volume_s", out.get("ddpm1000_per_volume_s_derived"))
    for precision in precisions:
        tag = "" if precision == "fp32" else "_bf16"
        for sampler, steps in SAMPLERS[1 if precision == "fp32" else 0:]:
            key = f"{sampler}{steps}_per_volume_s{tag}"
            mine = out.get(key, out.get(key + "_derived"))
            out[f"{sampler}{steps}{tag}_speedup_vs_ddpm1000"] = ref / mine
    return out


def _vae_train_step(device):
    prof = paper()
    vae = VAE3D(prof.vae).to(device)
    x = torch.rand(1, 3, 112, 112, 112, device=device) * 2 - 1
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        mu, logvar = vae.encode(x)
        x_hat = vae.decode(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
        loss, _ = vae_loss(x, x_hat, mu, logvar, prof.vae, 10, 100)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in vae.parameters())


def _ldm_train_step(device):
    prof, mask, control, stats, z, t = aldm_inputs(112, 1, device)
    den = ConditionalDenoiser(prof.unet, prof.vae.latent_channels).to(device)
    weight = (1 + prof.diffusion.tumour_weight * latent_tumour_weight_mask(mask, prof.latent_size)).to(device)
    opt = torch.optim.AdamW(den.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        noise = torch.randn_like(z)
        loss = (weight * (den(z, t, control, stats) - noise).square()).mean()  # Eq. 3.9
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in den.parameters())


def _monai_vae_train_step(device):
    from monai.networks.nets import AutoencoderKL

    ae = AutoencoderKL(spatial_dims=3, in_channels=3, out_channels=3, channels=(64, 128, 256), latent_channels=8,
                       num_res_blocks=1, attention_levels=(False, False, False), with_encoder_nonlocal_attn=False,
                       with_decoder_nonlocal_attn=False, norm_num_groups=32).to(device)
    x = torch.rand(1, 3, 112, 112, 112, device=device) * 2 - 1
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        recon, mu, sigma = ae(x)
        kl = 0.5 * (mu.square() + sigma.square() - torch.log(sigma.square() + 1e-8) - 1).sum() / x.shape[0]
        loss = (recon - x).abs().mean() + 1e-4 * kl
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in ae.parameters())


def _gpu_profile_step(stage: str, batch: int, device):
    """One optimisation step of the ``gpu`` profile's ``stage`` (``vae``: the VAE task on its 64^3 training
    crops; ``ldm``: the LDM task, v-prediction, on 8 x 28^3 latents) at ``batch``, through the training
    tasks themselves (aldm.train.stages); returns (step, parameter count)."""
    from aldm.config import gpu
    from aldm.diffusion.schedule import NoiseSchedule
    from aldm.train.stages import LDMTask, VAETask

    prof = gpu()
    if stage == "vae":
        task = VAETask(VAE3D(prof.vae)).to(device)
        crop, zc = prof.vae.train_crop or prof.image_size, prof.vae.latent_channels
        data = {"image": torch.rand(batch, 3, crop, crop, crop, device=device) * 2 - 1,
                "eps": torch.randn(batch, zc, crop // 4, crop // 4, crop // 4, device=device)}
    else:
        _, mask, control, stats, z, _ = aldm_inputs(prof.image_size, batch, device)
        zc = prof.vae.latent_channels
        task = LDMTask(ConditionalDenoiser(prof.unet, zc), NoiseSchedule(prof.diffusion), prof.diffusion.tumour_weight,
                       torch.zeros(zc), torch.ones(zc)).to(device)
        data = {"mu": z, "logvar": torch.full_like(z, -4.0), "eps_posterior": torch.randn_like(z),
                "eps": torch.randn_like(z), "t": torch.randint(prof.diffusion.timesteps, (batch,), device=device),
                "control": control, "stats": stats, "keep": torch.ones(batch, device=device),
                "weight": latent_tumour_weight_mask(mask, prof.latent_size).to(device)}
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = task(data, 10, 100)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in task.parameters())


TRAIN_STEPS = {"aldm_vae": _vae_train_step, "aldm_ldm": _ldm_train_step, "monai_autoencoderkl": _monai_vae_train_step}


def _measure_train(name: str, device: torch.device, reps: int) -> dict:
    """``name`` is a TRAIN_STEPS key, optionally with ``:bf16`` (the step under bf16 autocast, as the
    trainer runs on a GPU)."""
    base, _, precision = name.partition(":")
    if base.startswith("gpu-"):  # gpu-<stage>-<batch>[:bf16]: the gpu profile's stage at that batch size
        _, stage, batch = base.split("-")
        plain, params = _gpu_profile_step(stage, int(batch), device)
    else:
        plain, params = TRAIN_STEPS[base](device)
    if precision == "bf16":
        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                plain()
    else:
        step = plain
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = timed(step, device, reps)
    batch = int(base.rsplit("-", 1)[1]) if base.startswith("gpu-") else 1
    out = {"step_s": sec, "volumes_per_s": batch / sec, "gflop": gflop(step), "params_m": params / 1e6}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        out["peak_rss_gib"] = _peak_rss_gib()
    return out


def _peak_rss_gib() -> float:
    """Peak resident size of this process's memory since its exec (VmHWM; ru_maxrss would carry the
    parent's peak over a fork + exec)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _measure(name: str, device: torch.device, reps: int) -> dict:
    if name.startswith("scale:"):
        _, size, batch = name.split(":")
        return _measure_scale(int(size), int(batch), device, reps)
    if name.startswith("decode:"):
        _, size, slab = name.split(":")
        return _measure_decode(int(size), int(slab), device)
    return _measure_train(name, device, reps)


def _in_child(name: str, device: torch.device, reps: int) -> dict:
    """Run one measurement in a fresh process (clean peak memory; an out-of-memory case fails alone)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, "--device", str(device),
                          "--reps", str(reps)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1][:300],
                "exit_code": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def section_training(device: torch.device, reps: int) -> dict:
    names = ("aldm_vae", "aldm_ldm") + (("aldm_vae:bf16", "aldm_ldm:bf16") if native_bf16(device) else ())
    return {name: _in_child(name, device, max(1, reps // 2) if "vae" in name else reps) for name in names}


def section_batches(device: torch.device, reps: int, batches=(1, 2, 3, 4)) -> dict:
    """The ``gpu`` profile's VAE (64^3 crops) and LDM training steps at each batch size, each in its own process
    (its peak memory alone); fp32, and bf16 autocast where the device computes bf16 natively."""
    tags = ("",) + ((":bf16",) if native_bf16(device) else ())
    return {f"gpu-{stage}-{b}{tag}": _in_child(f"gpu-{stage}-{b}{tag}", device, reps)
            for stage in ("vae", "ldm") for b in batches for tag in tags}


def section_peers(device: torch.device, reps: int, training: dict | None) -> dict:
    """MONAI's U-Net (and + ControlNet) guided step timed interleaved with ours (:func:`timed_interleaved`),
    so the ratios do not depend on when in the run each was measured; MONAI's AutoencoderKL training step."""
    from monai.networks.nets import ControlNet, DiffusionModelUNet

    out = {}
    prof, _, control, stats, z1, t1 = aldm_inputs(112, 1, device)
    den = ConditionalDenoiser(prof.unet, prof.vae.latent_channels).to(device).eval()
    z, t = torch.cat([z1, z1]), torch.cat([t1, t1])  # a guided step of a plain U-Net: [cond, null] as batch 2
    cond = torch.randn(2, 3, 28, 28, 28, device=device)
    kw = dict(spatial_dims=3, channels=(96, 192, 384), attention_levels=(False, False, False), num_res_blocks=1,
              norm_num_groups=32)
    unet = DiffusionModelUNet(in_channels=8, out_channels=8, **kw).to(device).eval()
    ctrl = ControlNet(in_channels=8, conditioning_embedding_in_channels=3, conditioning_embedding_num_channels=(32,),
                      **kw).to(device).eval()
    with torch.inference_mode():
        guided = GuidedNoise(den, control, stats, 3.0)

        def with_control():
            down, mid = ctrl(z, t, cond)
            return unet(z, t, down_block_additional_residuals=down, mid_block_additional_residual=mid)

        fns = {"aldm_guided_step": lambda: guided(z1, t1), "monai_unet_guided_step": lambda: unet(z, t),
               "monai_unet_controlnet_guided_step": with_control}
        times = timed_interleaved(fns, device, max(3, reps))
        for name, fn in fns.items():
            out[name + "_s"] = times[name]
            out[name + "_gflop"] = gflop(fn)
            out[name + "_gflop_per_s"] = out[name + "_gflop"] / out[name + "_s"]
    out["ratio_guided_step_vs_monai_unet"] = out["aldm_guided_step_s"] / out["monai_unet_guided_step_s"]
    out["ratio_guided_step_vs_monai_unet_controlnet"] = (out["aldm_guided_step_s"]
                                                         / out["monai_unet_controlnet_guided_step_s"])
    out["monai_autoencoderkl_train"] = _in_child("monai_autoencoderkl", device, max(1, reps // 2))
    if training and "step_s" in training["aldm_vae"] and "step_s" in out["monai_autoencoderkl_train"]:
        out["ratio_vae_step_vs_monai"] = (training["aldm_vae"]["step_s"]
                                          / out["monai_autoencoderkl_train"]["step_s"])
    return out


def _measure_scale(size: int, batch: int, device: torch.device, reps: int) -> dict:
    """Guided step and VAE decode of ``batch`` volumes of ``size``^3 (paper widths), with peak memory."""
    prof, _, control, stats, z, t = aldm_inputs(size, batch, device)
    den = ConditionalDenoiser(prof.unet, prof.vae.latent_channels).to(device).eval()
    vae = VAE3D(prof.vae).to(device, memory_format=torch.channels_last_3d).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        guided = GuidedNoise(den, control, stats, 3.0)
        step = timed(lambda: guided(z, t), device, reps)
        zc = z.contiguous(memory_format=torch.channels_last_3d)
        decode = timed(lambda: vae.decode(zc), device, 1)
    out = {"guided_step_s": step, "vae_decode_s": decode,
           "dpmpp2m20_per_volume_s_derived": (20 * step + decode) / batch}
    out["peak_memory_gib" if device.type == "cuda" else "peak_rss_gib"] = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else _peak_rss_gib())
    return out


def _measure_decode(size: int, slab: int, device: torch.device) -> dict:
    """One VAE decode of a (1, 8, size/4, ...) latent, whole (slab 0) or in depth slabs, with peak memory."""
    from aldm.models.split_decode import decode_in_slabs

    prof = dataclasses.replace(paper(), image_size=size)
    vae = VAE3D(prof.vae).to(device, memory_format=torch.channels_last_3d).eval()
    s = prof.latent_size
    z = torch.randn(1, prof.vae.latent_channels, s, s, s, device=device).contiguous(
        memory_format=torch.channels_last_3d)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        seconds = timed(lambda: decode_in_slabs(vae, z, slab=slab) if slab else vae.decode(z), device, 1)
    out = {"vae_decode_s": seconds}
    out["peak_memory_gib" if device.type == "cuda" else "peak_rss_gib"] = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else _peak_rss_gib())
    return out


def section_scaling(device: torch.device, reps: int, sizes=(64, 96, 112, 128, 160), batches=(1, 2, 4)) -> dict:
    """Each (size, batch) in its own process: clean peak memory, and a large case cannot take the others down."""
    out = {"size": {}, "batch": {}}
    for size in sizes:
        out["size"][size] = _in_child(f"scale:{size}:1", device, reps)
    for batch in batches:
        out["batch"][batch] = out["size"][112] if batch == 1 and 112 in sizes else _in_child(f"scale:112:{batch}",
                                                                                              device, reps)
    out["split_decode"] = {f"{size}:{slab}": _in_child(f"decode:{size}:{slab}", device, 1)
                           for size in (112, 160) for slab in (0, 16)}
    return out


def section_quality(device: torch.device, model: str, n: int, seed: int = 0) -> dict:
    import numpy as np

    from aldm.artifacts.run import Run
    from aldm.data.masks import masks_from_cache
    from aldm.diffusion.settings import GenerationSettings
    from aldm.metrics.frd import frd_scores
    from aldm.metrics.similarity import ssim_3d
    from aldm.pipeline import ALDMPipeline

    pipe = ALDMPipeline.from_pretrained(model, device=str(device), precision="fp32")
    items = masks_from_cache(pipe.info["data"], None, Run(model))[:n]
    masks = np.stack([it.mask for it in items]).astype(np.float32)
    seeds = [seed + i for i in range(len(items))]
    other_seeds = [seed + 100_000 + i for i in range(len(items))]
    # name, sampler, steps, seeds, precision. DDPM-1000 with other seeds is a second draw from the
    # reference distribution: its FRD to the first is the floor that n samples allow. The bf16 rows
    # run the denoiser and decoder under bf16 autocast (aldm.precision), the same seeds.
    runs = [*((f"{a}{b}", a, b, seeds, "fp32") for a, b in SAMPLERS), ("ddim1000", "ddim", 1000, seeds, "fp32"),
            ("ddpm1000_other_seeds", "ddpm", 1000, other_seeds, "fp32"),
            ("dpmpp2m20_bf16", "dpmpp2m", 20, seeds, "bf16"), ("ddim50_bf16", "ddim", 50, seeds, "bf16"),
            ("ddpm1000_bf16", "ddpm", 1000, seeds, "bf16")]
    sets, seconds = {}, {}
    for name, sampler, steps, run_seeds, precision in runs:
        pipe.precision = precision
        start = time.perf_counter()
        settings = GenerationSettings(guidance=3.0, sampler=sampler, steps=steps)
        sets[name] = [v.numpy() for v in pipe(masks, settings, generator=run_seeds)["image"]]
        seconds[name] = (time.perf_counter() - start) / len(items)
    ref, ode = sets["ddpm1000"], sets["ddim1000"]
    out = {"model": os.path.abspath(model), "n": len(items), "image_size": pipe.profile.image_size}
    for name, vols in sets.items():
        same_seeds = name != "ddpm1000_other_seeds"
        row = {"s_per_volume": seconds[name],
               "ssim3d_vs_ddpm1000_same_seed": float(np.mean([ssim_3d(a, b) for a, b in zip(ref, vols)]))
               if same_seeds else None,
               "ssim3d_vs_ddim1000_same_seed": float(np.mean([ssim_3d(a, b) for a, b in zip(ode, vols)]))
               if same_seeds else None}
        if name != "ddpm1000":
            row["frd_vs_ddpm1000"] = frd_scores(ref, vols)["frd_mean"]
        out[name] = row
    return out


# ------------------------------------------------------------------------------------------- reporting
def _f(v, digits=3):
    return "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _peak(row: dict):
    return row.get("peak_memory_gib", row.get("peak_rss_gib"))


def _failed_row(label: str, row: dict, columns: int) -> str:
    return f"| {label} | failed: {row['error']} |" + " |" * (columns - 1)


def markdown(result: dict) -> str:
    lines = [f"Device: **{result['device']}**, torch {result['torch']}, allocator {result['allocator']}, "
             f"{result['date']}, `python benchmarks/performance.py {result['argv']}`", ""]
    s = result.get("sampling")
    if s:
        lines += ["| paper profile (112^3) | value |", "|---|---|",
                  f"| guided denoiser step (cond + null, z_t layers shared; what the samplers run) | "
                  f"{_f(s['guided_step_s'])} s, {_f(s['guided_step_gflop'], 0)} GFLOP, "
                  f"{_f(s['guided_step_gflop_per_s'], 0)} GFLOP/s |",
                  f"| the same step as one stacked batch of 2 through every layer | "
                  f"{_f(s['guided_step_stacked_s'])} s, {_f(s['guided_step_stacked_gflop'], 0)} GFLOP |",
                  f"| once per sampling run: ControlNet hint of [cond, null] | {_f(s['guided_prepare_s'])} s |",
                  *([f"| a distilled student's step (guidance an input: one forward of batch 1) | "
                     f"{_f(s['student_step_s'])} s |"] if "student_step_s" in s else []),
                  f"| VAE decode 8 x 28^3 -> 3 x 112^3 | {_f(s['vae_decode_s'])} s, "
                  f"{_f(s['vae_decode_gflop'], 0)} GFLOP |"]
        for key, label in (("guided_step_bf16_s", "guided step, bf16 autocast"),
                           ("vae_decode_bf16_s", "VAE decode, bf16 autocast")):
            if key in s:
                lines.append(f"| {label} | {_f(s[key])} s |")
        for precision in s.get("precisions", ["fp32"]):
            tag = "" if precision == "fp32" else "_bf16"
            for sampler, steps in SAMPLERS:
                key = f"{sampler}{steps}_per_volume_s{tag}"
                value = s.get(key, s.get(key + "_derived"))
                how = ", ".join(([] if precision == "fp32" else ["bf16 autocast"])
                                + ([] if key in s else ["derived: steps x step + hint + decode"]))
                speed = s.get(f"{sampler}{steps}{tag}_speedup_vs_ddpm1000")
                faster = f", {_f(speed, 1)}x faster than fp32 DDPM-1000" if speed else ""
                lines.append(f"| {SAMPLER_NAMES[sampler]}-{steps} per volume{f' ({how})' if how else ''} | "
                             f"{_f(value, 2)} s{faster} |")
        for steps in STUDENT_STEPS:
            key = f"student{steps}_per_volume_s_derived"
            if key in s:
                lines.append(f"| distilled student, {steps} steps per volume (derived: steps x student step + hint + "
                             f"decode) | {_f(s[key], 2)} s |")
        lines.append("")
    tr = result.get("training")
    if tr:
        lines += ["| training step at 112^3, batch 1 | s / step | volumes / s | GFLOP | peak memory (GiB) "
                  "| params (M) |", "|---|---|---|---|---|---|"]
        peers = (result.get("peers") or {}).get("monai_autoencoderkl_train")
        for name, row in (*tr.items(), *((("monai_autoencoderkl", peers),) if peers else ())):
            if "error" in row:
                lines.append(_failed_row(name, row, 5))
                continue
            mem = _peak(row)
            lines.append(f"| {name} | {_f(row['step_s'], 2)} | {_f(row['volumes_per_s'], 3)} | {_f(row['gflop'], 0)} | "
                         f"{_f(mem, 2)} | {_f(row['params_m'], 1)} |")
        lines += ["", "(peak memory: CUDA max allocated, or on CPU the peak resident size of a process "
                  "running only that step)", ""]
    bt = result.get("batches")
    if bt:
        lines += ["| `gpu` profile training step (VAE on 64^3 crops; LDM on 8 x 28^3 latents) | s / step | "
                  "volumes / s | peak memory (GiB) |", "|---|---|---|---|"]
        for name, row in bt.items():
            _, stage, batch = name.split(":")[0].split("-")
            label = f"{stage.upper()}, batch {batch}{', bf16 autocast' if name.endswith(':bf16') else ''}"
            if "error" in row:
                lines.append(_failed_row(label, row, 3))
                continue
            lines.append(f"| {label} | {_f(row['step_s'], 2)} | {_f(row['volumes_per_s'], 3)} | "
                         f"{_f(_peak(row), 2)} |")
        lines.append("")
    p = result.get("peers")
    if p:
        lines += ["| peer (same run, timed interleaved, median) | s / guided step | GFLOP | GFLOP/s |",
                  "|---|---|---|---|"]
        for name, label in (("aldm_guided_step", "ALDM U-Net + ControlNet (ours)"),
                            ("monai_unet_guided_step", "MONAI DiffusionModelUNet 96/192/384"),
                            ("monai_unet_controlnet_guided_step", "MONAI DiffusionModelUNet + ControlNet")):
            lines.append(f"| {label} | {_f(p[name + '_s'])} | {_f(p[name + '_gflop'], 0)} | "
                         f"{_f(p[name + '_gflop_per_s'], 0)} |")
        lines.append("")
        for key in ("ratio_guided_step_vs_monai_unet", "ratio_guided_step_vs_monai_unet_controlnet",
                    "ratio_vae_step_vs_monai"):
            if key in p:
                lines.append(f"- {key.replace('_', ' ')}: **{_f(p[key], 2)}**")
        lines.append("")
    sc = result.get("scaling")
    if sc:
        head = "| guided step (s) | VAE decode (s) | DPM-Solver++-20 per volume (s, derived) | peak memory (GiB) |"
        for key, label, unit in (("size", "volume", "^3"), ("batch", "batch at 112^3", "")):
            lines += [f"| {label} {head}", "|---|---|---|---|---|"]
            for value, row in sc[key].items():
                if "error" in row:
                    lines.append(_failed_row(f"{value}{unit}", row, 4))
                    continue
                mem = _peak(row)
                lines.append(f"| {value}{unit} | {_f(row['guided_step_s'])} | {_f(row['vae_decode_s'], 2)} | "
                             f"{_f(row['dpmpp2m20_per_volume_s_derived'], 2)} | {_f(mem, 2)} |")
            lines.append("")
        if sc.get("split_decode"):
            lines += ["| VAE decode, batch 1 (own process) | s | peak memory (GiB) |", "|---|---|---|"]
            for key, row in sc["split_decode"].items():
                size, slab = key.split(":")
                label = f"{size}^3, " + (f"depth slabs of {slab} planes (`--decode-slab {slab}`)" if slab != "0"
                                         else "whole volume")
                if "error" in row:
                    lines.append(_failed_row(label, row, 2))
                    continue
                lines.append(f"| {label} | {_f(row['vae_decode_s'], 2)} | {_f(_peak(row), 2)} |")
            lines.append("")
    q = result.get("quality")
    if q:
        lines += [f"Quality per step: {q['n']} held-out masks, {q['image_size']}^3 model `{q['model']}`.", "",
                  "| sampler | s / volume | FRD vs DDPM-1000 set | SSIM 3D vs DDPM-1000 (same seed) | "
                  "SSIM 3D vs DDIM-1000 (same seed) |", "|---|---|---|---|---|"]
        for name, row in q.items():
            if isinstance(row, dict):
                lines.append(f"| {name} | {_f(row['s_per_volume'], 2)} | {_f(row.get('frd_vs_ddpm1000'), 2)} | "
                             f"{_f(row['ssim3d_vs_ddpm1000_same_seed'])} | {_f(row['ssim3d_vs_ddim1000_same_seed'])} |")
        lines.append("")
    return "\n".join(lines)


def update_docs(text: str, device: str, path: str) -> None:
    """Replace (or append) this device's block between the markers in docs/performance.md."""
    start, end = f"{DOC_START[:-4]} {device} -->", f"{DOC_END[:-4]} {device} -->"
    with open(path, encoding="utf-8") as fh:
        doc = fh.read()
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default=",".join(s for s in SECTIONS if s != "quality"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="run every sampler end to end (default on CUDA)")
    parser.add_argument("--quality-model", default=None, help="trained ALDM run for the quality section")
    parser.add_argument("--quality-n", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:  # the same allocator as the aldm command (aldm.allocator); ALDM_ALLOCATOR=system to compare
        relaunch_with_fast_allocator([os.path.abspath(__file__), *sys.argv[1:]])
    device = torch.device(args.device)
    if args.child:
        print(json.dumps(_measure(args.child, device, args.reps)))
        return
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if "quality" in sections and not args.quality_model:
        parser.error("the quality section needs --quality-model RUN (a trained ALDM run)")
    result = {"device": device_name(device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "argv": " ".join(sys.argv[1:]), "allocator": current_allocator()}
    full = args.full or device.type == "cuda"
    os.makedirs(args.out, exist_ok=True)
    tag = ("cuda" if device.type == "cuda" else "cpu") + ("" if result["allocator"] != "system" else "-system-malloc")
    for name in sections:
        start = time.perf_counter()
        if name == "sampling":
            result[name] = section_sampling(device, args.reps, full)
        elif name == "training":
            result[name] = section_training(device, args.reps)
        elif name == "batches":
            result[name] = section_batches(device, max(1, args.reps // 2))
        elif name == "peers":
            result[name] = section_peers(device, args.reps, result.get("training"))
        elif name == "scaling":
            result[name] = section_scaling(device, max(1, args.reps // 2))
        else:
            result[name] = section_quality(device, args.quality_model, args.quality_n)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
        with open(os.path.join(args.out, f"performance-{tag}.json"), "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, default=str)  # after every section: a failure keeps the rest
    text = markdown(result)
    with open(os.path.join(args.out, f"performance-{tag}.md"), "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    print(text)
    if args.update_docs:
        update_docs(text, tag, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                                            "performance.md"))


if __name__ == "__main__":
    main()
