"""``aldm generate``: synthetic cohorts from masks, written as NIfTI in model space and on the native grid.

Mask sources (``--masks``): :mod:`aldm.data.masks`. Files: :mod:`aldm.artifacts.samples`. How to
sample: :class:`aldm.diffusion.settings.GenerationSettings`.

Sample ``i`` uses mask ``i mod M`` and seed ``seed + i``; its files go to
``OUT/sample-IIII_<mask subject>/`` (written in a temporary folder, then renamed, so an
interrupted run leaves no half-written sample and a re-run continues where it stopped). Under
``torchrun`` the samples are split across ranks.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from .artifacts.run import Run
from .artifacts.samples import SampleRecord, SampleSet
from .conditions import SEG_FILE, needs_brain
from .data.geometry import to_native, unscale_intensities
from .data.masks import MaskSource, resolve_masks
from .diffusion.settings import GenerationSettings
from .distributed import DistInfo, barrier
from .errors import AldmError
from .interrupt import Stopped, graceful_stop
from .io.atomic import free_bytes, human_bytes, require_free_space
from .io.lock import writes_folder
from .modalities import MASK_FILE, file_stems
from .pipeline import load_pipeline

# what a re-run must ask the same as the samples already there (the request; precision may differ by machine)
REQUEST_FIELDS = ("model_hash", "guidance", "sampler", "steps", "seed", "mask_subject", "mask_source", "modalities")


@dataclass(frozen=True)
class GenerationRuntime:
    """How a generation runs rather than what it makes: samples per forward pass (``batch_size``), the process
    group (``dist_info``; None: one process), the ``device`` (None: the group's), a progress bar, an already
    loaded ``pipeline`` of the run (the web server keeps one in memory), ``on_progress(done, total, step, steps)``
    after every denoising step and every written batch (``done``/``total`` counting this rank's samples),
    VAE decoding in depth slabs of ``decode_slab`` planes (:class:`aldm.pipeline.ALDMPipeline`; ignored with
    ``pipeline``) and ``log(line)``, where the estimate of size and time goes (default: stderr with ``progress``)."""

    batch_size: int = 4
    dist_info: DistInfo | None = None
    device: object = None
    progress: bool = True
    pipeline: object = None
    on_progress: Callable | None = None
    decode_slab: int = 0
    log: Callable | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """What ``aldm generate`` makes: ``n`` samples of the finished run ``model_dir`` in the sample folder
    ``out_dir``, from ``masks`` (a :class:`~aldm.data.masks.MaskSource` or its ``KIND:PATH`` text, parsed here;
    None: the run's own held-out subjects) limited to ``subjects``, with ``settings`` (default
    :class:`GenerationSettings`); ``native``: also on the mask subjects' native grids (False: model space only,
    what evaluation needs, much faster); ``overwrite``: remove samples of another request instead of refusing.
    Checked when built."""

    model_dir: str
    out_dir: str
    n: int
    masks: MaskSource | None = None
    subjects: list | None = None
    settings: GenerationSettings = GenerationSettings()
    native: bool = True
    overwrite: bool = False
    runtime: GenerationRuntime = GenerationRuntime()

    def __post_init__(self):
        """Refuse n < 1; parse mask text into a MaskSource; None settings are the defaults."""
        if self.settings is None:
            object.__setattr__(self, "settings", GenerationSettings())
        if self.n < 1:
            raise AldmError(f"--n must be at least 1, got {self.n}")
        if isinstance(self.masks, str):
            object.__setattr__(self, "masks", MaskSource.parse(self.masks))


@writes_folder("request", "sample folder")
def generate(request: GenerationRequest) -> list[SampleRecord]:
    """Generate the samples of ``request``; returns the records of all its samples (finished earlier ones
    included).

    A folder that already holds samples is continued only when they are what this request asks for (same
    model weights, guidance, sampler, steps, seeds and masks: :data:`REQUEST_FIELDS`); otherwise an
    AldmError names what differs, and ``request.overwrite`` removes them and starts afresh."""
    runtime = request.runtime
    dist_info = runtime.dist_info or DistInfo()
    pipe = runtime.pipeline or load_pipeline(request.model_dir, device=runtime.device or dist_info.device,
                                             decode_slab=runtime.decode_slab, precision=request.settings.precision)
    request = replace(request, settings=pipe.validate(request.settings))  # steps resolved for this model
    settings = request.settings
    items = resolve_masks(request.masks, Run(request.model_dir), pipe.profile.image_size, request.subjects,
                          settings.seed, request.n, pipe.profile.condition)
    samples = SampleSet(request.out_dir)
    plan = [_planned(i, items[i % len(items)], pipe, settings, request.model_dir) for i in range(request.n)]
    os.makedirs(request.out_dir, exist_ok=True)
    if dist_info.is_main:
        if request.overwrite:
            samples.remove_samples()
        samples.prepare()  # half-written samples of an interrupted run are removed; redone below
        samples.check_request(plan, REQUEST_FIELDS)
    barrier(dist_info)
    todo = [i for i in range(request.n)
            if i % dist_info.world_size == dist_info.rank and not samples.is_finished(plan[i].sample)]
    shown = runtime.progress and dist_info.is_main
    bar = tqdm(total=len(todo), desc="generate", unit="sample", disable=not shown)
    log = runtime.log or ((lambda line: tqdm.write(line, file=sys.stderr)) if shown else (lambda line: None))
    with graceful_stop() as stop:
        _generate_batches(pipe, request, Batches(items, plan, todo), samples, bar, stop, log)
    bar.close()
    barrier(dist_info)
    records = [r for r in (samples.read_record(p.sample) for p in plan) if r is not None]
    if dist_info.is_main:
        samples.write_index(records)
    return records


@dataclass(frozen=True)
class Batches:
    """What a generation writes: the mask ``items`` (sample i uses item i mod len), the planned record of every
    sample and the indices ``todo`` this rank still writes."""

    items: list
    plan: list
    todo: list

    def item(self, i: int):
        """The mask item of sample ``i``."""
        return self.items[i % len(self.items)]


def _planned(i: int, item, pipe, settings: GenerationSettings, model_dir: str) -> SampleRecord:
    """The record sample ``i`` will have: its mask, seed settings.seed + i, the settings as they apply to
    the model (a baseline's: not applicable), the model and its weights' hash."""
    return SampleRecord(
        sample=f"sample-{i:04d}_{item.name}", index=i, mask_subject=item.name, mask_source=item.source,
        context_subject=item.context_subject, mask_cache=item.cache, seed=settings.seed + i,
        **settings.recorded(pipe.kind), precision=getattr(pipe, "precision", "fp32"),
        model=os.path.abspath(model_dir), model_hash=pipe.model_hash, stage=pipe.info.get("stage", ""),
        modalities=list(pipe.modalities), condition=pipe.profile.condition)


def sample_volumes(image: np.ndarray, item, modalities, native: bool = True) -> dict:
    """The files of one sample for :meth:`SampleSet.write_sample`: ``image`` (C, S, S, S) in [-1, 1], the
    item's mask and, when known, its label map (``seg``, BraTS labels) in model space, and with ``native``
    the same resampled to the mask subject's native grid and intensities (background 0, the skull-stripped
    convention of the downloads)."""
    stems = file_stems(modalities)
    volumes = {"model": {**{m: (image[c], item.model_affine, np.float32) for c, m in enumerate(stems)},
                         MASK_FILE: (item.mask[0], item.model_affine, np.uint8)}}
    if item.labels is not None:
        volumes["model"][SEG_FILE] = (item.labels[0], item.model_affine, np.uint8)
    if native and item.native_shape is not None:
        grid = to_native(image, item.model_affine, item.native_shape, item.native_affine, order=1, fill=-1.0)
        background = grid[0] <= -0.999
        if item.intensity_ranges:
            grid = unscale_intensities(grid, item.intensity_ranges)
            grid[:, background] = 0.0
        mask = to_native(item.mask[0].astype(np.float32), item.model_affine, item.native_shape, item.native_affine,
                         order=0)
        volumes["native"] = {**{m: (grid[c], item.native_affine, np.float32) for c, m in enumerate(stems)},
                             MASK_FILE: (mask.astype(np.uint8), item.native_affine, np.uint8)}
        if item.labels is not None:
            labels = to_native(item.labels[0].astype(np.float32), item.model_affine, item.native_shape,
                               item.native_affine, order=0)
            volumes["native"][SEG_FILE] = (np.rint(labels).astype(np.uint8), item.native_affine, np.uint8)
    return volumes


def _generate_batches(pipe, request: GenerationRequest, batches: Batches, samples: SampleSet, bar,
                      stop: graceful_stop, log) -> None:
    """Generate and write the samples ``batches.todo`` in batches of ``request.runtime.batch_size``; after the
    first, say what all will take (bytes and time, measured) and refuse to go on when the disk cannot hold the
    rest; on SIGTERM / SIGINT stop after the batch being written (each sample is written atomically) with
    :class:`~aldm.interrupt.Stopped`."""
    out_dir, settings, on_progress = samples.path, request.settings, request.runtime.on_progress
    todo, batch_size = batches.todo, request.runtime.batch_size
    start_time = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        require_free_space(out_dir, sum(_sample_bytes(batches.item(i), request.native, len(pipe.modalities))
                                        for i in chunk), f"{len(chunk)} more sample(s)")
        mask = np.stack([batches.item(i).condition() for i in chunk]).astype(np.float32)
        brain = _brains([batches.item(i) for i in chunk]) if needs_brain(pipe.condition) else None
        step_callback = None
        if on_progress is not None:
            def step_callback(step, total_steps, done=start):
                on_progress(done, len(todo), step, total_steps)
        out = pipe(mask, settings, generator=[settings.seed + i for i in chunk], step_callback=step_callback,
                   brain=brain)
        for j, i in enumerate(chunk):
            samples.write_sample(batches.plan[i], sample_volumes(out["image"][j].numpy(), batches.item(i),
                                                                pipe.modalities, request.native))
        bar.update(len(chunk))
        if on_progress is not None:
            on_progress(start + len(chunk), len(todo), 0, 0)
        left = len(todo) - start - len(chunk)
        if start == 0 and left:
            _estimate(samples, [batches.plan[i].sample for i in chunk], left, time.perf_counter() - start_time, log)
        if stop.requested and left:
            raise Stopped(f"{out_dir}: stopped by {stop.requested} with {start + len(chunk)} of {len(todo)} samples "
                          "written; re-run the same command to finish the rest")


def _brains(items: list) -> np.ndarray:
    """The brain masks (B, 1, S, S, S) of ``items``, for a model conditioned on the brain (one line naming an
    item without one)."""
    missing = [item.source for item in items if item.brain is None]
    if missing:
        raise AldmError(f"{missing[0]}: this model is conditioned on the brain too, and the mask has no brain mask")
    return np.stack([item.brain for item in items]).astype(np.float32)


def _estimate(samples: SampleSet, written: list[str], left: int, seconds: float, log) -> None:
    """After the first batch: the measured bytes and seconds per sample, what the ``left`` samples will take,
    and an AldmError (the written samples stay; a re-run continues) when the disk cannot hold them."""
    size = sum(os.path.getsize(os.path.join(d, f)) for name in written
               for d, _, files in os.walk(samples.sample_dir(name)) for f in files) / len(written)
    per_sample = seconds / len(written)
    need = size * left
    log(f"aldm: {left} more sample(s): about {human_bytes(need)} and {_duration(per_sample * left)} here "
        f"({human_bytes(size)} and {per_sample:.1f} s per sample, measured on the first batch)")
    free = free_bytes(samples.path)
    if free is not None and need > free:
        raise AldmError(f"{samples.path}: the {left} remaining samples need about {human_bytes(need)} but only "
                        f"{human_bytes(free)} is free; free space, lower --n or choose another --out (the "
                        f"{len(written)} written samples stay and a re-run continues)")


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.1f} minutes" if seconds >= 60 else f"{seconds:.0f} s"


def _sample_bytes(item, native: bool, channels: int) -> int:
    """An upper bound of one sample's files: ``channels`` float32 volumes + a uint8 mask in model space, and the
    same on the native grid when written (before gzip, which only makes them smaller)."""
    per_voxel = channels * 4 + 1 + (item.labels is not None)
    model = item.mask[0].size * per_voxel
    grid = int(np.prod(item.native_shape)) * per_voxel if native and item.native_shape is not None else 0
    return model + grid

