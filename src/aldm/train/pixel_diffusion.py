"""Training of the pixel-space diffusion peer (:mod:`aldm.models.pixel_ddpm`, Med-DDPM's manner) with the one
trainer and the run folders of every comparison model (``aldm train baseline pixelddpm``).

Like ALDM and the GANs: source training on the source cache (``train_pixel``), then few-shot adaptation of
the whole denoiser on the K target subjects of a saved patient-level split (``train_pixel_fewshot``, from
the source run's EMA weights). The loss is Med-DDPM's: L1 (or MSE, ``pixel.loss``) between the denoiser's
output and its target (the noise, or v) on whole volumes, with the condition dropped for CFG with ALDM's
p_drop (§3.2.4), so that guidance applies at sampling as it does to ALDM.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..artifacts.run import Run
from ..config import Profile, small, with_condition
from ..diffusion.schedule import NoiseSchedule
from ..distributed import DistInfo, barrier
from ..errors import AldmError
from ..io.lock import writes_folder
from ..models.families import PIXEL_DDPM, training_stage
from ..models.pixel_ddpm import null_statistics, pixel_denoiser, pixel_diffusion_config
from .baselines import _load_images
from .budget import fit_to_budget
from .stages import FewShot, _override, inherit_condition, open_run, with_cache_channels
from .trainer import Trainer, step_generator


class PixelDiffusionTask(nn.Module):
    """The peer's loss on a batch {'image' (B, C, S, S, S) in [-1, 1], 'control' (B, 3 M, S, S, S), 'eps'
    (like image), 't' (B,), 'keep' (B,)}: x_t = q(x_0, t, eps) (Eq. 3.5 on voxels), the control maps zeroed
    where 'keep' is 0, and the L1 (or MSE) between the denoiser's output and its target."""

    def __init__(self, denoiser: nn.Module, schedule: NoiseSchedule, loss: str):
        super().__init__()
        self.denoiser, self.schedule, self.loss = denoiser, schedule, loss

    def forward(self, batch: dict, step: int, total_steps: int):
        """(loss, logs) of the batch."""
        dev = next(self.parameters()).device
        b = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        x0 = b["image"]
        x_t = self.schedule.q_sample(x0, b["t"], b["eps"])
        keep = b["keep"].view(-1, 1, 1, 1, 1)
        out = self.denoiser(x_t, b["t"], b["control"] * keep, null_statistics(x0.shape[0], x0)).float()
        target = self.schedule.training_target(x0, b["t"], b["eps"])
        loss = F.l1_loss(out, target) if self.loss == "l1" else F.mse_loss(out, target)
        return loss, {"dropped": 1.0 - b["keep"].mean()}


@writes_folder("run_dir", "run")
def train_pixel_ddpm(cache: str, run_dir: str, profile: Profile | None = None, init_run: str | None = None,
                     k: int | None = None, n_test: int | None = None, split_path: str | None = None,
                     steps: int | None = None, seed: int | None = None, resume: bool = False,
                     dist_info: DistInfo | None = None, progress: bool = True, precision: str | None = None,
                     condition: str | None = None) -> dict:
    """Source training (no ``init_run``) or few-shot adaptation (``init_run`` + K or a split) of the pixel DDPM;
    arguments as :func:`aldm.train.baselines.train_baseline`."""
    dist_info = dist_info or DistInfo()
    fewshot = init_run is not None
    parent = None
    if fewshot:
        source = Run(init_run)
        if source.kind != PIXEL_DDPM:
            raise AldmError(f"{init_run}: not a finished {PIXEL_DDPM} run")
        parent = source.require_finished().weights()
        # the network adapted is the source run's: its configs come along
        profile = replace(profile or source.profile, vae=source.profile.vae, pixel=source.profile.pixel,
                          diffusion=source.profile.diffusion)
        profile = inherit_condition(profile, source, condition)
    else:  # as many channels as the cache holds (few-shot: the source run's)
        profile = with_condition(with_cache_channels(profile or small(), cache), condition)
    stage_config = training_stage(PIXEL_DDPM, fewshot)
    cfg = _override(getattr(profile, stage_config), steps, seed, precision)
    profile = replace(profile, **{stage_config: cfg})  # the caller's profile is left as it was
    run, rows = open_run(run_dir, "baseline", profile, cache, seed=cfg.seed, domain="target" if fewshot else "source",
                         dist_info=dist_info, resume=resume, extra={"model": PIXEL_DDPM, "fewshot": fewshot},
                         fewshot=FewShot(init_run, split_path, k, n_test) if fewshot else None,
                         parent=Run(init_run) if fewshot else None)

    data = _load_images(cache, rows, profile.condition)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    denoiser = pixel_denoiser(profile)
    if parent is not None:
        denoiser.load_state_dict(parent["denoiser"])
    task = PixelDiffusionTask(denoiser, NoiseSchedule(pixel_diffusion_config(profile)), profile.pixel.loss)
    n, p_drop, T = len(rows), profile.diffusion.cond_dropout, profile.diffusion.timesteps

    def sampler(step: int, rank: int) -> dict:
        g = step_generator(cfg.seed, step, rank)
        idx = torch.randint(n, (cfg.batch_size,), generator=g)
        batch = {key: data[key][idx].float() for key in ("image", "control")}
        batch["eps"] = torch.randn(batch["image"].shape, generator=g)
        batch["t"] = torch.randint(T, (cfg.batch_size,), generator=g)
        batch["keep"] = (torch.rand(cfg.batch_size, generator=g) >= p_drop).float()
        return batch

    torch.manual_seed(cfg.seed)
    cfg = getattr(fit_to_budget(profile, stage_config, task, sampler, run, dist_info), stage_config)
    trainer = Trainer(task, sampler, cfg, run_dir, dist_info, progress=progress,
                      name=f"{PIXEL_DDPM}{'-fewshot' if fewshot else ''}")
    if resume:
        trainer.resume()
    last = trainer.run()
    if dist_info.is_main:
        run.save_weights({"denoiser": trainer.ema.shadow.denoiser.state_dict()})
    barrier(dist_info)
    return last
