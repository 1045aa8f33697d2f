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

from ..diffusion.schedule import NoiseSchedule
from ..distributed import barrier
from ..io.lock import writes_folder
from ..models.pixel_ddpm import null_statistics, pixel_denoiser, pixel_diffusion_config
from .comparison import load_condition_volumes, open_comparison_run
from .requests import StageRequest
from .stages import run_stage
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


@writes_folder("request", "run")
def train_pixel_ddpm(kind: str, request: StageRequest) -> dict:
    """Source training (no ``request.fewshot``) or few-shot adaptation of the pixel DDPM (``kind``:
    ``pixelddpm``); as :func:`aldm.train.baselines.train_comparison`."""
    dist_info = request.runtime.dist
    fewshot = request.fewshot is not None
    # a few-shot stage adapts the source run's network: its configs (channels, the diffusion) come along
    profile, stage_config, run, rows, parent = open_comparison_run(kind, request)
    cfg = getattr(profile, stage_config)

    data = load_condition_volumes(request.cache, rows, profile.condition)
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
    trainer, last = run_stage(task, sampler, profile, stage_config, run, request.runtime,
                              name=f"{kind}{'-fewshot' if fewshot else ''}")
    if dist_info.is_main:
        run.save_weights({"denoiser": trainer.ema.shadow.denoiser.state_dict()})
    barrier(dist_info)
    return last
