"""The generation pipelines: one interface (:class:`GenerationPipeline`, as diffusers' ``DiffusionPipeline``)
and one class per model family — ``ALDMPipeline`` (the paper's), ``PixelDiffusionPipeline``, ``BaselinePipeline``
(the GANs) — loaded from a finished run by :func:`load_pipeline` through the family registry
(:mod:`aldm.models.families`); the two diffusion families share :class:`DiffusionPipeline`'s sampling loop.

    pipe = ALDMPipeline.from_pretrained("runs/fewshot_k16")
    out = pipe(masks, GenerationSettings(guidance=3.0, sampler="dpmpp2m", steps=20), generator=seeds)
    out["image"]  # (B, C, S, S, S) in [-1, 1], channels pipe.modalities (the paper's: T1, T2, FLAIR)

Eq. 3.10: z_T ~ N(0, I) -> reverse diffusion with classifier-free guidance (Eq. 3.8) conditioned on
c = f(m) (:mod:`aldm.data.control`, the functions training used) -> un-normalise with the source
latent statistics -> frozen VAE decoder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from .artifacts.run import WEIGHTS, Run
from .conditions import brats_label_map, needs_brain
from .config import Profile
from .data.control import condition_control, condition_statistics
from .diffusion.guidance import GuidedNoise
from .diffusion.inpainting import KnownLatent, constrained, sample_resampled
from .diffusion.samplers import initial_noise, run_sampler
from .diffusion.schedule import NoiseSchedule
from .diffusion.settings import GenerationSettings
from .errors import AldmError
from .modalities import DEFAULT_MODALITIES
from .models.baselines.generator import BaselineGenerator
from .models.cpu_convolution import onednn_convolutions
from .models.families import PIXEL_DDPM, family
from .models.pixel_ddpm import null_statistics, pixel_denoiser, pixel_diffusion_config
from .models.unet import ConditionalDenoiser
from .models.vae import frozen_vae
from .precision import PRECISIONS, autocast, resolve_precision, with_bf16_weights


@dataclass(frozen=True)
class RunOrigin:
    """Where a pipeline's weights come from: the run's record (``run.json``), its weights' checksum and the
    channels its volumes hold (what a sample records of its model)."""

    info: dict = field(default_factory=dict)
    model_hash: str = ""
    modalities: tuple = DEFAULT_MODALITIES

    @classmethod
    def of(cls, run: Run) -> RunOrigin:
        """The origin of a finished run's pipeline."""
        return cls(run.info, run.weights_hash(), tuple(run.modalities))


class GenerationPipeline(ABC):
    """What every family's pipeline is: built from a finished run by :meth:`from_pretrained`, called on a batch
    of conditions with :class:`~aldm.diffusion.settings.GenerationSettings` and seeds, returning
    {'image': (B, C, S, S, S) float32 in [-1, 1], ...}; ``modalities`` names the C channels, ``networks()`` the
    networks a sample passes through (a Table 1 cost column), ``kind`` the family, ``info`` the run's record,
    ``model_hash`` its weights' checksum, ``profile`` its configs."""

    kind: str
    profile: Profile
    modalities: tuple
    info: dict
    model_hash: str
    device: torch.device

    @classmethod
    @abstractmethod
    def from_pretrained(cls, run_dir: str, device: str | torch.device | None = None, decode_slab: int = 0,
                        precision: str = "auto") -> GenerationPipeline:
        """The pipeline of a finished run of this family (``device`` None: CUDA when available); ``decode_slab``
        and ``precision`` where the family has a decoder or mixed precision (else they are ignored)."""

    @abstractmethod
    def __call__(self, masks, settings: GenerationSettings | None = None, generator=None, progress: bool = False,
                 step_callback=None, brain=None) -> dict:
        """One volume per condition: ``masks`` (B, 1, S, S, S) binary masks or BraTS label maps as the model's
        condition takes, ``brain`` (B, 1, S, S, S) brain masks where it needs them, ``generator`` a seed, one
        torch.Generator or one per sample; ``step_callback(i, n)`` after each network evaluation round."""

    @abstractmethod
    def networks(self) -> list[torch.nn.Module]:
        """The networks a sample passes through."""

    def validate(self, settings: GenerationSettings) -> GenerationSettings:
        """``settings`` checked against this model (default: as they are)."""
        return settings

    def _set_origin(self, origin: RunOrigin | None) -> None:
        """``info``, ``model_hash`` and ``modalities`` from ``origin`` (None: a pipeline of no run)."""
        origin = origin or RunOrigin()
        self.info, self.model_hash, self.modalities = dict(origin.info), origin.model_hash, tuple(origin.modalities)

    @property
    def condition(self) -> str:
        """What this model is conditioned on (:mod:`aldm.conditions`)."""
        return self.profile.condition


class DiffusionPipeline(GenerationPipeline):
    """A pipeline that samples by reverse diffusion with classifier-free guidance (ALDM in latent space, the pixel
    DDPM on the volume): its ``schedule``, ``denoiser``, ``device`` and ``precision``, and the one sampling loop
    both share (:meth:`reverse_diffusion`)."""

    schedule: NoiseSchedule
    denoiser: ConditionalDenoiser
    precision: str
    _bf16_denoiser: ConditionalDenoiser | None = None

    def validate(self, settings: GenerationSettings) -> GenerationSettings:
        """``settings`` checked against this model (T of its schedule), sampler and steps resolved: a distilled
        student's own (its grid and step count, :mod:`aldm.train.distillation`), else DPM-Solver++(2M) at 20; a
        student refuses a guidance scale outside the range it learnt."""
        return settings.for_model(self.schedule.timesteps,
                                  self.info.get("distill") if self.denoiser.takes_guidance else None)

    def _denoiser(self) -> ConditionalDenoiser:
        """The denoiser for this pipeline's precision: under bf16, a copy with bf16 weights (made once)."""
        if self.precision != "bf16":
            return self.denoiser
        if self._bf16_denoiser is None:
            self._bf16_denoiser = with_bf16_weights(self.denoiser)
        return self._bf16_denoiser

    def reverse_diffusion(self, control: torch.Tensor, stats: torch.Tensor, shape: tuple, settings: GenerationSettings,
                          generators: list, progress: bool = False, step_callback=None,
                          known: KnownLatent | None = None) -> torch.Tensor:
        """x_0 (``shape``) from x_T ~ N(0, I) by ``settings``' sampler with classifier-free guidance (Eq. 3.8) on
        the condition (``control`` (B, 3 M, ...), ``stats`` (B, stats_dim)). The denoiser runs under the
        pipeline's precision (autocast), the samplers' arithmetic in fp32; ``step_callback(step, steps)`` after
        each guided evaluation. ``known``: the part of x_0 that is given (:mod:`aldm.diffusion.inpainting`; its
        ``jumps`` > 1 resamples on DDIM steps), read by a denoiser trained with it as context too."""
        denoiser, schedule, device, precision = self._denoiser(), self.schedule, self.device, self.precision
        x_T = initial_noise(shape, generators, device)
        if known is not None:
            x_T = known.start(x_T, schedule)
        calls = [0]
        total = settings.steps if known is None else known.evaluations(settings.steps)
        # an inpainting-trained ControlNet reads the known latent; any other sees it only through the constraint
        context = known.context() if known is not None and denoiser.reads_context else None
        with autocast(device, precision):
            guided = GuidedNoise(denoiser, control, stats, settings.guidance, context)

        def eps_fn(x, t):
            with autocast(device, precision):
                out = guided(x, t).float()
            eps = schedule.as_noise(out, x, t)  # samplers take eps, whatever the denoiser predicts
            calls[0] += 1
            if step_callback is not None:
                step_callback(calls[0], total)
            return eps

        if known is None:
            return run_sampler(settings.sampler, eps_fn, schedule, x_T, settings.steps, generators, progress)
        eps_fn = constrained(eps_fn, known, schedule)
        if known.jumps > 1:
            return known.finish(sample_resampled(eps_fn, schedule, x_T, settings.steps, known.jumps, generators,
                                                 progress))
        return known.finish(run_sampler(settings.sampler, eps_fn, schedule, x_T, settings.steps, generators, progress))


class ALDMPipeline(DiffusionPipeline):
    """Masks (B, 1, S, S, S) -> synthetic volumes (B, C, S, S, S) with a trained ALDM (Eq. 3.10; see the
    module docstring). Build it from a run with :meth:`from_pretrained`."""

    kind = "aldm"

    def __init__(self, profile: Profile, vae, denoiser: ConditionalDenoiser, latent_statistics: tuple,
                 device="cpu", origin: RunOrigin | None = None, decode_slab: int = 0, precision: str = "auto"):
        """``latent_statistics``: the per-channel (mean, std) of the source latents (zC each) by which the
        denoiser's latents are normalised. ``decode_slab`` > 0: decode the VAE's full-resolution stage in depth
        slabs of that many planes (:func:`aldm.models.split_decode.decode_in_slabs`: the same volumes, about half
        the decoder's peak memory); 0 decodes the whole volume at once. ``precision``: "auto" (bf16 autocast for
        the denoiser and the decoder where the device computes bf16 natively, else fp32), "fp32" or "bf16"
        (:mod:`aldm.precision`); the samplers' arithmetic stays fp32."""
        if decode_slab < 0:
            raise AldmError(f"decode slab must be 0 (whole volume) or a number of planes, got {decode_slab}")
        if precision not in PRECISIONS:
            raise AldmError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.profile = profile
        self.decode_slab = decode_slab
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        # channels-last 3D: the decoder's full-resolution convolutions skip a layout reorder
        # (VAE decode at 112^3 on 2 CPU cores: 4.62 s -> 4.20 s; docs/performance.md)
        self.vae = onednn_convolutions(vae.to(self.device, memory_format=torch.channels_last_3d).eval())
        # batch-1 convolutions of small latents on oneDNN, not PyTorch's slower im2col path (models/cpu_convolution.py)
        self.denoiser = onednn_convolutions(denoiser.to(self.device).eval().requires_grad_(False))
        self._bf16_denoiser = None
        self.latent_mean, self.latent_std = (v.view(1, -1, 1, 1, 1).to(self.device) for v in latent_statistics)
        self.schedule = NoiseSchedule(profile.diffusion)
        self._set_origin(origin)

    def networks(self) -> list[torch.nn.Module]:
        """The networks a sample passes through: the VAE (its decoder; the encoder is counted too) and the
        denoiser with its ControlNet."""
        return [self.vae, self.denoiser]

    @classmethod
    def from_pretrained(cls, run_dir: str, device: str | torch.device | None = None,
                        decode_slab: int = 0, precision: str = "auto") -> ALDMPipeline:
        """The pipeline of a finished LDM or few-shot run (``device`` None: CUDA when available)."""
        run = Run(run_dir).require_generator()
        if run.kind != "aldm":
            raise AldmError(f"{run_dir}: a {run.kind} run; load it with load_pipeline")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        profile, weights = run.profile, run.weights()
        denoiser = ConditionalDenoiser(profile.unet, profile.vae.latent_channels)
        _load_state(denoiser, weights, "denoiser", run)
        for key in ("latent_mean", "latent_std"):
            if key not in weights:
                raise AldmError(f"{run.file(WEIGHTS)}: not the weights of an ALDM run (no {key})")
        vae = frozen_vae(profile.vae, run.vae_state(), device, run.path)
        return cls(profile, vae, denoiser, (weights["latent_mean"], weights["latent_std"]), device,
                   RunOrigin.of(run), decode_slab, precision)

    @torch.inference_mode()
    def encode(self, image) -> torch.Tensor:
        """The normalised latent (B, zC, s, s, s) of volumes ``image`` (B, C, S, S, S) in [-1, 1]: the VAE
        posterior's mean (Eq. 3.1) in the units the denoiser learnt, (mu - latent mean) / latent std."""
        x = torch.as_tensor(np.asarray(image, dtype=np.float32)).to(self.device)
        with autocast(self.device, self.precision):
            mu, _ = self.vae.encode(x.contiguous(memory_format=torch.channels_last_3d))
        return (mu.float() - self.latent_mean) / self.latent_std

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(volumes (B, C, S, S, S) float32 in [-1, 1] on the CPU, the un-normalised latent) of normalised latents
        ``z`` (B, zC, s, s, s), the inverse of :meth:`encode`: un-normalised with the source latent statistics
        and decoded by the frozen VAE, which reads ``labels`` (B, 1, S, S, S) where it draws sub-regions."""
        latent = z.to(self.device) * self.latent_std + self.latent_mean
        with autocast(self.device, self.precision):
            decoded = self.vae.decode(latent.contiguous(memory_format=torch.channels_last_3d), slab=self.decode_slab,
                                      labels=labels.view(labels.shape[0], 1, *labels.shape[-3:]).to(self.device))
        return decoded.float().clamp(-1, 1).contiguous().cpu(), latent

    @torch.inference_mode()
    def __call__(self, masks, settings: GenerationSettings | None = None, generator=None, progress: bool = False,
                 step_callback=None, brain=None, known: KnownLatent | None = None) -> dict:
        """Generate one volume per mask with ``settings`` (guidance s, sampler, steps; default
        :class:`GenerationSettings`); with ``known`` (:mod:`aldm.diffusion.inpainting`) only the latent's
        unknown region is generated, the rest kept (an edit of a scan, :mod:`aldm.editing`).

        ``masks`` (B, 1, S, S, S) or (B, S, S, S) in model space: binary tumour masks or BraTS label maps
        {0, 1, 2, 4} (a ``regions`` model needs label maps; a ``mask`` model reads labels > 0 as tumour);
        ``brain`` (same shape): brain masks, needed by a ``regions+brain`` model; ``generator``: a list of
        ``torch.Generator`` (one per mask), a list of int seeds, one int seed, or None (seeds
        settings.seed + i); ``step_callback(step, steps)``: called after each guided denoiser evaluation
        (1-based). Returns {'image': (B, C, S, S, S) float32 in [-1, 1], 'latent': (B, zC, s, s, s)}.
        """
        settings = self.validate(settings or GenerationSettings())
        m, b = _check_condition(masks, brain, self.profile)
        generators = _generators(settings.seed if generator is None else generator, m.shape[0])
        s = self.profile.latent_size
        control = condition_control(m, self.condition, s, b).to(self.device)
        stats = condition_statistics(m, self.condition, b).to(self.device)
        shape = (m.shape[0], self.profile.vae.latent_channels, s, s, s)
        z0 = self.reverse_diffusion(control, stats, shape, settings, generators, progress, step_callback, known)
        image, latent = self.decode(z0, m)  # a decoder_regions VAE draws the label map's sub-regions
        return {"image": image, "latent": latent.cpu()}


class PixelDiffusionPipeline(DiffusionPipeline):
    """The same call as :class:`ALDMPipeline` for a pixel DDPM run (:mod:`aldm.models.pixel_ddpm`): reverse
    diffusion on the volume itself, the control maps at full resolution concatenated to x_t, the same
    samplers and guidance; no VAE."""

    kind = PIXEL_DDPM

    def __init__(self, profile: Profile, denoiser: ConditionalDenoiser, device="cpu", origin: RunOrigin | None = None,
                 precision: str = "auto"):
        if precision not in PRECISIONS:
            raise AldmError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.profile = profile
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.denoiser = onednn_convolutions(denoiser.to(self.device).eval().requires_grad_(False))
        self._bf16_denoiser = None
        self.schedule = NoiseSchedule(pixel_diffusion_config(profile))
        self._set_origin(origin)

    @classmethod
    def from_pretrained(cls, run_dir: str, device=None, decode_slab: int = 0,
                        precision: str = "auto") -> PixelDiffusionPipeline:
        """The pipeline of a finished pixel DDPM run (``device`` None: CUDA when available; no decoder, so
        ``decode_slab`` does not apply)."""
        run = Run(run_dir).require_generator()
        if run.kind != PIXEL_DDPM:
            raise AldmError(f"{run_dir}: a {run.kind} run; load it with load_pipeline")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        denoiser = pixel_denoiser(run.profile)
        _load_state(denoiser, run.weights(), "denoiser", run)
        return cls(run.profile, denoiser, device, RunOrigin.of(run), precision)

    def networks(self) -> list[torch.nn.Module]:
        """The networks a sample passes through: the denoiser."""
        return [self.denoiser]

    @torch.inference_mode()
    def __call__(self, masks, settings: GenerationSettings | None = None, generator=None, progress: bool = False,
                 step_callback=None, brain=None) -> dict:
        """One volume per mask (arguments as :meth:`ALDMPipeline.__call__`); returns {'image': (B, C, S, S, S)
        float32 in [-1, 1]}."""
        settings = self.validate(settings or GenerationSettings())
        m, b = _check_condition(masks, brain, self.profile)
        generators = _generators(settings.seed if generator is None else generator, m.shape[0])
        control = condition_control(m, self.condition, None, b).to(self.device)
        stats = null_statistics(m.shape[0], control)
        size = self.profile.image_size
        shape = (m.shape[0], self.profile.vae.in_channels, size, size, size)
        x0 = self.reverse_diffusion(control, stats, shape, settings, generators, progress, step_callback)
        return {"image": x0.float().clamp(-1, 1).contiguous().cpu()}


class BaselinePipeline(GenerationPipeline):
    """The same call as :class:`ALDMPipeline` for a CGAN / 3M-CGAN / VAE-GAN run: one generator pass
    per batch from per-sample noise (z ~ N(0, I): prior samples, never reconstructions). Guidance,
    steps and sampler do not apply to these models; their samples record them as not applicable
    (:meth:`GenerationSettings.recorded`)."""

    def __init__(self, profile: Profile, generator, domain: float, device="cpu", origin: RunOrigin | None = None,
                 kind: str = "baseline"):
        self.kind = kind
        self.profile = profile
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.domain = domain
        self._set_origin(origin)

    @classmethod
    def from_pretrained(cls, run_dir: str, device=None, decode_slab: int = 0,
                        precision: str = "auto") -> BaselinePipeline:
        """The pipeline of a finished GAN run (``device`` None: CUDA when available); one fp32 generator pass,
        so ``decode_slab`` and ``precision`` do not apply."""
        run = Run(run_dir).require_generator()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        generator = BaselineGenerator(run.kind, run.profile)
        _load_state(generator, run.weights(), "generator", run)
        return cls(run.profile, generator, 1.0 if run.fewshot else 0.0, device, RunOrigin.of(run), run.kind)

    def networks(self) -> list[torch.nn.Module]:
        """The networks a sample passes through: the generator."""
        return [self.generator]


    @torch.inference_mode()
    def __call__(self, masks, settings: GenerationSettings | None = None, generator=None, progress: bool = False,
                 step_callback=None, brain=None) -> dict:
        """One volume per mask (see :meth:`ALDMPipeline.__call__`; only ``settings.seed`` applies)."""
        settings = settings or GenerationSettings()
        m, b = _check_condition(masks, brain, self.profile)
        generators = _generators(settings.seed if generator is None else generator, m.shape[0])
        noise = initial_noise((m.shape[0], *self.generator.noise_shape), generators, self.device)
        control = condition_control(m, self.condition, None, b).to(self.device)
        domain = torch.full((m.shape[0],), self.domain, device=self.device)
        image = self.generator(control, domain, noise).float().clamp(-1, 1)
        if step_callback is not None:
            step_callback(1, 1)
        return {"image": image.cpu()}


def parameter_count(pipeline) -> int:
    """Parameters of the networks a pipeline's samples pass through (ALDM: VAE + denoiser with its
    ControlNet; a baseline: its generator, the VAE-GAN's encoder included): a Table 1 cost column."""
    return sum(p.numel() for net in pipeline.networks() for p in net.parameters())


def load_pipeline(run_dir: str, device=None, decode_slab: int = 0, precision: str = "auto") -> GenerationPipeline:
    """The generation pipeline of any finished run that can generate, of the class its family registers
    (:mod:`aldm.models.families`); ``decode_slab``, ``precision``: see :class:`ALDMPipeline` (``decode_slab``
    ALDM only; a GAN is one fp32 generator pass)."""
    kind = Run(run_dir).require_generator().kind
    return family(kind).pipeline_class().from_pretrained(run_dir, device, decode_slab, precision)


def _load_state(module: torch.nn.Module, weights: dict, key: str, run: Run) -> None:
    """Load ``weights[key]`` into ``module``; an AldmError naming the run's weights file when they are not
    this model's (another kind of run, or another profile's shapes)."""
    path = run.file(WEIGHTS)
    if not isinstance(weights, dict) or key not in weights:
        raise AldmError(f"{path}: not the weights of a {run.kind} run (no {key!r})")
    try:
        module.load_state_dict(weights[key])
    except RuntimeError as exc:
        raise AldmError(f"{path}: weights do not fit the run's config.json ({str(exc).splitlines()[0]})") from exc


def _check_masks(masks, size: int, what: str = "masks") -> torch.Tensor:
    m = torch.as_tensor(np.asarray(masks), dtype=torch.float32)
    if m.ndim == 4:
        m = m[:, None]
    if m.ndim != 5 or tuple(m.shape[1:]) != (1, size, size, size):
        raise AldmError(f"{what} must be (B, 1, {size}, {size}, {size}) for this model, got {tuple(m.shape)}")
    return m


def _check_condition(masks, brain, profile: Profile) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(masks or label maps, brain masks or None) as (B, 1, S, S, S) float tensors for ``profile``'s condition:
    a regions model's label maps must hold BraTS labels, a model with the brain needs ``brain``."""
    m = _check_masks(masks, profile.image_size)
    if profile.condition != "mask":
        m = torch.from_numpy(brats_label_map(m.numpy(), "label maps").astype(np.float32))
    if not needs_brain(profile.condition):
        return m, None
    if brain is None:
        raise AldmError(f"this model is conditioned on {profile.condition!r}: pass the brain masks too")
    b = _check_masks(brain, profile.image_size, "brain masks")
    if b.shape[0] != m.shape[0]:
        raise AldmError(f"got {b.shape[0]} brain masks for {m.shape[0]} label maps")
    return m, b


def _generators(generator, n: int) -> list[torch.Generator]:
    if generator is None:
        return [torch.Generator().manual_seed(int(torch.randint(2**62, (1,)))) for _ in range(n)]
    if isinstance(generator, int):
        return [torch.Generator().manual_seed(generator + i) for i in range(n)]
    items = list(generator)
    if len(items) != n:
        raise AldmError(f"got {len(items)} generators/seeds for {n} masks")
    return [g if isinstance(g, torch.Generator) else torch.Generator().manual_seed(int(g)) for g in items]
