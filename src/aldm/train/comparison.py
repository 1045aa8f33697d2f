"""What every comparison model's training stage shares: its run folder (source training, or few-shot from a
finished run of the same family) and the volumes, condition masks and control maps it trains on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..artifacts.cache import PreparedCache
from ..artifacts.run import Run
from ..config import Profile, small, with_condition
from ..data.control import condition_control, condition_mask_stack
from ..errors import AldmError
from ..models.families import family
from .requests import StageRequest
from .stages import _override, inherit_condition, open_run, with_cache_channels


def load_condition_volumes(cache: str, rows: list[dict], condition: str) -> dict:
    """Volumes (N, C, S, S, S), the condition's masks (N, M, S, S, S; channel 0 the whole tumour) and control
    maps (N, 3 M, S, S, S) of ``rows``, float16."""
    images, masks, controls = [], [], []
    prepared = PreparedCache(cache)
    for row in rows:
        data = prepared.load(row)
        labels = torch.from_numpy(data["labels"].astype(np.float32))[None]
        brain = torch.from_numpy(data["brain"].astype(np.float32))[None]
        images.append(torch.from_numpy(data["image"]).half())
        masks.append(condition_mask_stack(labels, condition, brain)[0].half())
        controls.append(condition_control(labels, condition, None, brain)[0].half())
    return {"image": torch.stack(images), "mask": torch.stack(masks), "control": torch.stack(controls)}


def open_comparison_run(kind: str, request: StageRequest) -> tuple[Profile, str, Run, list, dict | None]:
    """The run of a comparison model's stage (source training, or few-shot from ``request.fewshot.init_run``,
    which must be a finished ``kind`` run): (its resolved profile, its stage config's name, the run, the rows to
    train on, the source run's weights or None). A few-shot stage takes the source run's network configs (the
    family's ``networks``) and condition; source training takes as many channels as the cache holds."""
    parent, fewshot, profile = None, request.fewshot, request.profile
    if fewshot is not None:
        source = Run(fewshot.init_run)
        if source.kind != kind:
            raise AldmError(f"{fewshot.init_run}: not a finished {kind} run")
        parent = source.require_finished().weights()
        profile = replace(profile or source.profile,
                          **{name: getattr(source.profile, name) for name in family(kind).networks})
        profile = inherit_condition(profile, source, request.condition)
    else:
        profile = with_condition(with_cache_channels(profile or small(), request.cache), request.condition)
    stage_config = family(kind).stage_config(fewshot is not None)
    cfg = _override(getattr(profile, stage_config), request.steps, request.seed, request.precision)
    profile = replace(profile, **{stage_config: cfg})  # the caller's profile is left as it was
    run, rows = open_run(request, "baseline", profile, seed=cfg.seed,
                         domain="target" if fewshot is not None else "source",
                         extra={"model": kind, "fewshot": fewshot is not None},
                         parent=Run(fewshot.init_run) if fewshot is not None else None)
    return profile, stage_config, run, rows, parent
