"""Compute budgets: a stage trained for a number of seconds rather than a number of steps.

A fair comparison of generators gives each the same training time on the same machine. A stage whose
``TrainConfig.budget_s`` is set fits its step count to that budget when the run starts: it times
:data:`CALIBRATION_STEPS` steps of a copy of the task (the first, which allocates, not counted; the
median of the rest), and trains ``floor(budget_s / seconds_per_step)`` steps. The fit is recorded in
``run.json`` (``budget``: seconds, measured seconds per step, steps), so a resumed run trains exactly
the steps it started with and ends on the weights an uninterrupted run ends on; what the run really
spent is its ``train_s`` (:attr:`aldm.artifacts.run.Run.train_seconds`). Fitting before training,
rather than stopping when the clock runs out, keeps every schedule that depends on the length (the
KL warm-up of Eq. 3.3, the adversary's start) the same from the first step.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import replace

import torch
import torch.distributed as dist

from ..artifacts.run import Run
from ..config import Profile, TrainConfig
from ..distributed import DistInfo
from .trainer import Trainer

# timed steps of a fit: the median of 9 (the first left out); with 5, a transient load on the machine while
# they ran overestimated the step by 21-27 % in 2 of 13 VAE runs (docs/model.md)
CALIBRATION_STEPS = 10
BUDGET = "budget"  # the run.json key of the fit


def seconds_per_step(task: torch.nn.Module, sampler, config: TrainConfig, device,
                     steps: int = CALIBRATION_STEPS) -> float:
    """Median seconds of an optimisation step of a copy of ``task`` on ``device`` (``steps`` timed, the first
    left out); the task, its weights and torch's global random state are left as they were."""
    rng = torch.get_rng_state()
    trial = Trainer(copy.deepcopy(task), sampler, replace(config, steps=steps, probe_every=0, budget_s=0.0), None,
                    DistInfo(device=torch.device(device)), progress=False, name="calibration")
    try:
        trial.run()
    finally:
        torch.set_rng_state(rng)
    return statistics.median(trial.step_seconds[1:])


def fit_to_budget(profile: Profile, stage: str, task: torch.nn.Module, sampler, run: Run,
                  dist_info: DistInfo | None = None) -> Profile:
    """``profile`` with the ``stage`` config's (``train_vae``, ``train_ldm``, ...) ``steps`` fitted to its
    ``budget_s`` (unchanged when that is 0): the fit recorded in ``run`` when it has one for this budget,
    else measured now (rank 0 under torchrun, the count shared with every rank), recorded in run.json and
    written into the run's config.json."""
    config = getattr(profile, stage)
    if not config.budget_s:
        return profile
    dist_info = dist_info or DistInfo()
    recorded = run.info.get(BUDGET) or {}
    if recorded.get("budget_s") == config.budget_s:
        return replace(profile, **{stage: replace(config, steps=int(recorded["steps"]))})
    rate = seconds_per_step(task, sampler, config, dist_info.device)
    steps = max(1, int(config.budget_s / rate))
    if dist_info.world_size > 1:  # every rank trains rank 0's count
        shared = torch.tensor([steps], device=dist_info.device)
        dist.broadcast(shared, src=0)
        steps = int(shared)
    fitted = replace(profile, **{stage: replace(config, steps=steps)})
    if dist_info.is_main:
        run.record(BUDGET, {"budget_s": config.budget_s, "sec_per_step": rate, "steps": steps})
        run.save_profile(fitted)
    return fitted
