"""How to generate: one :class:`GenerationSettings` (guidance s, sampler, steps, seed, precision) for the
CLI, the web API, the experiments, the pipelines and the benchmarks, validated in one place.

``guidance`` is s of Eq. 3.8 (classifier-free guidance): 0 is the unconditional model, 1 the
conditional one, s > 1 extrapolates towards the condition; :data:`GUIDANCE_RANGE` bounds it everywhere.
Ancestral DDPM runs all T steps of the schedule (Eq. 3.10); DDIM and DPM-Solver++(2M) take 1..T.
Baselines (one generator pass) have no guidance, sampler or steps: their samples record them as not
applicable (:meth:`GenerationSettings.recorded`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..config import PRECISIONS
from ..errors import AldmError
from .samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, DISTILLED_SAMPLER, SAMPLERS

DEFAULT_GUIDANCE = 3.0
GUIDANCE_RANGE = (0.0, 20.0)  # s below 0 pushes away from the mask; far above ~10 saturates (docs/model.md)
NOT_APPLICABLE = "not applicable"  # what a baseline's sample records as its sampler


@dataclass(frozen=True)
class GenerationSettings:
    """Guidance s (Eq. 3.8), sampler name (:data:`aldm.diffusion.samplers.SAMPLERS`), steps (None: the
    sampler's default, all T for DDPM), seed (sample i uses seed + i) and inference precision."""

    guidance: float = DEFAULT_GUIDANCE
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self):
        """Refuse what is wrong whatever the model: s outside :data:`GUIDANCE_RANGE` or not a number, an
        unknown sampler or precision, fewer than one step, a seed that is not a whole number."""
        g = self.guidance
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise AldmError(f"guidance must be a finite number, got {g!r}")
        lo, hi = GUIDANCE_RANGE
        if not lo <= g <= hi:
            raise AldmError(f"guidance must be between {lo:g} and {hi:g}, got {g:g}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise AldmError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise AldmError(f"steps must be a whole number of at least 1, got {self.steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise AldmError(f"seed must be a whole number, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            raise AldmError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def validate(self, timesteps: int, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS
                 ) -> GenerationSettings:
        """These settings for a model of ``timesteps`` T whose own sampler and steps are ``sampler`` and ``steps``,
        with both resolved (DDPM: T steps; None: the model's); an AldmError when DDPM is asked for other than T steps
        or steps exceed T."""
        if self.sampler is None:
            return replace(self, sampler=sampler, steps=steps if self.steps is None else self.steps
                           ).validate(timesteps, sampler, steps)
        if self.sampler == "ddpm":
            if self.steps not in (None, timesteps):
                raise AldmError(f"ancestral DDPM runs all T = {timesteps} steps; set steps to {timesteps} "
                                "or choose ddim / dpmpp2m for fewer")
            return replace(self, steps=timesteps)
        steps = (steps if self.sampler == sampler else DEFAULT_STEPS) if self.steps is None else self.steps
        if steps > timesteps:
            raise AldmError(f"steps must be at most T = {timesteps}, got {steps}")
        return replace(self, steps=steps)

    def for_model(self, timesteps: int, distilled: dict | None = None) -> GenerationSettings:
        """:meth:`validate` for a model of T = ``timesteps``; ``distilled``: a distilled student's record
        (run.json ``distill``: its ``steps`` and the ``guidance_range`` it learnt), whose grid and steps are then the
        defaults and whose range bounds the guidance."""
        if distilled is None:
            return self.validate(timesteps)
        lo, hi = distilled["guidance_range"]
        if not lo <= self.guidance <= hi:
            raise AldmError(f"this distilled model learnt guidance {lo:g} to {hi:g}, got {self.guidance:g}; "
                            "generate with its teacher for other scales")
        return self.validate(timesteps, DISTILLED_SAMPLER, int(distilled["steps"]))

    def recorded(self, kind: str) -> dict:
        """What a sample of a model of ``kind`` records of these settings: a diffusion model (ALDM, the pixel
        DDPM) the guidance, sampler and steps; a GAN none of them (guidance and steps null, sampler "not
        applicable")."""
        from ..models.families import is_diffusion

        if is_diffusion(kind):
            return {"guidance": self.guidance, "sampler": self.sampler, "steps": self.steps}
        return {"guidance": None, "sampler": NOT_APPLICABLE, "steps": None}
