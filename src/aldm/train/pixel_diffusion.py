"""Training of the pixel-space diffusion peer (:mod:`aldm.models.pixel_ddpm`, Med-DDPM's manner) with the one
trainer and the run folders of every comparison model (``aldm train baseline pixelddpm``).

Like ALDM and the GANs: source training on the source cache (``train_pixel``), then few-shot adaptation of
the whole denoiser on the K target subjects of a saved patient-level split (``train_pixel_fewshot``, from
the source run's EMA weights). The loss is Med-DDPM's: L1 (or MSE, ``pixel.loss``) between the denoiser's
output and its target (the noise, or v) on whole volumes, with the condition dropped for CFG with ALDM's
p_drop (§3.2.4), so that guidance applies at sampling as it does to ALDM.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Profile
from ..diffusion.schedule import NoiseSchedule
from ..distributed import DistInfo, barrier
from ..io.lock import writes_folder
from ..models.families import PIXEL_DDPM
from ..models.pixel_ddpm import null_statistics, pixel_denoiser, pixel_diffusion_config
from .baselines import _load_images, open_comparison_run
from .stages import FewShot, run_stage
from .trainer import step_generator


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
    # a few-shot stage adapts the source run's network: its configs (channels, the diffusion) come along
    profile, stage_config, run, rows, parent = open_comparison_run(
        PIXEL_DDPM, cache, run_dir, profile, FewShot(init_run, split_path, k, n_test) if fewshot else None, steps,
        seed, precision, condition, resume, dist_info, networks=("vae", "pixel", "diffusion"))
    cfg = getattr(profile, stage_config)

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
    trainer, last = run_stage(task, sampler, profile, stage_config, run, dist_info, resume=resume, progress=progress,
                              name=f"{PIXEL_DDPM}{'-fewshot' if fewshot else ''}")
    if dist_info.is_main:
        run.save_weights({"denoiser": trainer.ema.shadow.denoiser.state_dict()})
    barrier(dist_info)
    return last
