"""Typed configs and the named profiles ``paper``, ``small`` and ``tiny``; saved with every run.

``paper`` follows §3 of the paper and the widths of its public reference code: 112^3 volumes,
a VAE 3 -> 64 -> 128 -> 256 (+ refinement at 28^3) -> 8 latent channels, a U-Net 96/192/384 at
28/14/7 with one residual block per level and GroupNorm(8), time embedding 256, T = 1000 linear
betas 1e-4 -> 2e-2, CFG dropout 0.1, lambda_ctrl = 1.0, KL warm-up over rho = 0.35 of training.
``gpu`` is ``paper``'s networks with the recipe measured as better on CPU (v-prediction, EMA warm-up, VAE on
crops); ``small`` (64^3) fits the CPU demo; ``tiny`` (32^3) is for tests.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .conditions import DEFAULT_CONDITION, control_channel_count, parse_condition, statistic_count
from .errors import AldmError

# the UNetConfig fields that follow from a profile's condition (derived, never stored in a config.json)
CONDITION_SIZED = ("control_in", "stats_dim")
# what every config.json holds beside the parts of its run's family (aldm.models.families.Family.parts)
PROFILE_COMMON = ("name", "image_size", "condition")

PRECISIONS = ("auto", "fp32", "bf16")  # of training and inference (aldm.precision)
PREDICTIONS = ("epsilon", "v")  # what the latent denoiser outputs (DiffusionConfig.prediction)


def _whole(config, name: str, low: int = 1) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise AldmError(f"{type(config).__name__}.{name} must be a whole number >= {low}, got {value!r}")


def _widths(config, name: str, groups: int = 1) -> None:
    value = getattr(config, name)
    if (not isinstance(value, tuple) or not value
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % groups for v in value)):
        rule = f"multiples of {groups}" if groups > 1 else "whole numbers >= 1"
        raise AldmError(f"{type(config).__name__}.{name} must be a list of {rule}, got {value!r}")


def _number(config, name: str, low: float = 0.0, high: float = float("inf"), open_low: bool = False) -> None:
    value = getattr(config, name)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
            or value < low or value > high or (open_low and value == low)):
        bound = f"{'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high != float("inf") else "")
        raise AldmError(f"{type(config).__name__}.{name} must be a number {bound}, got {value!r}")


@dataclass
class VAEConfig:
    """The 3D VAE of §3.1 (Eq. 3.1-3.4): widths at S, S/2, S/4, latent channels zC and loss weights."""
    in_channels: int = 3
    latent_channels: int = 8  # zC
    channels: tuple = (64, 128, 256)  # at S, S/2, S/4
    refine_blocks: int = 1  # residual refinement blocks at the latent resolution
    # residual blocks at S/2 in the encoder (after its first strided convolution) and the decoder (after its
    # first upsampling stage); 0 = the paper's single convolution per level
    level_blocks: int = 0
    logvar_clamp: tuple = (-20.0, 10.0)
    kl_weight: float = 1e-4  # lambda_KL (Eq. 3.2), reached after the warm-up of Eq. 3.3
    kl_warmup_fraction: float = 0.35  # rho (Eq. 3.3)
    rec_weight: float = 1.0  # lambda_rec
    grad_weight: float = 1.0  # weight of the 3D gradient-consistency loss (Eq. 3.4)
    # weight of a spectral (FFT amplitude) loss, MONAI's JukeboxLoss, beside L1 + gradient; 0 = off (the paper)
    spectral_weight: float = 0.0
    # weight of a 3D SSIM loss (1 - SSIM, MONAI's SSIMLoss, Gaussian window of 7 voxels) beside L1 + gradient, the
    # mix Zhao et al. (IEEE TCI 2017) found best for image restoration; 0 = off (the paper)
    ssim_weight: float = 0.0
    # the reconstruction L1 weighted voxel-wise by 1 + tumour_weight * (number of BraTS regions holding the voxel:
    # oedema 1, necrosis 2 (WT, TC), enhancing 3 (WT, TC, ET)), as a weighted mean (aldm.models.vae.region_weight);
    # the sub-regions are a few per cent of the voxels and an unweighted L1 lets the VAE smooth them away
    # (the enhancing rim on T1c). 0 = off (the paper)
    tumour_weight: float = 0.0
    # the decoder also sees the tumour's BraTS regions (WT, TC, ET masks of the label map, at every decoder
    # resolution: area-averaged to S/4 and S/2, exact at S), so a sub-region the latents blur (the enhancing rim)
    # is drawn where the label map puts it — a label-conditioned decoder as in brainSPADE (Fernandez et al.,
    # SASHIMI 2022). Every decode then needs the label map: training (the cache's), sampling (the condition's).
    # Not in the paper (False); the regions-mode experiments and demo turn it on
    decoder_regions: bool = False
    # train on random cubic crops of this edge (a multiple of 4; 0 = whole volumes, the paper): the
    # network is fully convolutional, so crops buy more steps per CPU-second
    train_crop: int = 0
    # adversarial patch loss (not in the paper): weight of the reconstruction's least-squares term against
    # MONAI's PatchDiscriminator (aldm.models.vae_adversary); 0 = off (the paper). The discriminator and
    # the term switch on after adv_start_fraction of the steps (the VAE first learns to reconstruct).
    adv_weight: float = 0.0
    adv_start_fraction: float = 0.25
    disc_channels: int = 32  # the discriminator's first width (doubling per layer)
    disc_layers: int = 3  # its strided layers (receptive field ~ 4 * 2^layers voxels)

    def __post_init__(self):
        """Refuse widths, channels or weights that cannot build or train a VAE (an AldmError naming the field)."""
        for name in ("in_channels", "latent_channels"):
            _whole(self, name)
        _whole(self, "refine_blocks", 0)
        _whole(self, "level_blocks", 0)
        _widths(self, "channels")
        if len(self.channels) != 3:
            raise AldmError(f"VAEConfig.channels must give 3 widths (at S, S/2, S/4), got {self.channels!r}")
        for name in ("kl_weight", "rec_weight", "grad_weight", "spectral_weight", "ssim_weight", "adv_weight",
                     "tumour_weight"):
            _number(self, name)
        _number(self, "kl_warmup_fraction", 0.0, 1.0)
        _number(self, "adv_start_fraction", 0.0, 1.0)
        _whole(self, "disc_channels")
        _whole(self, "disc_layers")
        _whole(self, "train_crop", 0)
        if not isinstance(self.decoder_regions, bool):
            raise AldmError(f"VAEConfig.decoder_regions must be true or false, got {self.decoder_regions!r}")
        if self.train_crop % 4:
            raise AldmError(f"VAEConfig.train_crop must be a multiple of 4 (0: whole volumes), got {self.train_crop}")


@dataclass
class UNetConfig:
    """The latent denoiser of §3.2: U-Net widths per level, time embedding (Eq. 3.6), FiLM statistics
    (Eq. 3.7), ControlNet widths and its residual weight lambda_ctrl."""
    channels: tuple = (96, 192, 384)  # at latent resolutions 28, 14, 7
    res_blocks: int = 1
    groups: int = 8
    time_dim: int = 256  # sinusoidal embedding size d (Eq. 3.6)
    stats_dim: int = 8  # global mask statistics for FiLM (aldm.data.control.STATISTICS), 8 per condition mask
    control_channels: tuple = (64, 128, 256)  # ControlNet widths at 28, 14, 7
    control_in: int = 3  # [mask, edge, soft distance] per condition mask (Profile.condition)
    lambda_ctrl: float = 1.0
    # the control maps also enter the U-Net's own input, concatenated to z_t (as Med-DDPM, Dorjsembe et al.
    # 2024, conditions on the mask); False = the ControlNet alone carries them (the paper)
    input_control: bool = False
    # False: no ControlNet, the condition reaches the U-Net through the FiLM statistics alone (and input_control
    # when set) — the no-ControlNet ablation; True = the paper
    controlnet: bool = True
    # the ControlNet also reads the known part of the latent, [z0 * keep, keep] (zC + 1 channels), through a
    # zero-initialised stem: a model trained to fill a region from its surroundings (scan editing,
    # aldm.editing), not in the paper; False = the paper
    inpaint_context: bool = False
    # the denoiser also takes the guidance scale s of Eq. 3.8 as an input, embedded as t is (Eq. 3.6) through a
    # zero-initialised MLP: a distilled student that gives the guided prediction in one forward (aldm.train.
    # distillation, Meng et al. 2023); False = the paper (guidance combines two forwards)
    guidance_input: bool = False

    def __post_init__(self):
        """Refuse widths that cannot build the U-Net or its ControlNet (GroupNorm needs multiples of ``groups``)."""
        for name in ("res_blocks", "groups", "time_dim", "stats_dim", "control_in"):
            _whole(self, name)
        _widths(self, "channels", self.groups)
        _widths(self, "control_channels", self.groups)
        if len(self.channels) != len(self.control_channels):
            raise AldmError(f"UNetConfig.control_channels must have one width per U-Net level ({len(self.channels)}), "
                            f"got {self.control_channels!r}")
        _number(self, "lambda_ctrl")
        if self.inpaint_context and not self.controlnet:
            raise AldmError("UNetConfig.inpaint_context needs the ControlNet (controlnet true): it reads the known "
                            "latent")


@dataclass
class DiffusionConfig:
    """The forward process (Eq. 3.5: T, linear betas), CFG dropout (§3.2.4) and the tumour weight of Eq. 3.9."""
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    cond_dropout: float = 0.1  # p_drop: all conditioning dropped together (§3.2.4)
    tumour_weight: float = 2.0  # w(m) = 1 + tumour_weight * dilated latent mask (Eq. 3.9)
    # Min-SNR-gamma loss weighting (Hang et al. 2023): min(SNR_t, gamma) / SNR_t per sample; 0 = off (the paper)
    min_snr_gamma: float = 0.0
    # what the denoiser outputs: "epsilon" (the noise, the paper) or "v" = sqrt(abar) eps - sqrt(1 - abar) z_0
    # (Salimans & Ho 2022); samplers always receive eps, converted from v
    prediction: str = "epsilon"

    def __post_init__(self):
        """Refuse an unknown prediction, a schedule that is not 0 < beta_start < beta_end < 1, or a dropout
        outside [0, 1)."""
        if self.prediction not in PREDICTIONS:
            raise AldmError(f"DiffusionConfig.prediction must be one of {', '.join(PREDICTIONS)}, got "
                            f"{self.prediction!r}")
        _whole(self, "timesteps", 2)
        _number(self, "beta_start", 0.0, 1.0, open_low=True)
        _number(self, "beta_end", 0.0, 1.0, open_low=True)
        if not self.beta_start < self.beta_end < 1.0:
            raise AldmError(f"DiffusionConfig: need beta_start < beta_end < 1, got {self.beta_start} and "
                            f"{self.beta_end}")
        _number(self, "cond_dropout", 0.0, 0.999)
        _number(self, "tumour_weight")
        _number(self, "min_snr_gamma")


@dataclass
class BaselineConfig:
    """The comparison models of §4.2: CGAN, 3M-CGAN and VAE-GAN (one config for the three)."""

    gen_channels: tuple = (32, 64, 128)  # generator U-Net widths at S, S/2, S/4
    gen_res_blocks: int = 2  # residual blocks at S/4
    noise_channels: int = 8  # z ~ N(0, I) of (noise_channels, S/4, S/4, S/4), injected at S/4
    disc_channels: tuple = (32, 64, 128)  # patch discriminator widths (spectral norm, hinge loss)
    adv_weight: float = 1.0
    l1_weight: float = 0.0  # CGAN: purely adversarial (Mirza & Osindero)
    tumour_consistency: float = 10.0  # 3M-CGAN: L1 to the paired real volume in the dilated tumour
    vaegan_rec: float = 1.0
    vaegan_kl: float = 1e-3
    diffaugment: bool = True  # translation + intensity augmentation of D's inputs in the few-shot stage
    adam_betas: tuple = (0.5, 0.999)
    # the generator also takes the voxel coordinates (x, y, z in [-1, 1]; CoordConv, Liu et al. 2018) beside the
    # control maps, so it can place the anatomy of registered volumes where it is, not only near the borders
    # and the mask; False = the control maps alone (the paper's baselines)
    coordinates: bool = False

    def __post_init__(self):
        """Refuse widths or weights that cannot build or train the baselines."""
        _widths(self, "gen_channels")
        _widths(self, "disc_channels")
        for name in ("gen_res_blocks", "noise_channels"):
            _whole(self, name)
        for name in ("adv_weight", "l1_weight", "tumour_consistency", "vaegan_rec", "vaegan_kl"):
            _number(self, name)


PIXEL_LOSSES = ("l1", "mse")


@dataclass
class PixelDiffusionConfig:
    """The pixel-space diffusion peer, in the manner of Med-DDPM (Dorjsembe et al., "Conditional
    Diffusion Models for Semantic 3D Brain MRI Synthesis", IEEE JBHI 2024): a 3D U-Net on the volume itself (no
    VAE), the condition's control maps concatenated to x_t at its input, no ControlNet and no mask statistics.
    The forward process, CFG dropout and samplers are ALDM's (``Profile.diffusion``); what it predicts and its
    loss are its own: Med-DDPM predicts the noise with an L1 loss."""
    channels: tuple = (32, 64, 128, 256)  # U-Net widths at S, S/2, S/4, S/8 (one level per width)
    res_blocks: int = 1
    groups: int = 8
    time_dim: int = 128
    prediction: str = "epsilon"  # or "v", as DiffusionConfig.prediction
    loss: str = "l1"  # "l1" (Med-DDPM) or "mse"

    def __post_init__(self):
        """Refuse widths the U-Net cannot build, an unknown prediction or loss."""
        for name in ("res_blocks", "groups", "time_dim"):
            _whole(self, name)
        _widths(self, "channels", self.groups)
        if self.prediction not in PREDICTIONS:
            raise AldmError(f"PixelDiffusionConfig.prediction must be one of {', '.join(PREDICTIONS)}, got "
                            f"{self.prediction!r}")
        if self.loss not in PIXEL_LOSSES:
            raise AldmError(f"PixelDiffusionConfig.loss must be one of {', '.join(PIXEL_LOSSES)}, got {self.loss!r}")


LR_SCHEDULES = ("constant", "cosine")


# how a student learns fewer steps (aldm.train.distillation): halving rounds, or one round of the whole factor
DISTILL_METHODS = ("progressive", "direct")


@dataclass
class DistillConfig:
    """Distillation of a finished ALDM run into a few-step student (aldm.train.distillation): the guidance scales
    s the student learns (uniform in ``guidance_range``), the DDIM steps of the first halving round's teacher
    (``teacher_steps``, a power of two times ``steps_to``) and the steps the student ends with."""
    guidance_range: tuple = (1.0, 5.0)
    teacher_steps: int = 16
    steps_to: int = 4
    method: str = "progressive"

    def __post_init__(self):
        """Refuse a guidance range outside [0, 20] or reversed, step counts that do not halve from
        ``teacher_steps`` down to ``steps_to``, an unknown method."""
        lo_hi = self.guidance_range
        if (not isinstance(lo_hi, tuple) or len(lo_hi) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in lo_hi)
                or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 20.0):
            raise AldmError(f"DistillConfig.guidance_range must be [low, high] with 0 <= low <= high <= 20, "
                            f"got {lo_hi!r}")
        _whole(self, "teacher_steps")
        _whole(self, "steps_to")
        ratio = self.teacher_steps // self.steps_to
        if self.teacher_steps % self.steps_to or ratio & (ratio - 1):
            raise AldmError(f"DistillConfig: teacher_steps ({self.teacher_steps}) must be steps_to ({self.steps_to}) "
                            "times a power of two (each round halves the steps)")
        if self.method not in DISTILL_METHODS:
            raise AldmError(f"DistillConfig.method must be one of {', '.join(DISTILL_METHODS)}, got {self.method!r}")


@dataclass
class TrainConfig:
    """One training stage: length, batch, AdamW, warm-up, clipping, accumulation, EMA, precision,
    checkpoint and log intervals, seed."""
    steps: int = 20000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    # the learning rate after the linear warm-up: "constant" (the paper's) or "cosine" (half a cosine from lr down
    # to 0 at the last step, Loshchilov & Hutter, ICLR 2017, without restarts)
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.999
    # EMA warm-up (as diffusers' EMAModel): decay_t = min(ema_decay, (1 + t) / (10 + t)), so a short run's
    # averaged weights are not dominated by the initial ones; False = a constant decay
    ema_warmup: bool = False
    probe_every: int = 0  # held-out probe (reconstruction / loss per timestep band) every N steps; 0 = off
    # with a probe that names a selection figure (the LDM's: its mean held-out noise error): the stage keeps the
    # EMA weights of the probed step where that figure was lowest instead of the last (checkpoint selection on
    # held-out patients, against a few-shot stage that learns its K patients by heart); False = the last
    select_by_probe: bool = False
    # "auto": bf16 autocast where the device trains correctly in bf16 (CUDA, AMX CPUs; aldm.precision),
    # else fp32; "fp32" or "bf16" force one. Older runs' "mixed_precision": true/false read as auto/fp32.
    precision: str = "auto"
    checkpoint_every: int = 1000
    log_every: int = 10
    seed: int = 0
    # seconds of optimisation the stage may spend (a compute budget); > 0: when the run starts, ``steps`` is
    # replaced by the number of steps that fit, from a few timed steps on this machine (aldm.train.budget),
    # and recorded in run.json so that a resumed run trains exactly those steps; 0 = ``steps`` as given
    budget_s: float = 0.0

    def __post_init__(self):
        """Refuse an unknown precision and lengths, rates or decays a stage cannot run with."""
        if self.precision not in PRECISIONS:
            raise AldmError(f"TrainConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise AldmError(f"TrainConfig.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                            f"got {self.lr_schedule!r}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            _whole(self, name)
        for name in ("warmup_steps", "probe_every"):
            _whole(self, name, 0)
        _number(self, "lr", 0.0, open_low=True)
        _number(self, "weight_decay")
        _number(self, "grad_clip")
        _number(self, "ema_decay", 0.0, 1.0)
        _number(self, "budget_s")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise AldmError(f"TrainConfig.seed must be a whole number, got {self.seed!r}")


@dataclass
class Profile:
    """Everything a run is built from: image size S and the configs of every network and stage;
    saved as ``config.json`` in each run. The U-Net's control channels and FiLM statistics
    (``unet.control_in`` / ``stats_dim``) follow from ``condition``: they are set from it when the profile
    is built, whatever ``unet`` said."""
    name: str
    image_size: int
    vae: VAEConfig = field(default_factory=VAEConfig)
    # what the generators (ALDM and the baselines) are conditioned on (aldm.conditions): "mask" (the paper),
    # "regions" (the BraTS regions WT / TC / ET) or "regions+brain"; unet.control_in / stats_dim are derived from it
    condition: str = DEFAULT_CONDITION
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train_vae: TrainConfig = field(default_factory=TrainConfig)
    train_ldm: TrainConfig = field(default_factory=TrainConfig)
    train_fewshot: TrainConfig = field(default_factory=TrainConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    train_baseline: TrainConfig = field(default_factory=TrainConfig)
    train_baseline_fewshot: TrainConfig = field(default_factory=TrainConfig)
    pixel: PixelDiffusionConfig = field(default_factory=PixelDiffusionConfig)
    train_pixel: TrainConfig = field(default_factory=TrainConfig)
    train_pixel_fewshot: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # one phase of distillation (the guidance phase, then each halving round) trains this long
    train_distill: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000, lr=5e-5, warmup_steps=100))

    def __post_init__(self):
        """Refuse an image size the networks cannot take: the VAE downsamples by 4 and the U-Net's latent by
        4 again, so S must be a positive multiple of 16."""
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 16 \
                or self.image_size % 16:
            raise AldmError(f"Profile.image_size must be a positive multiple of 16, got {self.image_size!r}")
        parse_condition(self.condition, "Profile.condition")
        sizes = dict(zip(CONDITION_SIZED, (control_channel_count(self.condition), statistic_count(self.condition))))
        if any(getattr(self.unet, name) != value for name, value in sizes.items()):
            self.unet = dataclasses.replace(self.unet, **sizes)

    @property
    def latent_size(self) -> int:
        """The latent edge s = S / 4."""
        return self.image_size // 4

    def to_dict(self, parts: tuple | None = None) -> dict:
        """The profile as plain JSON-able data: its name, size and condition and the fields ``parts`` (None:
        every field); the U-Net's sizes that follow from the condition are left out (derived again when
        read)."""
        data = dataclasses.asdict(self)
        for name in CONDITION_SIZED:
            del data["unet"][name]
        if parts is not None:
            unknown = set(parts) - set(data)
            if unknown:
                raise ValueError(f"not profile fields: {sorted(unknown)}")
            data = {k: v for k, v in data.items() if k in PROFILE_COMMON or k in parts}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        """A profile from :meth:`to_dict` data, the fields it leaves out at their defaults (a run's config.json
        holds its family's parts only); unknown fields or bad values are an AldmError."""
        def build(kind, values):
            if kind is TrainConfig and "mixed_precision" in values:  # runs written before "precision"
                values = dict(values)
                values.setdefault("precision", "auto" if values.pop("mixed_precision") else "fp32")
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise AldmError(f"unknown {kind.__name__} field(s): {sorted(unknown)}")
            if not isinstance(values, dict):
                raise AldmError(f"{kind.__name__}: expected an object, got {values!r}")
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        if not isinstance(data, dict):
            raise AldmError(f"expected a JSON object, got {type(data).__name__}")
        return cls(
            name=str(data["name"]), image_size=data["image_size"], condition=data.get("condition", DEFAULT_CONDITION),
            vae=build(VAEConfig, data.get("vae", {})), unet=build(UNetConfig, data.get("unet", {})),
            diffusion=build(DiffusionConfig, data.get("diffusion", {})),
            train_vae=build(TrainConfig, data.get("train_vae", {})),
            train_ldm=build(TrainConfig, data.get("train_ldm", {})),
            train_fewshot=build(TrainConfig, data.get("train_fewshot", {})),
            baseline=build(BaselineConfig, data.get("baseline", {})),
            train_baseline=build(TrainConfig, data.get("train_baseline", {})),
            train_baseline_fewshot=build(TrainConfig, data.get("train_baseline_fewshot", {})),
            pixel=build(PixelDiffusionConfig, data.get("pixel", {})),
            train_pixel=build(TrainConfig, data.get("train_pixel", {})),
            train_pixel_fewshot=build(TrainConfig, data.get("train_pixel_fewshot", {})),
            distill=build(DistillConfig, data.get("distill", {})),
            train_distill=build(TrainConfig, data["train_distill"]) if "train_distill" in data
            else cls.__dataclass_fields__["train_distill"].default_factory(),
        )

    def save(self, path: str, parts: tuple | None = None) -> None:
        """Write the profile as JSON (the fields ``parts`` beside its name, size and condition; None: every
        field), atomically."""
        from .io.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(parts), indent=2) + "\n")

    @classmethod
    def load(cls, path: str) -> Profile:
        """A profile from a JSON file (an AldmError naming the file when missing or invalid)."""
        try:
            with open(path, encoding="utf-8") as fh:
                return cls.from_dict(json.load(fh))
        except FileNotFoundError:
            raise AldmError(f"{path}: config not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise AldmError(f"{path}: not a valid aldm config ({type(exc).__name__}: {exc})") from exc
        except AldmError as exc:
            raise AldmError(f"{path}: {exc}") from None


def paper() -> Profile:
    """The paper's profile (§3): 112^3 volumes, the reference code's widths and step counts (for a GPU)."""
    return Profile(
        name="paper", image_size=112,
        train_vae=TrainConfig(steps=60000, lr=1e-4, warmup_steps=500),
        train_ldm=TrainConfig(steps=100000, lr=1e-4, warmup_steps=1000),
        train_fewshot=TrainConfig(steps=5000, lr=5e-5, warmup_steps=100, checkpoint_every=500),
        train_baseline=TrainConfig(steps=40000, lr=2e-4, warmup_steps=0, ema_decay=0.999),
        train_baseline_fewshot=TrainConfig(steps=3000, lr=1e-4, warmup_steps=0, checkpoint_every=500),
        # the pixel DDPM peer trains as the LDM does (not part of the paper)
        train_pixel=TrainConfig(steps=100000, lr=1e-4, warmup_steps=1000),
        train_pixel_fewshot=TrainConfig(steps=5000, lr=5e-5, warmup_steps=100, checkpoint_every=500),
    )


def gpu() -> Profile:
    """The paper's networks at 112^3 (``paper``) with the recipe the CPU demo measured as better, for a GPU
    user who wants the best samples rather than Table 1 reproduced: the LDM predicts v (demo: mask Dice
    0.50 -> 0.82 at an equal budget, docs/model.md), every stage's EMA warms up (a short run's saved weights
    are not the initial ones), and the VAE trains on random 64^3 crops (more updates per second at the same
    memory; it encodes and decodes whole volumes). Step counts and batch sizes are the paper's; neither
    was measured on a GPU here. ``paper`` keeps the paper's recipe (noise prediction) by name."""
    base = paper()

    def warm(cfg: TrainConfig) -> TrainConfig:
        return dataclasses.replace(cfg, ema_warmup=True)

    return dataclasses.replace(
        base, name="gpu", vae=dataclasses.replace(base.vae, train_crop=64),
        diffusion=dataclasses.replace(base.diffusion, prediction="v"),
        **{stage: warm(getattr(base, stage)) for stage in ("train_vae", "train_ldm", "train_fewshot", "train_baseline",
                                                           "train_baseline_fewshot", "train_pixel",
                                                           "train_pixel_fewshot")})


def small() -> Profile:
    """64^3 volumes and narrow networks: what the CPU demo trains. It takes what learned fastest per
    CPU-second on the phantom cohorts (docs/model.md, "Watching a model learn"): the VAE trains on
    random 32^3 crops, the LDM predicts v instead of the noise (at 1200 steps mask Dice 0.50 -> 0.82 and
    samples with a head outline), the source LDM trains on batches of 2 (more updates per second beat
    larger batches at this budget), and every stage's EMA warms up."""

    def train(**kw) -> TrainConfig:
        return TrainConfig(ema_decay=0.99, ema_warmup=True, **kw)

    return Profile(
        name="small", image_size=64,
        vae=VAEConfig(channels=(16, 32, 64), refine_blocks=1, latent_channels=8, train_crop=32),
        unet=UNetConfig(channels=(32, 64, 128), control_channels=(16, 32, 64), time_dim=128),
        diffusion=DiffusionConfig(prediction="v"),
        train_vae=train(steps=1500, batch_size=2, lr=1e-3, warmup_steps=20, checkpoint_every=250),
        train_ldm=train(steps=800, batch_size=2, lr=1e-3, warmup_steps=20, checkpoint_every=100),
        train_fewshot=train(steps=150, batch_size=4, lr=3e-4, warmup_steps=10, checkpoint_every=50),
        baseline=BaselineConfig(gen_channels=(16, 32, 64), gen_res_blocks=1, disc_channels=(16, 32, 64)),
        train_baseline=train(steps=200, batch_size=2, lr=2e-4, warmup_steps=0, checkpoint_every=100),
        train_baseline_fewshot=train(steps=60, batch_size=2, lr=1e-4, warmup_steps=0, checkpoint_every=30),
        # the pixel DDPM peer: a U-Net at 64/32/16/8 on whole volumes, trained as the LDM's stages are but on
        # batches of 1 (a step at 64^3 costs ~1.8 s per volume on 2 CPU cores: more updates per second)
        pixel=PixelDiffusionConfig(channels=(16, 32, 64, 64)),
        train_pixel=train(steps=800, batch_size=1, lr=1e-3, warmup_steps=20, checkpoint_every=100),
        train_pixel_fewshot=train(steps=150, batch_size=1, lr=3e-4, warmup_steps=10, checkpoint_every=50),
        train_distill=train(steps=150, batch_size=4, lr=1e-4, warmup_steps=10, checkpoint_every=50),
    )


def tiny() -> Profile:
    """32^3 volumes and a few channels, for tests. Trains in fp32 on every machine: tests about
    resuming, determinism or data must not depend on which CPU runs them (tests/test_precision.py
    covers bf16 training)."""

    def train(**kw) -> TrainConfig:
        return TrainConfig(batch_size=2, checkpoint_every=2, ema_decay=0.9, log_every=1, precision="fp32", **kw)

    return Profile(
        name="tiny", image_size=32,
        vae=VAEConfig(channels=(8, 16, 16), refine_blocks=1, latent_channels=4),
        unet=UNetConfig(channels=(16, 32, 32), control_channels=(8, 16, 16), time_dim=32, groups=4),
        diffusion=DiffusionConfig(timesteps=100),
        train_vae=train(steps=4, lr=1e-3, warmup_steps=1),
        train_ldm=train(steps=4, lr=1e-3, warmup_steps=1),
        train_fewshot=train(steps=4, lr=1e-3, warmup_steps=1),
        baseline=BaselineConfig(gen_channels=(8, 16, 16), gen_res_blocks=1, noise_channels=2,
                                disc_channels=(8, 16, 16)),
        train_baseline=train(steps=4, lr=2e-4, warmup_steps=0),
        train_baseline_fewshot=train(steps=4, lr=2e-4, warmup_steps=0),
        pixel=PixelDiffusionConfig(channels=(8, 16, 16), groups=4, time_dim=32),
        train_pixel=train(steps=4, lr=1e-3, warmup_steps=1),
        train_pixel_fewshot=train(steps=4, lr=1e-3, warmup_steps=1),
        distill=DistillConfig(teacher_steps=4, steps_to=2),
        train_distill=train(steps=3, lr=1e-3, warmup_steps=1),
    )


def with_decoder_regions(profile: Profile, on: bool = True) -> Profile:
    """``profile`` with its VAE's decoder label-conditioned (``VAEConfig.decoder_regions``) or not."""
    if profile.vae.decoder_regions == on:
        return profile
    return dataclasses.replace(profile, vae=dataclasses.replace(profile.vae, decoder_regions=on))


def with_inpaint_context(profile: Profile) -> Profile:
    """``profile`` with a ControlNet that reads the known latent (``UNetConfig.inpaint_context``)."""
    if profile.unet.inpaint_context:
        return profile
    return dataclasses.replace(profile, unet=dataclasses.replace(profile.unet, inpaint_context=True))


def with_condition(profile: Profile, condition: str | None) -> Profile:
    """``profile`` conditioned on ``condition`` (None: as it is): the U-Net's control channels and FiLM
    statistics follow (a copy when that changes anything)."""
    if condition is None or condition == profile.condition:
        return profile
    return dataclasses.replace(profile, condition=parse_condition(condition, "--condition"))


def with_budget(profile: Profile, stage: str, seconds: float | None) -> Profile:
    """``profile`` with the ``stage`` config's (``train_vae``, ``train_ldm``, ...) ``budget_s`` set to
    ``seconds`` (aldm.train.budget; None: ``profile`` as it is)."""
    if seconds is None:
        return profile
    return dataclasses.replace(profile, **{stage: dataclasses.replace(getattr(profile, stage), budget_s=seconds)})


PROFILES = {"paper": paper, "gpu": gpu, "small": small, "tiny": tiny}


def get_profile(name: str) -> Profile:
    """A named profile (paper, gpu, small, tiny) or one loaded from a ``.json`` file."""
    if name in PROFILES:
        return PROFILES[name]()
    if name.endswith(".json"):
        return Profile.load(name)
    raise AldmError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)} or a JSON config file")
