"""The models a server offers, and the one pipeline it keeps in memory.

Each ``--model RUN`` becomes a :class:`ModelEntry` with a short id (the run folder's name, made
unique); only the entry's metadata is read at start-up. :class:`PipelineSlot` holds at most one
loaded pipeline: asking for another model frees the current one first, so a server with a GBM
source model and a PDGM few-shot model never holds both on the GPU.
"""

from __future__ import annotations

import gc
import os
import re
import threading
from dataclasses import asdict, dataclass

import torch

from ..artifacts.cache import PreparedCache
from ..artifacts.run import Run
from ..diffusion.samplers import SAMPLERS
from ..errors import AldmError
from ..modalities import file_stems
from ..models.families import is_diffusion, title


@dataclass(frozen=True)
class ModelEntry:
    """What the page shows and the API checks about one model run (no weights loaded)."""

    id: str
    path: str
    stage: str          # ldm, fewshot or baseline
    kind: str           # aldm, cgan, cgan3m, vaegan
    domain: str         # source or target
    label: str          # e.g. "PDGM few-shot (K=16) - ALDM"
    image_size: int
    timesteps: int      # the diffusion T (the only step count ancestral DDPM accepts)
    samplers: tuple
    modalities: tuple   # file stems of its channels (t1, t2, flair, ...)
    data: str           # the prepared cache the run was trained on ('' when it is gone)
    k: int | None
    distilled: dict | None = None  # a distilled student's record (run.json "distill"): its steps and guidance range

    def public(self) -> dict:
        """The entry as the API shows it (no server paths)."""
        out = asdict(self)
        out.pop("path")
        out.pop("data")
        out["samplers"] = list(self.samplers)
        out["modalities"] = list(self.modalities)
        return out


def describe_model(run_dir: str, model_id: str, data_override: str | None = None) -> ModelEntry:
    """A :class:`ModelEntry` for a finished run that can generate, or an AldmError naming the folder."""
    run = Run(run_dir).require_generator()
    profile, kind, k = run.profile, run.kind, run.k
    name = title(kind)
    where = f"PDGM few-shot (K={k})" if run.fewshot else "GBM source"
    data = data_override or run.data
    if data:
        PreparedCache(data).require()
    if data and PreparedCache(data).modalities != run.modalities:
        raise AldmError(f"{data}: holds {', '.join(PreparedCache(data).modalities)}, but model {run_dir} makes "
                        f"{', '.join(run.modalities)}; give a cache of the model's modalities")
    return ModelEntry(
        id=model_id, path=os.path.abspath(run_dir), stage=run.stage, kind=kind,
        domain="target" if run.fewshot else "source",
        label=f"{where} - {name}", image_size=profile.image_size, timesteps=profile.diffusion.timesteps,
        samplers=SAMPLERS if is_diffusion(kind) else ("none",), modalities=file_stems(run.modalities),
        data=os.path.abspath(data) if data else "", k=k, distilled=run.info.get("distill"),
    )


def model_entries(run_dirs: list[str], data: list[str] | None = None) -> dict[str, ModelEntry]:
    """Entries for ``--model`` folders; ``data`` (one cache for all, or one per model) overrides the
    cache recorded in each run."""
    if not run_dirs:
        raise AldmError("give at least one --model RUN")
    data = data or []
    if len(data) not in (0, 1, len(run_dirs)):
        raise AldmError(f"give one --data for all models or one per --model ({len(run_dirs)}), not {len(data)}")
    entries: dict[str, ModelEntry] = {}
    for i, run in enumerate(run_dirs):
        base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(os.path.normpath(run))) or "model"
        model_id, n = base, 2
        while model_id in entries:
            model_id, n = f"{base}-{n}", n + 1
        override = data[0] if len(data) == 1 else (data[i] if data else None)
        entries[model_id] = describe_model(run, model_id, override)
    return entries


class PipelineSlot:
    """At most one loaded pipeline; :meth:`get` swaps models, freeing the old one first."""

    def __init__(self, device=None):
        self.device = device
        self._lock = threading.Lock()
        self._entry: ModelEntry | None = None
        self._pipe = None

    def get(self, entry: ModelEntry):
        """The pipeline of ``entry``, loading it (and freeing the previous one) when needed."""
        from ..pipeline import load_pipeline

        with self._lock:
            if self._entry is None or self._entry.path != entry.path:
                self._pipe, self._entry = None, None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self._pipe = load_pipeline(entry.path, device=self.device)
                self._entry = entry
            return self._pipe

    @property
    def loaded(self) -> str | None:
        """The id of the model in memory, or None."""
        return self._entry.id if self._entry else None
