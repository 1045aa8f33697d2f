"""One trainer for every model in aldm.

A *task* is an ``nn.Module`` whose ``forward(batch, step, total_steps)`` returns
``(loss, logs)``. A task with several optimisers (a GAN: discriminator, then generator) declares
``phases`` (e.g. ``("d", "g")``) and ``parameter_groups() -> {phase: [params]}``; each step then
runs ``forward(batch, step, total_steps, phase)`` + backward + clip + optimiser step per phase, in
order; a task may also declare ``phase_active(phase, step, total_steps)`` to skip a phase at some
steps (a discriminator that starts after a warm-up). A *sampler* is a callable ``(step, rank) ->
batch`` that draws the step's batch from a ``torch.Generator`` seeded by (seed, step, rank). Because
every random choice of a step (data, noise, timesteps, dropout) is a pure function of the step
number, ``--resume`` continues exactly as an uninterrupted run would.

Features: AdamW, linear warm-up, gradient clipping, gradient accumulation, EMA of the weights,
bf16 autocast where the device trains correctly in bf16 (aldm.precision), non-finite losses
skipped with a warning (too many stop the run, naming the likely cause), atomic checkpoints (model,
optimiser, EMA, scheduler, RNG, step; the previous one kept as fallback), CSV log (+ TensorBoard
when installed), a progress bar with loss and speed, and DDP under ``torchrun`` (NCCL on GPU,
gloo on CPU).
"""

from __future__ import annotations

import copy
import csv
import math
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from ..allocator import say_missing_tcmalloc_once
from ..artifacts.run import CHECKPOINT, METRICS, PREVIOUS_CHECKPOINT, PROBE, SELECTED
from ..config import TrainConfig
from ..distributed import DistInfo
from ..errors import AldmError
from ..interrupt import Stopped, graceful_stop
from ..io.atomic import atomic_write_text, remove_stale_temps, require_free_space
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.curves import plot_probe_curves
from ..precision import autocast, resolve_precision, training_fallback_note


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers; with ``warmup``
    the decay of update t is min(decay, (1 + t) / (10 + t)) (diffusers' EMAModel schedule)."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(module).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay of the update made after optimisation step ``step`` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module, step: int = 0) -> None:
        """shadow <- d * shadow + (1 - d) * module with d = :meth:`decay_at` (floating-point tensors; others
        copied)."""
        decay = self.decay_at(step)
        for s, p in zip(self.shadow.state_dict().values(), module.state_dict().values()):
            if s.dtype.is_floating_point:
                s.lerp_(p.detach(), 1.0 - decay)
            else:
                s.copy_(p)


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """The random stream of one training step (a pure function of its arguments)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 8191 + rank * 131 + stream) % (2**63 - 1))


class Trainer:
    """Runs ``config.steps`` optimisation steps of ``task`` and writes into ``run_dir`` (None: trains in
    memory, for evaluators that train for seconds: no checkpoints, logs or probes, nothing to resume).
    ``config.grad_clip`` <= 0 clips nothing; ``config.ema_decay`` 0 makes the EMA the weights themselves."""

    def __init__(self, task: nn.Module, sampler: Callable, config: TrainConfig, run_dir: str | None,
                 dist_info: DistInfo | None = None, progress: bool = True, name: str = "train",
                 probe: Callable | None = None):
        self.config = config
        self.run_dir = run_dir
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.task = task.to(self.device)
        self.sampler = sampler
        self.progress = progress and self.dist.is_main
        self.name = name
        # probe(ema_module, step) -> {name: value}: held-out figures every config.probe_every steps (rank 0),
        # written to probe.csv; it must draw no random numbers from torch's global generator
        self.probe = probe
        self.last_probe: dict = {}
        # select_by_probe: the probed step with the lowest figure so far, {"step", "by", "value"} (its EMA
        # weights in SELECTED), carried in the checkpoint so that a resumed run selects as an uninterrupted one
        self.selected: dict | None = None
        if config.select_by_probe and run_dir is not None and self.dist.is_main and (
                probe is None or not config.probe_every or getattr(probe, "selection", None) is None):
            raise AldmError(f"{run_dir}: select_by_probe needs a held-out probe with a selection figure "
                            "(--probe-every N and probe subjects, on an LDM stage)")
        self.phases = tuple(getattr(task, "phases", (None,)))
        groups = task.parameter_groups() if self.phases != (None,) else {None: list(self.task.parameters())}
        self.params, self.optimizers, self.schedulers = {}, {}, {}
        for phase in self.phases:
            params = [p for p in groups[phase] if p.requires_grad]
            betas = getattr(task, "adam_betas", (0.9, 0.999))
            self.params[phase] = params
            self.optimizers[phase] = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                                       betas=betas)
            self.schedulers[phase] = torch.optim.lr_scheduler.LambdaLR(
                self.optimizers[phase], lambda update: lr_factor(update, config))
        self.ema = EMA(self.task, config.ema_decay, config.ema_warmup)
        self.model = self.task
        if self.dist.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.task, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=len(self.phases) > 1)
        self.step = 0
        self.skipped = 0
        self.train_seconds = 0.0  # of optimisation steps (data, forward, backward, update), over resumes too
        self.step_seconds: list[float] = []  # each step this process ran (aldm.train.budget times a few)
        # "auto": bf16 autocast where the device trains correctly in bf16 (CUDA, AMX CPUs; aldm.precision)
        self.precision = resolve_precision(config.precision, self.device, training=True)
        note = training_fallback_note(self.device) if config.precision == "auto" else None
        if note and self.dist.is_main and progress:
            print(note, file=sys.stderr)
        if self.progress:
            say_missing_tcmalloc_once()

    # ------------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """Everything a bit-exact resume needs: step, model, EMA, optimisers, schedulers, RNG."""
        return {
            "step": self.step, "skipped": self.skipped, "train_s": self.train_seconds, "selected": self.selected,
            "model": self.task.state_dict(), "ema": self.ema.shadow.state_dict(),
            "optimizer": [self.optimizers[p].state_dict() for p in self.phases],
            "scheduler": [self.schedulers[p].state_dict() for p in self.phases],
            "rng_torch": torch.get_rng_state(),
        }

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0), keeping the previous one as fallback."""
        if not self.dist.is_main or self.run_dir is None:
            return
        path = os.path.join(self.run_dir, CHECKPOINT)
        state = self.state()
        require_free_space(self.run_dir, _nbytes(state), f"the checkpoint at step {self.step}")
        if os.path.exists(path):
            os.replace(path, os.path.join(self.run_dir, PREVIOUS_CHECKPOINT))
        save_checkpoint(path, state)

    def resume(self) -> bool:
        """Load the newest readable checkpoint of ``run_dir``; falls back to the previous one."""
        if self.run_dir is None:
            raise AldmError(f"{self.name}: trained in memory; there is no checkpoint to resume from")
        errors = []
        for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
            path = os.path.join(self.run_dir, name)
            if not os.path.exists(path):
                continue
            try:
                state = load_checkpoint(path)
                self.task.load_state_dict(state["model"])
                self.ema.shadow.load_state_dict(state["ema"])
                for phase, opt, sched in zip(self.phases, state["optimizer"], state["scheduler"]):
                    self.optimizers[phase].load_state_dict(opt)
                    self.schedulers[phase].load_state_dict(sched)
                torch.set_rng_state(state["rng_torch"])
                self.step, self.skipped = int(state["step"]), int(state.get("skipped", 0))
                self.train_seconds = float(state.get("train_s", 0.0))
                self.selected = state.get("selected")
            except (AldmError, KeyError, RuntimeError, TypeError, ValueError, IndexError) as exc:
                errors.append(f"{name}: {_checkpoint_problem(exc)}")
                print(f"aldm: warning: {path}: cannot resume from it ({_checkpoint_problem(exc)}); trying an older one",
                      file=sys.stderr)
                continue
            self._trim_log()
            return True
        if errors:
            raise AldmError(f"{self.run_dir}: no usable checkpoint ({'; '.join(errors)})")
        self._trim_log()
        return False

    def _trim_log(self) -> None:
        """Drop metrics.csv / probe.csv rows past the resumed step (and a line cut short by a kill), so a
        resumed run's logs equal an uninterrupted run's; remove temp files a killed checkpoint write left."""
        if not self.dist.is_main:
            return
        remove_stale_temps(self.run_dir)
        for name in (METRICS, PROBE):
            self._trim_csv(os.path.join(self.run_dir, name))

    def _trim_csv(self, path: str) -> None:
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
        complete = [line for line in lines if line.endswith("\n")]
        if not complete or not complete[0].startswith("step,"):
            os.remove(path)
            return
        kept = [complete[0]] + [line for line in complete[1:]
                                if line.split(",", 1)[0].isdigit() and int(line.split(",", 1)[0]) <= self.step]
        if kept != lines:
            atomic_write_text(path, "".join(kept))

    # ------------------------------------------------------------------------------------ training
    def _log_writer(self):
        """(file, header): metrics.csv opened for appending, and the columns it already has (None when new:
        the first row's keys become them). A resumed run keeps its file's columns, so a run begun by an older
        version, with fewer of them, stays a well-formed table."""
        path = os.path.join(self.run_dir, METRICS)
        header = None
        if os.path.exists(path):
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), None)
        fh = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in run()
        return fh, header

    def run(self) -> dict:
        """Train up to ``config.steps``; returns the last step's figures (loss, lr, grad norm, s/step,
        ``train_s`` (seconds of optimisation steps since step 0, resumes included: what the run cost), wall
        time, skipped steps, precision). On SIGTERM / SIGINT (:mod:`aldm.interrupt`) the current step
        finishes, a checkpoint is written and :class:`~aldm.interrupt.Stopped` is raised; ``--resume``
        then continues exactly as after a periodic checkpoint."""
        with graceful_stop() as stop:
            return self._run(stop)

    def _run(self, stop: graceful_stop) -> dict:
        cfg = self.config
        writes = self.dist.is_main and self.run_dir is not None
        fh, header = self._log_writer() if writes else (None, None)
        writer = None
        tb = _tensorboard(self.run_dir) if writes else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.name, unit="step", disable=not self.progress)
        # a run resumed after its last step (killed before it wrote weights.pt) trains nothing more
        last = {"step": self.step, "loss": float("nan"), "sec_per_step": 0.0, "train_s": self.train_seconds}
        t0 = time.perf_counter()
        try:
            while self.step < cfg.steps:
                start = time.perf_counter()
                rate = self.optimizers[self.phases[0]].param_groups[0]["lr"]  # this update's (logged as "lr")
                batches = [_pinned(self.sampler(self.step * cfg.grad_accum + m, self.dist.rank), self.device)
                           for m in range(cfg.grad_accum)]
                total, logs, grad_norm, all_finite = 0.0, {}, 0.0, True
                for phase in self.phases:
                    if not self._phase_active(phase):
                        continue
                    loss, phase_logs, norm, finite = self._phase_step(phase, batches)
                    total += loss
                    logs.update(phase_logs)
                    grad_norm = max(grad_norm, norm)
                    all_finite = all_finite and finite
                if all_finite:
                    self.ema.update(self.task, self.step)
                else:
                    self.skipped += 1
                    tqdm.write(f"aldm: warning: step {self.step}: non-finite loss or gradient; step skipped",
                               file=sys.stderr)
                    if self.skipped > max(10, cfg.steps // 10):
                        raise AldmError(self._non_finite_message())
                self.step += 1
                elapsed = time.perf_counter() - start
                self.train_seconds += elapsed
                self.step_seconds.append(elapsed)
                last = {"step": self.step, "loss": total, "lr": rate,
                        "grad_norm": grad_norm, "sec_per_step": elapsed, "train_s": self.train_seconds,
                        **{k: float(v) for k, v in logs.items()}}
                if fh is not None and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    if writer is None:
                        writer = csv.DictWriter(fh, fieldnames=header or list(last), extrasaction="ignore")
                        if header is None:
                            writer.writeheader()
                    writer.writerow({k: last.get(k, "") for k in writer.fieldnames})
                    fh.flush()
                    if tb is not None:
                        for k, v in last.items():
                            if k != "step":
                                tb.add_scalar(f"{self.name}/{k}", v, self.step)
                if self.probe is not None and cfg.probe_every and writes and (
                        self.step % cfg.probe_every == 0 or self.step == cfg.steps):
                    self._run_probe(self.train_seconds)
                shown = {k: f"{v:.3f}" for k, v in list(self.last_probe.items())[:2]}
                bar.set_postfix(loss=f"{total:.4f}", s_per_step=f"{elapsed:.2f}", **shown)
                bar.update()
                saved = self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps
                if saved:
                    self.save_checkpoint()
                if self.step < cfg.steps and _any_rank(stop.requested is not None, self.device, self.dist):
                    if not saved:
                        self.save_checkpoint()
                    if self.run_dir is None:
                        raise Stopped(f"{self.name}: stopped by {stop.requested} after step {self.step}/{cfg.steps} "
                                      "(trained in memory; re-run the same command)")
                    raise Stopped(f"{self.run_dir}: stopped by {stop.requested or 'another rank'} after step "
                                  f"{self.step}/{cfg.steps}; checkpoint written; continue with the same command "
                                  "and --resume")
        finally:
            bar.close()
            if fh is not None:
                fh.close()
            if tb is not None:
                tb.close()
        last["wall_s"] = time.perf_counter() - t0
        last["skipped_steps"] = self.skipped
        last["precision"] = self.precision
        return last

    def _run_probe(self, train_s: float) -> None:
        """Evaluate the EMA weights on the held-out probe and append a row to probe.csv (with ``train_s``,
        the seconds of optimisation steps so far, resumes included, probes not)."""
        self.ema.shadow.eval()
        with torch.no_grad(), autocast(self.device, self.precision):
            figures = {k: float(v) for k, v in self.probe(self.ema.shadow, self.step).items()}
        self.last_probe = figures
        if self.config.select_by_probe:
            key = self.probe.selection
            if self.selected is None or figures[key] < self.selected["value"]:
                save_checkpoint(os.path.join(self.run_dir, SELECTED), self.ema.shadow.state_dict())
                self.selected = {"step": self.step, "by": key, "value": figures[key]}
        path = os.path.join(self.run_dir, PROBE)
        new = not os.path.exists(path)
        with open(path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", "train_s", *figures])
            if new:
                writer.writeheader()
            writer.writerow({"step": self.step, "train_s": f"{train_s:.1f}",
                             **{k: f"{v:.6g}" for k, v in figures.items()}})
        plot_probe_curves([(self.name, self.run_dir)], os.path.join(self.run_dir, "probe.png"))

    def selected_task(self) -> nn.Module:
        """The EMA task a finished stage saves: with ``select_by_probe``, a copy holding the weights of the best
        probed step (``self.selected``); else the EMA itself (the last step's)."""
        if self.selected is None:
            return self.ema.shadow
        chosen = copy.deepcopy(self.ema.shadow)
        chosen.load_state_dict(load_checkpoint(os.path.join(self.run_dir, SELECTED)))
        return chosen

    def _non_finite_message(self) -> str:
        """Why training stopped after too many non-finite steps, with the likely cause and its fix."""
        head = f"{self.run_dir}: {self.skipped} non-finite steps"
        if self.precision == "bf16":
            return (f"{head} under bf16 autocast, likely bf16 arithmetic on this {self.device.type}; train in fp32: "
                    "--precision fp32 (or \"precision\": \"fp32\" in the profile's train section) and --resume")
        return f"{head} in fp32; lower the learning rate or check the data (aldm data verify)"


    def _phase_active(self, phase) -> bool:
        """Whether ``phase`` trains at the current step: the task's ``phase_active(phase, step, total_steps)``
        when it has one (a discriminator that starts after a warm-up), else always."""
        active = getattr(self.task, "phase_active", None)
        return active is None or active(phase, self.step, self.config.steps)

    def _phase_step(self, phase, batches: list) -> tuple[float, dict, float, bool]:
        """Forward + backward over the micro-batches, clip, and step one optimiser (skipped if non-finite)."""
        cfg = self.config
        optimizer = self.optimizers[phase]
        optimizer.zero_grad(set_to_none=True)
        total, logs, finite = 0.0, {}, True
        args = () if phase is None else (phase,)
        for micro, batch in enumerate(batches):
            sync = micro == len(batches) - 1 or self.dist.world_size == 1
            ctx = self.model.no_sync() if not sync and hasattr(self.model, "no_sync") else _null()
            with ctx, autocast(self.device, self.precision):
                loss, logs = self.model(batch, self.step, cfg.steps, *args)
            loss = loss / len(batches)
            finite = finite and bool(torch.isfinite(loss.detach()))
            loss.backward()
            total += float(loss.detach())
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")  # inf: the norm, grads unchanged
        norm = torch.nn.utils.clip_grad_norm_(self.params[phase], max_norm)
        finite = _all_ranks_finite(finite and bool(torch.isfinite(norm)), self.device, self.dist)
        if finite:
            optimizer.step()
            self.schedulers[phase].step()
        optimizer.zero_grad(set_to_none=True)
        return total, logs, float(norm), finite


def lr_factor(update: int, config: TrainConfig) -> float:
    """The learning rate of optimiser update ``update`` (0-based) as a fraction of ``config.lr``: a linear
    warm-up over ``warmup_steps``, then 1 (``lr_schedule`` "constant") or half a cosine from 1 at the first
    update after the warm-up towards 0 one update after the last of ``steps`` ("cosine")."""
    warm = min(1.0, (update + 1) / max(1, config.warmup_steps))
    if config.lr_schedule == "constant" or update < config.warmup_steps:
        return warm
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (update - config.warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _checkpoint_problem(exc: Exception) -> str:
    """What is wrong with a checkpoint, in words, from the exception loading it raised."""
    if isinstance(exc, AldmError):
        return "unreadable: truncated, damaged or not a torch file"
    if isinstance(exc, KeyError):
        return f"not a training checkpoint of aldm (it has no {exc.args[0]!r} entry)"
    if isinstance(exc, RuntimeError) and ("size mismatch" in str(exc) or "Missing key" in str(exc)
                                          or "Unexpected key" in str(exc)):
        return "saved by a run of other networks (its weights do not fit this run's config.json)"
    return f"not a checkpoint this run can continue from ({type(exc).__name__})"


def _pinned(batch, device):
    """Page-locked copies of a batch's tensors when training on CUDA, so the tasks' non_blocking
    copies to the GPU really overlap with compute; the batch unchanged otherwise."""
    if torch.device(device).type != "cuda":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: _pinned(v, device) for k, v in batch.items()}
    return batch


def _nbytes(state) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: what writing it will take on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_nbytes(v) for v in state)
    return 0


def _any_rank(flag: bool, device, info: DistInfo) -> bool:
    """True on every rank when any rank's ``flag`` is set (a stop request reaches all ranks together)."""
    if info.world_size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value) > 0.0


def _all_ranks_finite(finite: bool, device, info: DistInfo) -> bool:
    """Every rank skips a step together if any rank saw a non-finite value."""
    if info.world_size == 1:
        return finite
    flag = torch.tensor([0.0 if finite else 1.0], device=device)
    dist.all_reduce(flag)
    return float(flag) == 0.0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _tensorboard(run_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(os.path.join(run_dir, "tensorboard"))
