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

import numpy as np
from tqdm import tqdm

from .artifacts.run import Run
from .artifacts.samples import SampleRecord, SampleSet
from .data.geometry import to_native, unscale_intensities
from .data.masks import resolve_masks
from .diffusion.settings import GenerationSettings
from .distributed import DistInfo, barrier
from .errors import AldmError
from .interrupt import Stopped, graceful_stop
from .io.atomic import require_free_space
from .io.lock import writes_folder
from .modalities import MASK_FILE, file_stems
from .pipeline import load_pipeline


@writes_folder("out_dir", "sample folder")
def generate(model_dir: str, out_dir: str, n: int, masks: str | None = None, subjects: list | None = None,
             settings: GenerationSettings | None = None, batch_size: int = 4, dist_info: DistInfo | None = None,
             device=None, progress: bool = True, native: bool = True, pipeline=None, on_progress=None,
             decode_slab: int = 0) -> list[SampleRecord]:
    """Generate ``n`` samples with ``settings`` (default :class:`GenerationSettings`); returns the records
    of all samples (finished earlier ones included).

    ``native=False`` writes model-space files only (what evaluation needs; much faster).
    ``pipeline``: an already loaded pipeline of ``model_dir`` (the web server keeps one in memory).
    ``decode_slab``: VAE decoding in depth slabs of that many planes (:class:`aldm.pipeline.ALDMPipeline`;
    ignored when ``pipeline`` is given). ``on_progress(done, total, step, steps)``: called after every
    denoising step and every written batch, ``done``/``total`` counting this rank's samples of this call."""
    dist_info = dist_info or DistInfo()
    settings = settings or GenerationSettings()
    if n < 1:
        raise AldmError(f"--n must be at least 1, got {n}")
    pipe = pipeline or load_pipeline(model_dir, device=device or dist_info.device, decode_slab=decode_slab,
                                     precision=settings.precision)
    settings = pipe.validate(settings)
    items = resolve_masks(masks, Run(model_dir), pipe.profile.image_size, subjects, settings.seed, n)
    samples = SampleSet(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if dist_info.is_main:
        samples.prepare()  # half-written samples of an interrupted run are removed; redone below
    barrier(dist_info)
    names = [f"sample-{i:04d}_{items[i % len(items)].name}" for i in range(n)]
    todo = [i for i in range(n) if i % dist_info.world_size == dist_info.rank and not samples.is_finished(names[i])]
    bar = tqdm(total=len(todo), desc="generate", unit="sample", disable=not (progress and dist_info.is_main))
    with graceful_stop() as stop:
        _generate_batches(pipe, items, names, todo, samples, bar, stop, model_dir=model_dir, batch_size=batch_size,
                          settings=settings, native=native, on_progress=on_progress)
    bar.close()
    barrier(dist_info)
    records = [r for r in (samples.read_record(name) for name in names) if r is not None]
    if dist_info.is_main:
        samples.write_index(records)
    return records


def sample_volumes(image: np.ndarray, item, modalities, native: bool = True) -> dict:
    """The files of one sample for :meth:`SampleSet.write_sample`: ``image`` (C, S, S, S) in [-1, 1] and the
    item's mask in model space, and with ``native`` the same resampled to the mask subject's native grid
    and intensities (background 0, the skull-stripped convention of the downloads)."""
    stems = file_stems(modalities)
    volumes = {"model": {**{m: (image[c], item.model_affine, np.float32) for c, m in enumerate(stems)},
                         MASK_FILE: (item.mask[0], item.model_affine, np.uint8)}}
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
    return volumes


def _generate_batches(pipe, items: list, names: list[str], todo: list[int], samples: SampleSet, bar,
                      stop: graceful_stop, *, model_dir: str, batch_size: int, settings: GenerationSettings,
                      native: bool, on_progress) -> None:
    """Generate and write the samples ``todo`` in batches; on SIGTERM / SIGINT stop after the batch being
    written (each sample is written atomically) with :class:`~aldm.interrupt.Stopped`."""
    out_dir = samples.path
    recorded = settings.recorded(pipe.kind)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        require_free_space(out_dir, sum(_sample_bytes(items[i % len(items)], native, len(pipe.modalities))
                                        for i in chunk), f"{len(chunk)} more sample(s)")
        mask = np.stack([items[i % len(items)].mask for i in chunk]).astype(np.float32)
        step_callback = None
        if on_progress is not None:
            def step_callback(step, total_steps, done=start):
                on_progress(done, len(todo), step, total_steps)
        out = pipe(mask, settings, generator=[settings.seed + i for i in chunk], step_callback=step_callback)
        for j, i in enumerate(chunk):
            item = items[i % len(items)]
            record = SampleRecord(
                sample=names[i], index=i, mask_subject=item.name, mask_source=item.source,
                context_subject=item.context_subject, mask_cache=item.cache, seed=settings.seed + i, **recorded,
                precision=getattr(pipe, "precision", "fp32"), model=os.path.abspath(model_dir),
                model_hash=pipe.model_hash, stage=pipe.info.get("stage", ""), modalities=list(pipe.modalities))
            samples.write_sample(record, sample_volumes(out["image"][j].numpy(), item, pipe.modalities, native))
        bar.update(len(chunk))
        if on_progress is not None:
            on_progress(start + len(chunk), len(todo), 0, 0)
        if stop.requested and start + batch_size < len(todo):
            raise Stopped(f"{out_dir}: stopped by {stop.requested} with {start + len(chunk)} of {len(todo)} samples "
                          "written; re-run the same command to finish the rest")


def _sample_bytes(item, native: bool, channels: int) -> int:
    """An upper bound of one sample's files: ``channels`` float32 volumes + a uint8 mask in model space, and the
    same on the native grid when written (before gzip, which only makes them smaller)."""
    model = item.mask[0].size * (channels * 4 + 1)
    grid = int(np.prod(item.native_shape)) * (channels * 4 + 1) if native and item.native_shape is not None else 0
    return model + grid

