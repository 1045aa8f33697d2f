"""The registry of model families: every kind of generator a run can hold, by the name its ``run.json`` gives
it (``Run.kind``), with what each is built from, how it trains and how it samples.

* ``aldm``: the paper's latent diffusion model (its LDM and few-shot runs);
* the comparison models, trained with ``aldm train baseline MODEL``: the GANs of §4.2 (``cgan``, ``cgan3m``,
  ``vaegan``, one generator pass per volume) and ``pixelddpm``, the pixel-space diffusion peer in the manner
  of Med-DDPM (:mod:`aldm.models.pixel_ddpm`).

A family names its training entry point and its pipeline class as ``"package.module:attribute"`` (its
own package's, for a family that lives outside aldm), imported when asked for (:meth:`Family.trainer_function`,
:meth:`Family.pipeline_class`): the registry sits with the networks, below the training and sampling code it
points to, as a package's entry points do. Adding a generator is one module (its networks, training function
and pipeline) plus one :func:`register` call; docs/design.md walks through it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import AldmError


@dataclass(frozen=True)
class Family:
    """One kind of generator.

    ``name``: its key (``run.json`` ``kind`` / ``model``, ``--model`` of ``aldm train baseline``); ``title``:
    how tables and the web UI name it; ``diffusion``: it samples by reverse diffusion (so a sampler, steps and
    a guidance scale apply); ``networks``: the :class:`aldm.config.Profile` fields its networks are built from
    (a few-shot stage takes them from its source run); ``stages``: the profile's training configs of its source
    and its few-shot stage; ``settings``: the profile's other fields the family reads (ALDM: its VAE stage and
    its few-step students) — a run's ``config.json`` holds the family's :attr:`parts` (networks, stages and
    settings) and nothing of the other families; ``trainer`` / ``pipeline``: ``"package.module:attribute"`` of
    its training function (``train(kind, request)`` with a :class:`aldm.train.requests.StageRequest`,
    returning the last step's figures; None for ALDM, whose stages are commands of their own, ``aldm train
    vae / source / fewshot``) and of its pipeline class (an :class:`aldm.pipeline.GenerationPipeline`);
    ``comparison``: trained by ``aldm train baseline`` and listed among an experiment's "baselines"."""

    name: str
    title: str
    diffusion: bool
    networks: tuple
    stages: tuple
    trainer: str | None
    pipeline: str
    comparison: bool = True
    settings: tuple = ()

    @property
    def parts(self) -> tuple:
        """The profile fields a run of this family holds in its ``config.json``."""
        return self.networks + self.stages + self.settings

    def stage_config(self, fewshot: bool) -> str:
        """The profile field of this family's source (``fewshot`` False) or few-shot training config."""
        return self.stages[1 if fewshot else 0]

    def trainer_function(self):
        """The family's training function, imported now (an AldmError for a family trained by commands of its
        own, as ALDM is)."""
        if self.trainer is None:
            raise AldmError(f"{self.name} is trained by its own commands, not as a comparison model")
        return _resolve(self.trainer)

    def pipeline_class(self):
        """The family's pipeline class, imported now."""
        return _resolve(self.pipeline)


def _resolve(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry (a ValueError when its name is taken); returns it."""
    if family.name in _REGISTRY:
        raise ValueError(f"model family {family.name!r} is registered already")
    _REGISTRY[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove the family ``name`` (tests that register a toy family take it off again)."""
    _REGISTRY.pop(name, None)


def family(kind: str) -> Family:
    """The registered family ``kind`` (an AldmError naming the registered ones otherwise)."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise AldmError(f"unknown model {kind!r}; choose one of {', '.join(_REGISTRY)}") from None


def families() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    return tuple(_REGISTRY.values())


def comparison_models() -> tuple[str, ...]:
    """The names of the comparison models (what ``aldm train baseline`` and an experiment's "baselines" take)."""
    return tuple(f.name for f in _REGISTRY.values() if f.comparison)


def title(kind: str) -> str:
    """How tables and the web UI name ``kind`` (the kind itself when unregistered)."""
    return _REGISTRY[kind].title if kind in _REGISTRY else kind


def is_diffusion(kind: str) -> bool:
    """Whether a model of ``kind`` samples by reverse diffusion (so guidance, sampler and steps apply)."""
    return kind in _REGISTRY and _REGISTRY[kind].diffusion


def training_stage(kind: str, fewshot: bool) -> str:
    """The profile's config of a family's source or few-shot stage (``train_pixel[_fewshot]`` for the pixel
    DDPM, ``train_baseline[_fewshot]`` for a GAN, ``train_ldm`` / ``train_fewshot`` for ALDM)."""
    return family(kind).stage_config(fewshot)


_GAN_NETWORKS = ("vae", "baseline")
_GAN_STAGES = ("train_baseline", "train_baseline_fewshot")
register(Family("aldm", "ALDM", diffusion=True, networks=("vae", "unet", "diffusion"),
                stages=("train_ldm", "train_fewshot"), trainer=None,
                pipeline="aldm.pipeline:ALDMPipeline", comparison=False,
                settings=("train_vae", "distill", "train_distill")))
register(Family("cgan", "CGAN", diffusion=False, networks=_GAN_NETWORKS, stages=_GAN_STAGES,
                trainer="aldm.train.baselines:train_gan", pipeline="aldm.pipeline:BaselinePipeline"))
register(Family("cgan3m", "3M-CGAN", diffusion=False, networks=_GAN_NETWORKS, stages=_GAN_STAGES,
                trainer="aldm.train.baselines:train_gan", pipeline="aldm.pipeline:BaselinePipeline"))
register(Family("vaegan", "VAE-GAN", diffusion=False, networks=_GAN_NETWORKS, stages=_GAN_STAGES,
                trainer="aldm.train.baselines:train_gan", pipeline="aldm.pipeline:BaselinePipeline"))
register(Family("pixelddpm", "Pixel DDPM", diffusion=True, networks=("vae", "pixel", "diffusion"),
                stages=("train_pixel", "train_pixel_fewshot"), trainer="aldm.train.pixel_diffusion:train_pixel_ddpm",
                pipeline="aldm.pipeline:PixelDiffusionPipeline"))

GANS = tuple(f.name for f in families() if f.comparison and not f.diffusion)  # the built-in GANs
PIXEL_DDPM = "pixelddpm"
