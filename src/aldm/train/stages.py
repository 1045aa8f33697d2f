"""The four training stages of ALDM (§3.1-3.2), each writing a self-describing run directory.

1. :func:`vae_stage`: the 3D VAE on the source cache (Eq. 3.1-3.4);
2. latent statistics: per-channel mean/std of source latents, computed when stage 3 starts and
   stored with the model;
3. :func:`source_stage`: the conditional latent denoiser (U-Net + FiLM + ControlNet, CFG dropout,
   tumour-weighted loss) on source latents, VAE frozen;
4. :func:`fewshot_stage`: few-shot adaptation of the whole denoiser on K target subjects of a
   saved patient-level split (zero-shot = use stage 3 directly).

Each takes a :class:`~aldm.train.requests.StageRequest` (what to train, where, how), built once by its caller.
Each stage writes a run folder (:mod:`aldm.artifacts.run`: what it holds and how it is read back). LDM runs
also hold ``vae.pt`` and the latent statistics, so a finished LDM run is all that generation needs.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..artifacts.cache import PreparedCache
from ..artifacts.run import SPLIT, Run
from ..artifacts.split import load_split, save_split
from ..config import Profile, TrainConfig, with_condition
from ..data.control import condition_control, condition_statistics, latent_tumour_weight_mask
from ..data.splits import few_shot_split
from ..diffusion.schedule import NoiseSchedule, tumour_weighted_mse
from ..distributed import barrier
from ..errors import AldmError
from ..io.lock import writes_folder
from ..models.families import family
from ..models.unet import ConditionalDenoiser
from ..models.vae import VAE3D, frozen_vae, region_weight, vae_loss
from ..models.vae_adversary import (
    adversary_start,
    check_discriminator_fits,
    decoder_adversarial_loss,
    discriminator_loss,
    patch_discriminator,
)
from .budget import fit_to_budget
from .inpaint_regions import draw_unknown
from .probes import ldm_probe, vae_probe
from .requests import FewShot, ProbeSubjects, Runtime, StageRequest
from .trainer import Trainer, step_generator


# ------------------------------------------------------------------------------------------------ run dirs
def _rows(cache: str, domain: str | None, subjects: list | None = None) -> list[dict]:
    rows = PreparedCache(cache).require().rows(domain)
    if subjects is not None:
        keep = set(subjects)
        rows = [r for r in rows if r["subject"] in keep]
    if not rows:
        raise AldmError(f"{cache}: no {domain or ''} subjects to train on")
    return rows


def _check_data(cache: str, rows: list[dict], profile: Profile, modalities: tuple | None = None) -> None:
    """The cache's volumes fit ``profile`` (size, channels) and, for a run built on another
    (``modalities``: the parent run's), hold the same modalities; else an AldmError saying what to do."""
    data = PreparedCache(cache)
    if modalities is not None and tuple(modalities) != data.modalities:
        raise AldmError(f"{cache}: holds {', '.join(data.modalities)} but the parent run was trained on "
                        f"{', '.join(modalities)}; use a cache of the same modalities")
    if len(data.modalities) != profile.vae.in_channels:
        raise AldmError(f"{cache}: holds {len(data.modalities)} modalities ({', '.join(data.modalities)}) but "
                        f"profile {profile.name!r} has a VAE of {profile.vae.in_channels} input channels")
    size = data.load(rows[0])["image"].shape[-1]
    if size != profile.image_size:
        raise AldmError(f"{cache}: volumes are {size}^3 but profile {profile.name!r} expects "
                        f"{profile.image_size}^3; prepare the cache with --size {profile.image_size}")


def with_cache_channels(profile: Profile, cache: str) -> Profile:
    """``profile`` with ``vae.in_channels`` set to the number of modalities ``cache`` holds (a copy when
    that changes it): what a model trained from scratch on the cache takes."""
    channels = len(PreparedCache(cache).require().modalities)
    if channels == profile.vae.in_channels:
        return profile
    return replace(profile, vae=replace(profile.vae, in_channels=channels))


def inherit_condition(profile: Profile, parent: Run, condition: str | None) -> Profile:
    """``profile`` conditioned as the ``parent`` run whose network a few-shot stage adapts; an AldmError when
    ``condition`` asks for another (the network's inputs are the parent's)."""
    own = parent.profile.condition
    if condition is not None and condition != own:
        raise AldmError(f"{parent.path}: the source run is conditioned on {own!r}; a few-shot stage keeps its "
                        f"condition (--condition {condition} asks for another): adapt a {condition} source run")
    return with_condition(profile, own)


def with_probe_every(profile: Profile | None, every: int | None) -> Profile | None:
    """A copy of ``profile`` with every ALDM stage's ``probe_every`` set to ``every`` (``profile`` itself
    when None or 0; the given profile is never changed)."""
    from dataclasses import replace

    if profile is None or not every:
        return profile
    return replace(profile, **{stage: replace(getattr(profile, stage), probe_every=every)
                               for stage in ("train_vae", "train_ldm", "train_fewshot")})


def select_fewshot(cache: str, rows: list[dict], run: Run, resume: bool, fewshot: FewShot,
                   seed: int) -> tuple[dict, list[dict]]:
    """The few-shot split of a stage-4 run (its own when resuming, a given file, or a new one drawn
    from ``rows``) and the rows of its K subjects."""
    if resume and os.path.exists(run.split_path):
        split = load_split(run.split_path)
    elif fewshot.split_path:
        split = load_split(fewshot.split_path)
    else:
        if fewshot.k is None:
            raise AldmError("few-shot training needs --k (paper: 10 or 16) or --split")
        patients = len({r["patient"] for r in rows})
        if fewshot.k > patients:
            raise AldmError(f"{cache}: --k {fewshot.k} exceeds the {patients} target patients available")
        split = few_shot_split(rows, fewshot.k, fewshot.n_test, seed=seed)
    shots = _rows(cache, rows[0]["domain"], split["k_shot"])
    if len(shots) != len(split["k_shot"]):
        raise AldmError(f"{cache}: the split names subjects that are not in this cache")
    return split, shots


def open_run(request: StageRequest, stage: str, profile: Profile, *, seed: int, domain: str, extra: dict,
             parent: Run | None = None) -> tuple[Run, list]:
    """Check the data (against ``parent``'s modalities when the run builds on another), create (or
    re-open) the run folder of ``request`` and return it with the rows to train on: the ``domain`` subjects
    of its cache, or, with ``request.fewshot``, the K few-shot subjects of the run's split."""
    run_dir, cache, fewshot = request.run_dir, request.cache, request.fewshot
    dist_info, resume = request.runtime.dist, request.runtime.resume
    rows = _rows(cache, domain)
    _check_data(cache, rows, profile, parent.modalities if parent is not None else None)
    info = Run.describe(stage, profile, cache, seed, dist_info.world_size, domain=domain, **extra)
    split = None
    if fewshot is not None:
        info["init_run"] = os.path.abspath(fewshot.init_run)
        split, rows = select_fewshot(cache, rows, Run(run_dir), resume, fewshot, seed)
        info["k"] = len(split["k_shot"])
    info["subjects"] = len(rows)
    kind = extra["model"] if stage == "baseline" else "aldm"  # the VAE is ALDM's first stage
    run = Run.create(run_dir, info, profile, resume, dist_info, family(kind).parts)
    if split is not None and dist_info.is_main and not os.path.exists(run.split_path):
        save_split(run.file(SPLIT), split)
    return run, rows


def run_stage(task: nn.Module, sampler, profile: Profile, stage_config: str, run: Run, runtime: Runtime, *,
              name: str, probe=None) -> tuple[Trainer, dict]:
    """Train ``task`` as the ``stage_config`` stage of ``profile`` (``train_vae``, ``train_ldm``, ...) in
    ``run``: its steps fitted to its ``budget_s`` when it has one (:func:`aldm.train.budget.fit_to_budget`),
    resumed from the run's checkpoint when ``runtime.resume``; returns (the trainer, its last step's
    figures)."""
    dist_info = runtime.dist
    cfg = getattr(fit_to_budget(profile, stage_config, task, sampler, run, dist_info), stage_config)
    trainer = Trainer(task, sampler, cfg, run.path, dist_info, progress=runtime.progress, name=name, probe=probe)
    if runtime.resume:
        trainer.resume()
    return trainer, trainer.run()


# ------------------------------------------------------------------------------------------------ stage 1
class VAETask(nn.Module):
    """L_VAE (Eq. 3.2 + 3.4, KL warm-up Eq. 3.3) of a batch {'image', 'eps'}; with ``vae.adv_weight`` > 0
    also the adversarial patch loss (:mod:`aldm.models.vae_adversary`) in two phases per step: ``g`` (the
    VAE, its loss plus the weighted decoder term) then ``d`` (the discriminator, on the reconstructions
    ``g`` made, detached), both from step :func:`~aldm.models.vae_adversary.adversary_start` on."""

    def __init__(self, vae: VAE3D):
        super().__init__()
        self.vae = vae
        if vae.config.adv_weight > 0:
            self.phases = ("g", "d")
            self.discriminator = patch_discriminator(vae.config)
            self._reconstructions: list[torch.Tensor] = []  # g's x_hat per micro-batch, for d of the same step

    def parameter_groups(self) -> dict:
        """The parameters of each phase's optimiser: the VAE (``g``) and the discriminator (``d``)."""
        return {"g": list(self.vae.parameters()), "d": list(self.discriminator.parameters())}

    def phase_active(self, phase: str, step: int, total_steps: int) -> bool:
        """Whether ``phase`` trains at ``step``: ``d`` only once the adversary has started."""
        return phase != "d" or step >= adversary_start(self.vae.config, total_steps)

    def forward(self, batch: dict, step: int, total_steps: int, phase: str | None = None):
        """The loss of a batch {'image' (B, C, S, S, S), 'eps' (B, zC, s, s, s)[, 'labels' (B, 1, S, S, S) when
        ``vae.tumour_weight`` or ``vae.decoder_regions`` is set]} for ``phase`` (None or ``g``: the VAE's; ``d``:
        the discriminator's); returns (loss, parts)."""
        device = next(self.parameters()).device
        x = batch["image"].to(device, non_blocking=True)
        if phase == "d":
            x_hat = self._reconstructions.pop(0)
            loss = discriminator_loss(self.discriminator, x.float(), x_hat)
            return loss, {"d_loss": loss.detach()}
        mu, logvar = self.vae.encode(x)
        z = mu + torch.exp(0.5 * logvar) * batch["eps"].to(device, dtype=mu.dtype)
        labels = batch["labels"].to(device) if "labels" in batch else None
        x_hat = self.vae.decode(z, labels=labels)  # a decoder_regions decoder sees the label map
        weight = None
        if labels is not None and self.vae.config.tumour_weight:  # the sub-regions weigh more in the L1 term
            weight = region_weight(labels, self.vae.config.tumour_weight)
        loss, parts = vae_loss(x.float(), x_hat.float(), mu.float(), logvar.float(), self.vae.config, step,
                               total_steps, weight)
        if phase == "g":
            nan = torch.tensor(float("nan"))
            parts.update(adv=torch.zeros(()), d_loss=nan)  # the same log columns before the adversary starts
            if self.phase_active("d", step, total_steps):
                self.discriminator.requires_grad_(False)
                adv = decoder_adversarial_loss(self.discriminator, x_hat.float())
                self.discriminator.requires_grad_(True)
                loss = loss + self.vae.config.adv_weight * adv
                parts["adv"] = adv.detach()
                self._reconstructions.append(x_hat.detach().float())
        return loss, parts


@writes_folder("request", "run")
def vae_stage(request: StageRequest, domain: str = "source") -> dict:
    """Stage 1: the VAE on the ``domain`` subjects of ``request.cache`` (``request.profile`` required);
    ``request.probe``: held-out subjects whose reconstruction is measured every ``probe_every`` steps
    (probe.csv). Returns the last step's figures."""
    dist_info, cache = request.runtime.dist, request.cache
    cfg = _override(request.profile.train_vae, request.steps, request.seed, request.precision)
    # the caller's profile is left as it was; the VAE takes as many channels as the cache holds
    profile = with_cache_channels(replace(request.profile, train_vae=cfg), cache)
    crop = profile.vae.train_crop
    if crop and (crop % 4 or not 4 <= crop <= profile.image_size):
        raise AldmError(f"vae.train_crop must be a multiple of 4 up to {profile.image_size}, got {crop}")
    check_discriminator_fits(profile.vae, crop or profile.image_size)
    run, rows = open_run(request, "vae", profile, seed=cfg.seed, domain=domain, extra={})
    data = PreparedCache(cache)
    subjects = [data.load(r) for r in rows]  # each subject's arrays read once
    images = torch.stack([torch.from_numpy(d["image"]).half() for d in subjects])
    # the label maps only when the loss weights the tumour's regions (vae.tumour_weight) or the decoder draws them
    labels = (torch.stack([torch.from_numpy(d["labels"].astype(np.uint8)) for d in subjects])
              if profile.vae.tumour_weight or profile.vae.decoder_regions else None)
    del subjects
    latent_shape = (profile.vae.latent_channels,) + ((crop or profile.image_size) // 4,) * 3

    def sampler(step: int, rank: int) -> dict:
        g = step_generator(cfg.seed, step, rank)
        idx = torch.randint(len(images), (cfg.batch_size,), generator=g)
        volumes = {"image": images[idx].float()} | ({} if labels is None else {"labels": labels[idx]})
        if crop:  # one random cube per sample, on the 4-voxel grid of the latents
            starts = torch.randint((profile.image_size - crop) // 4 + 1, (cfg.batch_size, 3), generator=g) * 4
            volumes = {key: torch.stack([v[:, a:a + crop, b:b + crop, c:c + crop]
                                         for v, (a, b, c) in zip(stacked, starts)])
                       for key, stacked in volumes.items()}
        return volumes | {"eps": torch.randn((cfg.batch_size, *latent_shape), generator=g)}

    torch.manual_seed(cfg.seed)
    probe_fn = _vae_probe(request.probe, rows)
    task = VAETask(VAE3D(profile.vae))
    trainer, last = run_stage(task, sampler, profile, "train_vae", run, request.runtime, name="vae", probe=probe_fn)
    if dist_info.is_main:
        run.save_weights({"vae": trainer.ema.shadow.vae.state_dict()})
    barrier(dist_info)
    return last


def _vae_probe(probe: ProbeSubjects | None, rows: list[dict]):
    """The held-out reconstruction probe of stage 1 (None without probe subjects)."""
    if probe is None:
        return None
    probe.check_held_out(rows)
    probe_data = PreparedCache(probe.cache)
    held = [probe_data.load(r) for r in probe.rows()]
    return vae_probe(torch.stack([torch.from_numpy(d["image"]) for d in held]), probe_data.modalities,
                     torch.stack([torch.from_numpy(d["labels"].astype(np.uint8)) for d in held]))


# ------------------------------------------------------------------------------------------------ stage 2
@torch.no_grad()
def encode_subjects(vae: VAE3D, cache: str, rows: list[dict], latent_size: int, device,
                    condition: str = "mask") -> dict:
    """Posterior (mu, logvar), control maps, FiLM statistics and latent weight masks of each subject.

    Returns tensors stacked over subjects: mu/logvar (N, zC, s, s, s), control (N, 3 M, s, s, s),
    stats (N, 8 M), weight (N, 1, s, s, s), M the masks of ``condition`` (1 for the paper's ``mask``); the latent
    cells touching the whole tumour and the brain, tumour and brain (N, 1, s, s, s) (inpainting regions).
    Control signals come from :mod:`aldm.data.control` of the cached label map (and brain mask), the
    same functions sampling uses; the tumour weight of Eq. 3.9 is the whole tumour's.
    """
    out = {"mu": [], "logvar": [], "control": [], "stats": [], "weight": [], "tumour": [], "brain": []}
    prepared = PreparedCache(cache)
    for row in rows:
        data = prepared.load(row)
        x = torch.from_numpy(data["image"])[None].to(device)
        mu, logvar = vae.encode(x)
        labels = torch.from_numpy(data["labels"].astype(np.float32))[None]
        brain = torch.from_numpy(data["brain"].astype(np.float32))[None]
        out["mu"].append(mu.float().cpu())
        out["logvar"].append(logvar.float().cpu())
        out["control"].append(condition_control(labels, condition, latent_size, brain))
        out["stats"].append(condition_statistics(labels, condition, brain))
        out["weight"].append(latent_tumour_weight_mask(labels, latent_size))
        out["tumour"].append(F.adaptive_max_pool3d((labels > 0).float(), latent_size))
        out["brain"].append(F.adaptive_max_pool3d(brain, latent_size))
    return {k: torch.cat(v) for k, v in out.items()}


def latent_batch(encoded: dict, batch_size: int, g: torch.Generator) -> tuple[dict, torch.Tensor]:
    """A training batch of :func:`encode_subjects`' tensors: ``batch_size`` subjects drawn with replacement from
    ``g`` (their indices returned too), their mu, logvar, control, stats and weight, and fresh posterior and forward
    noise ('eps_posterior', 'eps', each (B, zC, s, s, s)), drawn in that order."""
    idx = torch.randint(encoded["mu"].shape[0], (batch_size,), generator=g)
    batch = {key: encoded[key][idx] for key in ("mu", "logvar", "control", "stats", "weight")}
    batch["eps_posterior"] = torch.randn(batch["mu"].shape, generator=g)
    batch["eps"] = torch.randn(batch["mu"].shape, generator=g)
    return batch, idx


def latent_statistics(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2: per-channel mean and std of source latents mu (N, zC, s, s, s) -> (zC,), (zC,)."""
    mean = mu.mean(dim=(0, 2, 3, 4))
    std = mu.std(dim=(0, 2, 3, 4)).clamp(min=1e-6)
    return mean, std


# ------------------------------------------------------------------------------------------------ stage 3/4
class LDMTask(nn.Module):
    """Eq. 3.5 + 3.9 with CFG dropout of all conditioning together (p_drop, §3.2.4); with
    ``min_snr_gamma`` > 0 each sample's loss is weighted by min(SNR_t, gamma) / SNR_t (Min-SNR-gamma,
    Hang et al. 2023, for noise prediction; min(SNR_t, gamma) / (SNR_t + 1) for v). Under the schedule's
    ``prediction`` = "v" the loss of Eq. 3.9 is taken on v instead of eps (Salimans & Ho 2022)."""

    def __init__(self, denoiser: ConditionalDenoiser, schedule: NoiseSchedule, tumour_weight: float,
                 latent_mean: torch.Tensor, latent_std: torch.Tensor, min_snr_gamma: float = 0.0):
        super().__init__()
        self.denoiser = denoiser
        self.schedule = schedule
        self.tumour_weight = tumour_weight
        self.min_snr_gamma = min_snr_gamma
        self.register_buffer("latent_mean", latent_mean.view(1, -1, 1, 1, 1).clone())
        self.register_buffer("latent_std", latent_std.view(1, -1, 1, 1, 1).clone())

    def _denoise(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """(z_0, z_t, the denoiser's output, the batch on the device) for a batch of cached posteriors; z_0 is
        normalised with the source latent statistics and the conditioning zeroed where 'keep' is 0."""
        dev = self.latent_mean.device
        b = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        z = b["mu"] + torch.exp(0.5 * b["logvar"]) * b["eps_posterior"]
        z0 = (z - self.latent_mean) / self.latent_std
        z_t = self.schedule.q_sample(z0, b["t"], b["eps"])
        keep = b["keep"].view(-1, 1)
        context = None
        if "unknown" in b:  # an inpainting example: the ControlNet reads the latent outside the region
            known = 1.0 - b["unknown"]
            context = torch.cat([z0 * known, known], dim=1)
        out = self.denoiser(z_t, b["t"], b["control"] * keep.view(-1, 1, 1, 1, 1), b["stats"] * keep,
                            context=context)
        return z0, z_t, out.float(), b

    def noise_prediction(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(eps, eps_theta(z_t, t, c), the batch on the device): the prediction as noise whatever the
        denoiser outputs (what the held-out probes compare across recipes)."""
        _, z_t, out, b = self._denoise(batch)
        return b["eps"], self.schedule.as_noise(out, z_t, b["t"]), b

    def forward(self, batch: dict, step: int, total_steps: int):
        """Eq. 3.9 on a batch of cached posteriors {'mu', 'logvar', 'eps_posterior', 'eps', 't', 'control',
        'stats', 'weight', 'keep'[, 'unknown']}; returns (loss, logs). With 'unknown' (B, 1, s, s, s), the region
        each example generates (:mod:`aldm.train.inpaint_regions`), the ControlNet reads the rest of z_0 and the
        loss counts that region only (the known latent decides the rest when sampling)."""
        z0, _, out, b = self._denoise(batch)
        target = self.schedule.training_target(z0, b["t"], b["eps"])
        sample_weight = self.schedule.min_snr_weight(b["t"], self.min_snr_gamma) if self.min_snr_gamma > 0 else None
        loss = tumour_weighted_mse(target, out, b["weight"], self.tumour_weight, sample_weight, b.get("unknown"))
        return loss, {"dropped": 1.0 - b["keep"].mean()}


def _override(cfg: TrainConfig, steps: int | None, seed: int | None, precision: str | None = None) -> TrainConfig:
    """``cfg`` with the command line's --steps, --seed and --precision where given (a StageRequest has checked
    them)."""
    changes = {key: value for key, value in (("steps", steps), ("seed", seed), ("precision", precision))
               if value is not None}
    return replace(cfg, **changes)


def check_latent_parent(vae_run: str | None, init_run: str | None, from_scratch: bool = False) -> None:
    """A latent stage builds on exactly one run: a VAE run (stage 3) or a source run to adapt (stage 4, which
    alone may start from scratch); an AldmError saying so otherwise."""
    if (init_run is not None) == (vae_run is not None):
        raise AldmError("give exactly one of --vae (source pre-training) or --init (few-shot adaptation)")
    if from_scratch and init_run is None:
        raise AldmError("from_scratch trains the few-shot stage without pre-training: it needs --init (for the VAE)")


def source_stage(request: StageRequest, vae_run: str) -> dict:
    """Stages 2-3: the latent statistics and the conditional denoiser pre-trained on the source subjects of
    ``request.cache``, on the finished VAE run ``vae_run``. ``request.condition`` (None: the profile's): what the
    denoiser is conditioned on (:mod:`aldm.conditions`); ``request.profile`` None: the VAE run's.
    ``request.probe``: held-out subjects whose noise-prediction error per timestep band is measured every
    ``probe_every`` steps (probe.csv). Returns the last step's figures."""
    if request.fewshot is not None:
        raise AldmError("source pre-training starts from a VAE run; a few-shot request goes to fewshot_stage")
    return _latent_stage(request, Run(vae_run))


def fewshot_stage(request: StageRequest) -> dict:
    """Stage 4: few-shot adaptation of the finished source run ``request.fewshot.init_run`` on K target subjects
    of a saved split (or drawn now); it keeps its parent's condition. With ``fewshot.from_scratch`` (the
    no-pre-training ablation) the denoiser starts from random weights; the source run gives only its VAE,
    latent statistics and networks' shapes. Returns the last step's figures."""
    if request.fewshot is None:
        raise AldmError("few-shot adaptation needs the source run it adapts (--init)")
    return _latent_stage(request, Run(request.fewshot.init_run))


@writes_folder("request", "run")
def _latent_stage(request: StageRequest, vae_source: Run) -> dict:
    """Stage 3 or 4 (``request.fewshot`` None or not) with ``vae_source`` the run whose VAE it builds on."""
    dist_info, fewshot, cache = request.runtime.dist, request.fewshot, request.cache
    profile = _latent_profile(request, vae_source)
    parent = vae_source.require_finished().weights() if fewshot else None
    stage_config = "train_fewshot" if fewshot else "train_ldm"
    cfg = _override(getattr(profile, stage_config), request.steps, request.seed, request.precision)
    profile = replace(profile, **{stage_config: cfg})  # the caller's profile is left as it was
    device = dist_info.device
    vae = frozen_vae(vae_source.profile.vae, vae_source.vae_state(), device, vae_source.path)
    scratch = bool(fewshot and fewshot.from_scratch)
    run, rows = open_run(request, "fewshot" if fewshot else "ldm", profile, seed=cfg.seed,
                         domain="target" if fewshot else "source",
                         extra={"vae_run": os.path.abspath(vae_source.info.get("vae_run", vae_source.path)
                                                           if scratch else vae_source.path),
                                **({"from_scratch": True} if scratch else {})},
                         parent=vae_source)

    encoded = encode_subjects(vae, cache, rows, profile.latent_size, device, profile.condition)
    mean, std = (parent["latent_mean"], parent["latent_std"]) if fewshot else latent_statistics(encoded["mu"])
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    denoiser = ConditionalDenoiser(profile.unet, profile.vae.latent_channels)
    if fewshot and not scratch:
        load_parent_denoiser(denoiser, parent["denoiser"], vae_source)
    task = LDMTask(denoiser, NoiseSchedule(profile.diffusion), profile.diffusion.tumour_weight, mean, std,
                   profile.diffusion.min_snr_gamma)
    p_drop, T = profile.diffusion.cond_dropout, profile.diffusion.timesteps

    def sampler(step: int, rank: int) -> dict:
        g = step_generator(cfg.seed, step, rank)
        batch, idx = latent_batch(encoded, cfg.batch_size, g)
        batch["t"] = torch.randint(T, (cfg.batch_size,), generator=g)
        batch["keep"] = (torch.rand(cfg.batch_size, generator=g) >= p_drop).float()
        if profile.unet.inpaint_context:
            batch["unknown"] = draw_unknown(encoded["tumour"], encoded["brain"], idx, g)
        return batch

    torch.manual_seed(cfg.seed)
    probe_fn = None
    if request.probe is not None:
        held = encode_subjects(vae, request.probe.cache, request.probe.check_held_out(rows).rows(),
                               profile.latent_size, device, profile.condition)
        probe_fn = ldm_probe(held, profile.diffusion.timesteps, seed=cfg.seed)
    trainer, last = run_stage(task, sampler, profile, stage_config, run, request.runtime,
                              name="fewshot" if fewshot else "ldm", probe=probe_fn)
    if dist_info.is_main:
        run.save_vae(vae.state_dict())
        ema = trainer.selected_task()  # the last step's EMA, or the best probed one's (select_by_probe)
        if trainer.selected is not None:
            run.record("selected", trainer.selected)
        run.save_weights({"denoiser": ema.denoiser.state_dict(), "latent_mean": mean.cpu(), "latent_std": std.cpu()})
    barrier(dist_info)
    return last


def load_parent_denoiser(denoiser: ConditionalDenoiser, state: dict, parent: Run) -> None:
    """The parent run's denoiser weights into ``denoiser``; a ControlNet that reads the known latent
    (``inpaint_context``) adapted from a parent without one keeps its zero-initialised context stem, so it
    starts as the parent."""
    missing, unexpected = denoiser.load_state_dict(state, strict=False)
    new = [k for k in missing if k.startswith("controlnet.context_stem.")]
    if unexpected or len(new) != len(missing):
        raise AldmError(f"{parent.path}: its denoiser does not fit this profile's U-Net (missing "
                        f"{[k for k in missing if k not in new][:3]}, unexpected {unexpected[:3]})")


def _latent_profile(request: StageRequest, vae_source: Run) -> Profile:
    """The profile of a latent stage: the request's (None: the parent run's) with the parent's VAE config, its
    condition the parent's (few-shot) or the request's; a label-conditioned VAE refused under a binary mask."""
    profile = replace(request.profile or vae_source.profile, vae=vae_source.profile.vae)
    if request.fewshot is not None:  # the denoiser adapted is the parent's, conditioned as it was
        profile = inherit_condition(profile, vae_source, request.condition)
    else:
        profile = with_condition(profile, request.condition)
    if profile.vae.decoder_regions and profile.condition == "mask":
        raise AldmError(f"{vae_source.path}: this VAE's decoder draws the tumour's sub-regions from the label map "
                        "(vae.decoder_regions); train the LDM with --condition regions or regions+brain")
    return profile
