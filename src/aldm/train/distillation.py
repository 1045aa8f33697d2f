"""Few-step students of a finished ALDM run: guidance folded into the network, then progressive distillation
(Meng et al., CVPR 2023, "On distillation of guided diffusion models"; Salimans & Ho, ICLR 2022).

A distillation run trains in phases, each a resumable trainer in ``phases/<name>/`` of the run folder:

1. ``guidance`` (when the teacher is not a student yet): a student with the guidance scale s as an input
   (``UNetConfig.guidance_input``), built from the teacher's weights (so it starts as the teacher's conditional
   prediction), learns the teacher's guided output of Eq. 3.8 — two forwards, conditional and null — in one, for
   s uniform in ``DistillConfig.guidance_range`` and t uniform in [0, T), on z_t of Eq. 3.5 from the latents of the
   subjects the teacher trained on (its own cache; no other data);
2. ``steps-<n>`` for n = teacher_steps / 2, ..., steps_to (halving rounds): a copy of the previous phase's student
   learns to take in one DDIM step what that student does in two, on the nested grids of
   :func:`aldm.diffusion.samplers.distilled_timesteps`. With alpha, sigma of Eq. 3.5 at t, t'' the student's step
   and z_t'' the teacher's two steps' result, the target is the clean sample x~ from which one DDIM step lands on
   z_t'': x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t) (x~ = z_t'' on the last
   step), the loss Eq. 3.9's tumour-weighted MSE in x with max(SNR_t, 1) per sample (Salimans & Ho's truncated SNR).

The student then samples with ``distilled`` (DDIM on its grid) at ``steps_to`` steps: one network evaluation per step,
where the teacher's DPM-Solver++ takes two per step (conditional and null halves). A teacher that is a student
already continues its halving. The run records its teacher and the teacher's weights' checksum (a changed teacher
is refused on resume), and holds its VAE and latent statistics like any ALDM run, so generate, edit, serve and the
experiments load it as one.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from ..artifacts.cache import PreparedCache
from ..artifacts.run import CHECKPOINT, METRICS, SPLIT, WEIGHTS, Run
from ..config import DistillConfig, Profile, get_profile
from ..diffusion.guidance import combine_guidance
from ..diffusion.samplers import distilled_timesteps
from ..diffusion.schedule import NoiseSchedule, tumour_weighted_mse
from ..distributed import DistInfo, barrier
from ..errors import AldmError
from ..io.atomic import atomic_write_text
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.lock import writes_folder
from ..models.families import family
from ..models.unet import ConditionalDenoiser
from ..models.vae import frozen_vae
from .budget import seconds_per_step
from .requests import Runtime
from .stages import encode_subjects, latent_batch
from .trainer import Trainer, step_generator

PHASES = "phases"  # the run folder's sub-folder of phase trainers
BUDGET_FILE = "budget.json"  # a phase's fitted steps under --budget-s


@dataclass(frozen=True)
class DistillRequest:
    """One distillation run: the finished ALDM run ``teacher`` (a student continues halving), the ``run_dir`` it
    writes, the :class:`~aldm.config.DistillConfig` fields it overrides (``steps_to``, ``teacher_steps``,
    ``guidance_range``, ``method``; None: the profile's), each phase's length (``steps``) or the whole run's
    ``budget_s``, the ``seed``, ``precision``, the ``profile`` whose distillation settings it takes (None: the
    teacher's named profile), the ``cache`` holding the teacher's subjects (None: the teacher's own) and its
    :class:`Runtime`."""

    teacher: str
    run_dir: str
    steps_to: int | None = None
    teacher_steps: int | None = None
    guidance_range: tuple | None = None
    method: str | None = None
    steps: int | None = None
    budget_s: float | None = None
    seed: int | None = None
    precision: str | None = None
    profile: Profile | None = None
    cache: str | None = None
    runtime: Runtime = field(default_factory=Runtime)

    def __post_init__(self):
        """Refuse a phase length below 1, a budget with a step count, a budget that is not positive."""
        if self.steps is not None and self.steps < 1:
            raise AldmError(f"--steps must be at least 1, got {self.steps}")
        if self.steps is not None and self.budget_s is not None:
            raise AldmError("give --steps or --budget-s, not both")
        if self.budget_s is not None and not self.budget_s > 0:
            raise AldmError(f"--budget-s must be positive, got {self.budget_s}")


@dataclass(frozen=True)
class Phase:
    """One phase of a distillation run: ``name`` (``guidance`` or ``steps-<n>``), the student's steps ``n`` (None
    for the guidance phase, whose student is not yet few-step) and ``factor``, the teacher's steps per student step
    (2 in a halving round)."""

    name: str
    steps: int | None
    factor: int = 2

    @property
    def halving(self) -> bool:
        """Whether the phase cuts the steps (else it folds the guidance in)."""
        return self.steps is not None


def plan_phases(teacher_is_student: bool, teacher_steps: int, steps_to: int, method: str = "progressive"
                ) -> list[Phase]:
    """The phases from a teacher (a student of ``teacher_steps`` steps when ``teacher_is_student``) to a student
    of ``steps_to``: the guidance phase unless the teacher has it, then one halving round per factor of two
    (``progressive``) or one round of the whole factor (``direct``: the student learns teacher_steps / steps_to
    of its teacher's steps in each of its own)."""
    phases = [] if teacher_is_student else [Phase("guidance", None)]
    if method == "direct" and teacher_steps > steps_to:
        return phases + [Phase(f"steps-{steps_to}", steps_to, teacher_steps // steps_to)]
    n = teacher_steps
    while n > steps_to:
        n //= 2
        phases.append(Phase(f"steps-{n}", n))
    return phases


# ------------------------------------------------------------------------------------------------ the tasks
class _Distillation(nn.Module):
    """What both phases share: the ``student`` (trained), the frozen ``teacher`` (kept out of the module's
    parameters, so neither the optimiser, the EMA's update nor the checkpoint carries it), the schedule, the
    tumour weight of Eq. 3.9 and the latent statistics."""

    def __init__(self, student: ConditionalDenoiser, teacher: ConditionalDenoiser, schedule: NoiseSchedule,
                 tumour_weight: float, latent_mean: torch.Tensor, latent_std: torch.Tensor):
        super().__init__()
        self.student = student
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        self.schedule = schedule
        self.tumour_weight = tumour_weight
        self.register_buffer("latent_mean", latent_mean.view(1, -1, 1, 1, 1).clone())
        self.register_buffer("latent_std", latent_std.view(1, -1, 1, 1, 1).clone())

    def _apply(self, fn, recurse=True):
        """Device and dtype moves reach the teacher too (it is no sub-module)."""
        self.teacher._apply(fn)
        return super()._apply(fn, recurse)

    def __deepcopy__(self, memo):
        """A copy (the trainer's EMA, a budget's timing trial) with its own student and the same frozen teacher:
        the teacher's weights are not copied."""
        memo[id(self.teacher)] = self.teacher
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            object.__setattr__(new, key, copy.deepcopy(value, memo))
        return new

    def _inputs(self, batch: dict) -> dict:
        """The batch on the device with z_0 (normalised with the source latent statistics) added."""
        dev = self.latent_mean.device
        b = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        z = b["mu"] + torch.exp(0.5 * b["logvar"]) * b["eps_posterior"]
        b["z0"] = (z - self.latent_mean) / self.latent_std
        return b


class GuidanceTask(_Distillation):
    """Phase 1: the student's output at (z_t, t, c, s) against the teacher's guided output of Eq. 3.8 at the same
    point, out_u + s (out_c - out_u), in the teacher's prediction (eps or v), with Eq. 3.9's tumour weight."""

    def forward(self, batch: dict, step: int, total_steps: int):
        """The loss of a batch {'mu', 'logvar', 'eps_posterior', 'eps', 't', 's', 'control', 'stats', 'weight'};
        returns (loss, logs)."""
        b = self._inputs(batch)
        z_t = self.schedule.q_sample(b["z0"], b["t"], b["eps"])
        with torch.no_grad():
            both = self.teacher(z_t, b["t"], torch.cat([b["control"], torch.zeros_like(b["control"])]),
                                torch.cat([b["stats"], torch.zeros_like(b["stats"])]), copies=2).float()
            cond, null = both.chunk(2)
            target = combine_guidance(cond, null, b["s"].view(-1, 1, 1, 1, 1))
        out = self.student(z_t, b["t"], b["control"], b["stats"], guidance=b["s"]).float()
        return tumour_weighted_mse(target, out, b["weight"], self.tumour_weight), {"s_mean": b["s"].mean()}


class HalvingTask(_Distillation):
    """A round that cuts the steps: the student of ``steps`` steps learns ``factor`` DDIM steps of its teacher (a
    student of ``factor`` x ``steps``; 2 in a halving round) in one (see the module docstring for the target and
    the weight)."""

    def __init__(self, *args, steps: int, factor: int = 2):
        super().__init__(*args)
        self.steps, self.factor = steps, factor
        T = self.schedule.timesteps
        self.grid = distilled_timesteps(T, steps)  # the student's evaluation times
        self.fine = distilled_timesteps(T, factor * steps)  # its teacher's

    def _abar(self, times: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at ``times`` (B,), 1 where a time is -1 (the clean end), shaped (B, 1, 1, 1, 1) in float64."""
        abar = torch.cat([self.schedule.alphas_cumprod.to(like.device), torch.ones(1, dtype=torch.float64,
                                                                                    device=like.device)])
        return abar[times.long()].view(-1, 1, 1, 1, 1)  # index -1 is the appended 1

    def _ddim(self, z: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step from z at t to t_next (-1: the clean sample) with the clean prediction x0."""
        a, a_next = self._abar(t, z), self._abar(t_next, z)
        eps = (z - a.sqrt() * x0) / (1 - a).sqrt()
        return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps

    def forward(self, batch: dict, step: int, total_steps: int):
        """The loss of a batch {'mu', 'logvar', 'eps_posterior', 'eps', 'k', 's', 'control', 'stats', 'weight'},
        'k' (B,) the student's step index on its grid; returns (loss, logs)."""
        b = self._inputs(batch)
        k = b["k"].long()
        grid = torch.tensor(self.grid + [-1], device=k.device)
        fine = torch.tensor(self.fine + [-1], device=k.device)
        t, t_end = grid[k], grid[k + 1]
        z_t = self.schedule.q_sample(b["z0"], t, b["eps"])
        with torch.no_grad():
            zd = z_t.double()
            z, now = zd, t
            for j in range(1, self.factor + 1):  # the teacher's steps from t to t_end
                after = fine[self.factor * k + j]
                x0 = self.schedule.predicted_x0(self._teacher_out(z.float(), now, b), z.float(), now).double()
                z, now = self._ddim(z, x0, now, after), after
            z_end = z
            a, a_end = self._abar(t, zd), self._abar(t_end, zd)
            ratio = ((1 - a_end) / (1 - a)).sqrt()
            target = ((z_end - ratio * zd) / (a_end.sqrt() - ratio * a.sqrt())).float()
            snr_weight = (a / (1 - a)).clamp(min=1.0).view(-1).float()
        out = self.student(z_t, t, b["control"], b["stats"], guidance=b["s"]).float()
        x_hat = self.schedule.predicted_x0(out, z_t, t)
        loss = tumour_weighted_mse(target, x_hat, b["weight"], self.tumour_weight, snr_weight)
        return loss, {"k_mean": k.float().mean()}

    def _teacher_out(self, z: torch.Tensor, t: torch.Tensor, b: dict) -> torch.Tensor:
        return self.teacher(z, t, b["control"], b["stats"], guidance=b["s"]).float()


# ------------------------------------------------------------------------------------------------ the run
@writes_folder("request", "run")
def distill_stage(request: DistillRequest) -> dict:
    """Train a few-step student of ``request.teacher`` into ``request.run_dir`` (see the module docstring),
    resuming its phases with ``runtime.resume``; returns the last phase's last step's figures with ``phases``."""
    dist_info = request.runtime.dist
    if dist_info.world_size > 1:
        raise AldmError("distillation runs in one process; start it without torchrun")
    teacher_run = Run(request.teacher).require_generator().require_finished()
    if teacher_run.kind != "aldm":
        raise AldmError(f"{teacher_run.path}: a {teacher_run.kind} run; distillation takes an ALDM run")
    if teacher_run.profile.unet.inpaint_context:
        raise AldmError(f"{teacher_run.path}: an inpainting-trained run (--inpaint); distil a plain ALDM run")
    profile, config = _student_profile(request, teacher_run)
    is_student = teacher_run.profile.unet.guidance_input
    if is_student and config.steps_to >= config.teacher_steps:
        raise AldmError(f"{teacher_run.path}: a student of {config.teacher_steps} steps; --steps-to must be fewer, "
                        f"got {config.steps_to}")
    phases = plan_phases(is_student, config.teacher_steps, config.steps_to, config.method)
    cache = request.cache or teacher_run.data
    rows = _teacher_rows(teacher_run, cache)
    run = _open_run(request, teacher_run, profile, config, cache, rows, phases)
    device = dist_info.device
    weights = teacher_run.weights()
    mean, std = weights["latent_mean"], weights["latent_std"]
    vae_state = teacher_run.vae_state()
    vae = frozen_vae(teacher_run.profile.vae, vae_state, device, teacher_run.path)
    encoded = encode_subjects(vae, cache, rows, profile.latent_size, device, profile.condition)
    del vae
    teacher = ConditionalDenoiser(teacher_run.profile.unet, profile.vae.latent_channels)
    teacher.load_state_dict(weights["denoiser"])
    shared = _Shared(run, profile, encoded, mean, std, request, len(phases))
    last = {}
    for index, phase in enumerate(phases):
        student = _phase_student(teacher, profile)
        last = _train_phase(shared, phase, index, student, teacher.to(device))
        teacher = student
    if dist_info.is_main:
        run.save_vae(vae_state)
        _merge_logs(run, phases)
        run.save_weights({"denoiser": teacher.state_dict(), "latent_mean": mean.cpu(), "latent_std": std.cpu()})
    barrier(dist_info)
    return {**last, "phases": [p.name for p in phases]}


def _student_profile(request: DistillRequest, teacher: Run) -> tuple[Profile, DistillConfig]:
    """The student's profile: the teacher's networks with the guidance input, the distillation settings of
    ``request.profile`` (None: the teacher's named profile, else the teacher's own) with the request's overrides."""
    own = teacher.profile
    base = request.profile
    if base is None:
        try:
            base = get_profile(own.name)
        except AldmError:
            base = own
    config = base.distill
    changes = {k: v for k, v in (("steps_to", request.steps_to), ("teacher_steps", request.teacher_steps),
                                 ("guidance_range", request.guidance_range), ("method", request.method))
               if v is not None}
    if own.unet.guidance_input:  # a student continues: its range and method are the ones it learnt
        changes.update(guidance_range=tuple(teacher.info["distill"]["guidance_range"]),
                       teacher_steps=int(teacher.info["distill"]["steps"]))
        changes.setdefault("steps_to", max(1, int(teacher.info["distill"]["steps"]) // 2))
    try:
        config = replace(config, **changes)
    except AldmError as exc:
        raise AldmError(str(exc).replace("DistillConfig: ", "").replace("DistillConfig.", "--")) from None
    train = base.train_distill
    train = replace(train, **{k: v for k, v in (("steps", request.steps), ("seed", request.seed),
                                                ("precision", request.precision)) if v is not None})
    unet = replace(own.unet, guidance_input=True)
    return replace(own, unet=unet, distill=config, train_distill=train), config


def _teacher_rows(teacher: Run, cache: str) -> list[dict]:
    """The cache rows of the subjects the teacher trained on: a few-shot run's K, else its domain's."""
    data = PreparedCache(cache).require()
    split = teacher.split()
    if split is not None and teacher.fewshot:
        by_name = data.by_subject()
        missing = [s for s in split["k_shot"] if s not in by_name]
        if missing:
            raise AldmError(f"{cache}: does not hold the teacher's subjects {', '.join(missing[:3])}; give the "
                            "teacher's cache (--data)")
        return [by_name[s] for s in split["k_shot"]]
    rows = data.rows(teacher.info.get("domain"))
    if not rows:
        raise AldmError(f"{cache}: no {teacher.info.get('domain') or ''} subjects, the teacher's training data")
    return rows


def _open_run(request: DistillRequest, teacher: Run, profile: Profile, config: DistillConfig, cache: str,
              rows: list[dict], phases: list[Phase]) -> Run:
    """Create (or re-open with ``--resume``) the student's run folder; refuse a teacher whose weights changed."""
    teacher_hash = teacher.weights_hash()
    extra = {"teacher_run": os.path.abspath(teacher.path), "teacher_hash": teacher_hash,
             "vae_run": teacher.info.get("vae_run"), "domain": teacher.info.get("domain"), "subjects": len(rows),
             "distill": {"steps": config.steps_to, "guidance_range": list(config.guidance_range),
                         "method": config.method, "phases": [p.name for p in phases],
                         "teacher_steps": config.teacher_steps}}
    if teacher.fewshot:
        extra.update(fewshot=True, k=teacher.k)
    info = Run.describe("distill", profile, cache, profile.train_distill.seed, 1, **extra)
    run = Run.create(request.run_dir, info, profile, request.runtime.resume, request.runtime.dist, family("aldm").parts)
    recorded = run.info.get("teacher_hash")
    if recorded != teacher_hash:
        raise AldmError(f"{teacher.file(WEIGHTS)}: the teacher's weights changed since this student started "
                        f"(checksum {teacher_hash}, recorded {recorded}); start a new --out")
    if run.info.get("teacher_run") != extra["teacher_run"]:
        raise AldmError(f"{run.path}: a student of {run.info.get('teacher_run')}, not of {extra['teacher_run']}")
    if teacher.fewshot and not os.path.exists(run.split_path) and request.runtime.dist.is_main:
        shutil.copyfile(teacher.split_path, run.file(SPLIT))
    return run


def _phase_student(teacher: ConditionalDenoiser, profile: Profile) -> ConditionalDenoiser:
    """A student of ``profile``'s networks starting from ``teacher``: its weights, the guidance embedding at zero
    where the teacher has none (the student then starts as the teacher's conditional prediction)."""
    student = ConditionalDenoiser(profile.unet, profile.vae.latent_channels)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(".guidance." not in k for k in missing):
        raise AldmError(f"the teacher's denoiser does not fit its student (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]})")
    return student


@dataclass(frozen=True)
class _Shared:
    """What every phase of a run reads: the run, the student's profile, the encoded subjects
    (:func:`aldm.train.stages.encode_subjects`), the latent statistics, the request and the number of phases."""

    run: Run
    profile: Profile
    encoded: dict
    mean: torch.Tensor
    std: torch.Tensor
    request: DistillRequest
    phase_count: int


def _train_phase(shared: _Shared, phase: Phase, index: int, student: ConditionalDenoiser,
                 teacher: ConditionalDenoiser) -> dict:
    """Train one phase (the ``index``-th) in the run's ``phases/<name>`` (resumed where it stopped; a finished one
    is read back into ``student``); returns its last step's figures."""
    profile, request = shared.profile, shared.request
    folder = os.path.join(shared.run.path, PHASES, phase.name)
    done = os.path.join(folder, WEIGHTS)
    if os.path.exists(done):
        student.load_state_dict(load_checkpoint(done))
        return {"step": 0, "loss": float("nan"), "phase": phase.name}
    os.makedirs(folder, exist_ok=True)
    schedule = NoiseSchedule(profile.diffusion)
    common = (student, teacher, schedule, profile.diffusion.tumour_weight, shared.mean, shared.std)
    task = HalvingTask(*common, steps=phase.steps, factor=phase.factor) if phase.halving else GuidanceTask(*common)
    cfg = replace(profile.train_distill, seed=profile.train_distill.seed + index)
    sampler = _phase_sampler(shared.encoded, cfg, profile.diffusion.timesteps, profile.distill.guidance_range, phase)
    resume = os.path.exists(os.path.join(folder, CHECKPOINT))
    if request.budget_s is not None:
        cfg = replace(cfg, steps=_fitted_steps(folder, task, sampler, cfg, request.budget_s / shared.phase_count,
                                                request.runtime.dist))
    torch.manual_seed(cfg.seed)
    trainer = Trainer(task, sampler, cfg, folder, request.runtime.dist, progress=request.runtime.progress,
                      name=f"distill {phase.name}")
    if resume:
        trainer.resume()
    last = trainer.run()
    student.load_state_dict(trainer.ema.shadow.student.state_dict())
    save_checkpoint(done, student.state_dict())
    return {**last, "phase": phase.name}


def _phase_sampler(encoded: dict, cfg, timesteps: int, guidance_range: tuple, phase: Phase):
    """The batches of a phase: subjects, posterior and forward noise, s uniform in ``guidance_range``, and t
    uniform in [0, T) (guidance phase) or the student's step index uniform on its grid (halving)."""
    lo, hi = guidance_range

    def sampler(step: int, rank: int) -> dict:
        g = step_generator(cfg.seed, step, rank)
        batch, _ = latent_batch(encoded, cfg.batch_size, g)
        batch["s"] = lo + (hi - lo) * torch.rand(cfg.batch_size, generator=g)
        if phase.halving:
            batch["k"] = torch.randint(phase.steps, (cfg.batch_size,), generator=g)
        else:
            batch["t"] = torch.randint(timesteps, (cfg.batch_size,), generator=g)
        return batch

    return sampler


def _fitted_steps(folder: str, task: nn.Module, sampler, cfg, budget_s: float, dist_info: DistInfo) -> int:
    """The steps of a phase that fit ``budget_s`` seconds: measured once (:func:`aldm.train.budget.seconds_per_step`)
    and recorded in the phase's budget.json, so a resumed phase trains the steps it started with."""
    path = os.path.join(folder, BUDGET_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            recorded = json.load(fh)
        if recorded.get("budget_s") == budget_s:
            return int(recorded["steps"])
    rate = seconds_per_step(task, sampler, cfg, dist_info.device)
    steps = max(1, int(budget_s / rate))
    atomic_write_text(path, json.dumps({"budget_s": budget_s, "sec_per_step": rate, "steps": steps}) + "\n")
    return steps


def _merge_logs(run: Run, phases: list[Phase]) -> None:
    """The run's metrics.csv: every phase's log in order with a ``phase`` column, ``train_s`` summed over phases
    (what :attr:`Run.train_seconds` reads: the distillation's cost)."""
    rows, offset = [], 0.0
    for phase in phases:
        path = os.path.join(run.path, PHASES, phase.name, METRICS)
        if not os.path.exists(path):
            continue
        with open(path, newline="", encoding="utf-8") as fh:
            phase_rows = list(csv.DictReader(fh))
        for row in phase_rows:
            rows.append({"phase": phase.name, **row, "train_s": f"{offset + float(row['train_s']):.3f}"})
        if phase_rows:
            offset += float(phase_rows[-1]["train_s"])
    if not rows:
        return
    names = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=names, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run.file(METRICS), text.getvalue())
