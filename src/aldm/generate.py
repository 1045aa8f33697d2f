"""``aldm generate``: synthetic cohorts from masks, written as NIfTI in model space and on the native grid.

Mask sources (``--masks``): :mod:`aldm.data.masks`. Files: :mod:`aldm.io.samples`.

Sample ``i`` uses mask ``i mod M`` and seed ``seed + i``; its files go to
``OUT/sample-IIII_<mask subject>/`` (written in a temporary folder, then renamed, so an
interrupted run leaves no half-written sample and a re-run continues where it stopped). Under
``torchrun`` the samples are split across ranks.
"""

from __future__ import annotations

import json
import os

import numpy as np
from tqdm import tqdm

from .data.masks import resolve_masks
from .diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
from .distributed import DistInfo, barrier
from .errors import AldmError
from .interrupt import Stopped, graceful_stop
from .io.atomic import remove_stale_temps, require_free_space
from .io.lock import writes_folder
from .io.samples import SAMPLE_DONE, write_sample, write_samples_index
from .pipeline import load_pipeline
from .runs import Run


@writes_folder("out_dir", "sample folder")
def generate(model_dir: str, out_dir: str, n: int, masks: str | None = None, subjects: list | None = None,
             guidance_scale: float = 3.0, steps: int = DEFAULT_STEPS, sampler: str = DEFAULT_SAMPLER, seed: int = 0,
             batch_size: int = 4, dist_info: DistInfo | None = None, device=None, progress: bool = True,
             native: bool = True, pipeline=None, on_progress=None, decode_slab: int = 0,
             precision: str = "auto") -> list[dict]:
    """Generate ``n`` samples; returns the manifest rows (all samples, finished earlier ones included).

    ``native=False`` writes model-space files only (what evaluation needs; much faster).
    ``pipeline``: an already loaded pipeline of ``model_dir`` (the web server keeps one in memory).
    ``decode_slab``, ``precision``: VAE decoding in depth slabs of that many planes; "auto" / "fp32" /
    "bf16" (:class:`aldm.pipeline.ALDMPipeline`; ignored when ``pipeline`` is given).
    ``on_progress(done, total, step, steps)``: called after every denoising step and every written
    batch, ``done``/``total`` counting this rank's samples of this call."""
    dist_info = dist_info or DistInfo()
    if n < 1:
        raise AldmError(f"--n must be at least 1, got {n}")
    pipe = pipeline or load_pipeline(model_dir, device=device or dist_info.device, decode_slab=decode_slab,
                                     precision=precision)
    items = resolve_masks(masks, Run(model_dir), pipe.profile.image_size, subjects, seed, n)
    os.makedirs(out_dir, exist_ok=True)
    if dist_info.is_main:
        remove_stale_temps(out_dir)  # half-written samples of an interrupted run; redone below
    barrier(dist_info)
    names = [f"sample-{i:04d}_{items[i % len(items)].name}" for i in range(n)]
    todo = [i for i in range(n) if i % dist_info.world_size == dist_info.rank
            and not os.path.exists(os.path.join(out_dir, names[i], SAMPLE_DONE))]
    bar = tqdm(total=len(todo), desc="generate", unit="sample", disable=not (progress and dist_info.is_main))
    with graceful_stop() as stop:
        _generate_batches(pipe, items, names, todo, out_dir, bar, stop, model_dir=model_dir, batch_size=batch_size,
                          guidance_scale=guidance_scale, steps=steps, sampler=sampler, seed=seed, native=native,
                          on_progress=on_progress)
    bar.close()
    barrier(dist_info)
    rows = []
    for name in names:
        path = os.path.join(out_dir, name, SAMPLE_DONE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                rows.append(json.load(fh))
    if dist_info.is_main:
        write_samples_index(out_dir, rows)
    return rows


def _generate_batches(pipe, items: list, names: list[str], todo: list[int], out_dir: str, bar, stop: graceful_stop, *,
                      model_dir: str, batch_size: int, guidance_scale: float, steps: int, sampler: str,
                      seed: int, native: bool, on_progress) -> None:
    """Generate and write the samples ``todo`` in batches; on SIGTERM / SIGINT stop after the batch being
    written (each sample is written atomically) with :class:`~aldm.interrupt.Stopped`."""
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        require_free_space(out_dir, sum(_sample_bytes(items[i % len(items)], native) for i in chunk),
                           f"{len(chunk)} more sample(s)")
        mask = np.stack([items[i % len(items)].mask for i in chunk]).astype(np.float32)
        step_callback = None
        if on_progress is not None:
            def step_callback(step, total_steps, done=start):
                on_progress(done, len(todo), step, total_steps)
        out = pipe(mask, guidance_scale=guidance_scale, num_inference_steps=steps, sampler=sampler,
                   generator=[seed + i for i in chunk], step_callback=step_callback)
        for j, i in enumerate(chunk):
            item = items[i % len(items)]
            meta = {"sample": names[i], "index": i, "mask_subject": item.name, "mask_source": item.source,
                    "context_subject": item.context_subject, "mask_cache": item.cache,
                    "seed": seed + i, "guidance_scale": guidance_scale, "steps": steps, "sampler": sampler,
                    "precision": getattr(pipe, "precision", "fp32"),
                    "model": os.path.abspath(model_dir), "model_hash": pipe.model_hash,
                    "stage": pipe.info.get("stage")}
            write_sample(out_dir, names[i], out["image"][j].numpy(), item, meta, native)
        bar.update(len(chunk))
        if on_progress is not None:
            on_progress(start + len(chunk), len(todo), 0, 0)
        if stop.requested and start + batch_size < len(todo):
            raise Stopped(f"{out_dir}: stopped by {stop.requested} with {start + len(chunk)} of {len(todo)} samples "
                          "written; re-run the same command to finish the rest")


def _sample_bytes(item, native: bool) -> int:
    """An upper bound of one sample's files: 3 float32 volumes + a uint8 mask in model space, and the same on
    the native grid when written (before gzip, which only makes them smaller)."""
    model = item.mask[0].size * (3 * 4 + 1)
    grid = int(np.prod(item.native_shape)) * (3 * 4 + 1) if native and item.native_shape is not None else 0
    return model + grid

