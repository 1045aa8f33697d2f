"""``aldm generate``: synthetic cohorts from masks, written as NIfTI in model space and on the native grid.

Mask sources (``--masks``):

* ``cache:PATH`` (or a path holding ``manifest.csv``): masks of a prepared cache. For the model's
  own target cache the held-out test subjects of its split are used by default (never the K
  few-shot subjects); ``--subjects`` picks others.
* ``folder:PATH``: NIfTI masks (``*.nii.gz``, any label > 0 is tumour). Masks already at the model's
  S^3 are used as they are; others are reoriented to RAS and resized to S^3 (nearest-exact).
* ``relocated:PATH``: each cache mask moved into another subject's brain (paper Appendix A), so
  tumours appear in new places; the native grid is the host subject's.
* ``appendix:PATH``: the paper's Appendix A scheme, as the web UI uses it: samples 0..G-1
  (G = min(16, M) subjects, chosen as for ``cache:``) reuse those subjects' ground-truth masks;
  sample i >= G applies mask i mod G inside another of the G subjects' brains.

Sample ``i`` uses mask ``i mod M`` and seed ``seed + i``; its files go to
``OUT/sample-IIII_<mask subject>/`` (written in a temporary folder, then renamed, so an
interrupted run leaves no half-written sample and a re-run continues where it stopped). Under
``torchrun`` the samples are split across ranks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from .data.cache import load_cached, read_manifest
from .data.geometry import to_native, unscale_intensities
from .data.splits import load_split
from .errors import AldmError
from .io.atomic import atomic_write_text, remove_stale_temps, sha256_file
from .io.nifti import save_nifti
from .pipeline import ALDMPipeline, load_pipeline
from .train.distributed import DistInfo, barrier

MODALITY_FILES = ("t1", "t2", "flair")
DONE = "sample.json"


@dataclass
class MaskItem:
    """A tumour mask in model space (1, S, S, S) uint8, where it came from and its native geometry."""

    name: str
    mask: np.ndarray
    model_affine: np.ndarray
    native_shape: tuple | None = None
    native_affine: np.ndarray | None = None
    intensity_ranges: list | None = None
    source: str = ""
    context_subject: str = ""  # the cache subject whose anatomy and native grid the sample gets
    cache: str = ""


APPENDIX_GROUND_TRUTH = 16  # paper Appendix A: the first 16 samples reuse the target subjects' masks


def _item_from_row(cache: str, row: dict, name: str | None = None, mask=None) -> MaskItem:
    data = load_cached(cache, row)
    return MaskItem(
        name=name or row["subject"], mask=data["mask"] if mask is None else mask,
        model_affine=np.asarray(json.loads(row["model_affine"])),
        native_shape=tuple(json.loads(row["native_shape"])), native_affine=np.asarray(json.loads(row["native_affine"])),
        intensity_ranges=json.loads(row["intensity_ranges"]), source=f"cache:{row['subject']}",
        context_subject=row["subject"], cache=os.path.abspath(cache),
    )


def _relocated_item(cache: str, row: dict, host: dict, rng: np.random.Generator) -> MaskItem:
    """``row``'s mask moved into ``host``'s brain; the item takes the host's geometry."""
    moved = relocate_mask(load_cached(cache, row)["mask"][0], load_cached(cache, host)["brain"][0], rng)
    item = _item_from_row(cache, host, name=f"{row['subject']}-in-{host['subject']}", mask=moved[None])
    item.source = f"relocated:{row['subject']}->{host['subject']}"
    return item


def cache_rows(cache: str, subjects: list | None = None, model_info: dict | None = None,
               model_dir: str | None = None) -> list[dict]:
    """Manifest rows of the mask subjects: ``subjects``, else the model's held-out test subjects when
    ``cache`` is the model's own data and its split exists (never the few-shot subjects), else all."""
    rows = read_manifest(cache)
    if not rows:
        raise AldmError(f"{cache}: no manifest.csv; not a prepared cache")
    split_path = os.path.join(model_dir, "split.json") if model_dir else None
    own = model_info and os.path.abspath(cache) == model_info.get("data")
    if subjects is None and own and split_path and os.path.exists(split_path):
        subjects = load_split(split_path)["test"]  # held out: never the few-shot subjects
        if not subjects:
            raise AldmError(f"{split_path}: the split has no held-out test subjects; pass --subjects")
    if subjects is not None:
        by_name = {r["subject"]: r for r in rows}
        missing = [s for s in subjects if s not in by_name]
        if missing:
            raise AldmError(f"{cache}: unknown subject(s) {', '.join(missing[:5])}")
        rows = [by_name[s] for s in subjects]
    return rows


def masks_from_cache(cache: str, subjects: list | None = None, model_info: dict | None = None,
                     model_dir: str | None = None) -> list[MaskItem]:
    return [_item_from_row(cache, r) for r in cache_rows(cache, subjects, model_info, model_dir)]


def appendix_masks(cache: str, n: int, seed: int, subjects: list | None = None, model_info: dict | None = None,
                   model_dir: str | None = None) -> list[MaskItem]:
    """``n`` mask items in the paper's Appendix A order (see the module docstring).

    Sample i >= G (pass p = i // G, mask j = i mod G) goes into subject (j + p) mod G's brain at a
    place drawn from ``default_rng([seed, i])``, so each item depends only on (seed, i), not on n.
    """
    rows = cache_rows(cache, subjects, model_info, model_dir)[:APPENDIX_GROUND_TRUTH]
    items = [_item_from_row(cache, r) for r in rows[:n]]
    for i in range(len(rows), n):
        passes, j = divmod(i, len(rows))
        host = rows[(j + passes) % len(rows)]
        items.append(_relocated_item(cache, rows[j], host, np.random.default_rng([seed, i])))
    return items


def masks_from_folder(folder: str, size: int) -> list[MaskItem]:
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Resize

    if not os.path.isdir(folder):
        raise AldmError(f"{folder}: mask folder not found")
    files = sorted(f for f in os.listdir(folder) if f.endswith((".nii.gz", ".nii")))
    if not files:
        raise AldmError(f"{folder}: no .nii.gz masks")
    items = []
    for name in files:
        path = os.path.join(folder, name)
        try:
            img = nib.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:
            raise AldmError(f"{path}: unreadable NIfTI mask ({type(exc).__name__})") from exc
        if data.ndim != 3 or not np.isfinite(data).all():
            raise AldmError(f"{path}: a mask must be a finite 3D volume, got shape {data.shape}")
        mask = (data > 0).astype(np.float32)
        if not mask.any():
            raise AldmError(f"{path}: empty mask")
        if mask.shape == (size,) * 3:
            model, affine = mask, img.affine
        else:
            t = MetaTensor(torch.from_numpy(mask)[None], affine=torch.as_tensor(img.affine, dtype=torch.float64))
            t = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(t)
            t = Resize((size,) * 3, mode="nearest-exact")(t)
            model, affine = t.numpy()[0], np.asarray(t.affine)
        items.append(MaskItem(name=name.split(".")[0], mask=(model[None] > 0.5).astype(np.uint8),
                              model_affine=np.asarray(affine, dtype=np.float64), native_shape=tuple(data.shape),
                              native_affine=np.asarray(img.affine), source=f"folder:{path}"))
    return items


def relocate_mask(mask: np.ndarray, brain: np.ndarray, rng: np.random.Generator, tries: int = 200) -> np.ndarray:
    """Translate ``mask`` (S, S, S) so that it lies inside ``brain`` (S, S, S) at a random place.

    Draws candidate centres among brain voxels and keeps the first placement with >= 99 % of the
    tumour inside the brain (else the best one seen).
    """
    idx = np.argwhere(mask > 0)
    if len(idx) == 0:
        raise AldmError("cannot relocate an empty mask")
    centre = np.round(idx.mean(0)).astype(int)
    candidates = np.argwhere(brain > 0)
    best, best_inside = None, -1.0
    for _ in range(tries):
        shift = candidates[rng.integers(len(candidates))] - centre
        moved = idx + shift
        ok = np.all((moved >= 0) & (moved < np.array(mask.shape)), axis=1)
        if not ok.all():
            continue
        inside = float(brain[tuple(moved.T)].mean())
        if inside > best_inside:
            best, best_inside = moved, inside
        if inside >= 0.99:
            break
    if best is None:
        raise AldmError("the tumour does not fit anywhere inside the host brain")
    out = np.zeros_like(mask)
    out[tuple(best.T)] = 1
    return out


def relocated_masks(cache: str, subjects: list | None, seed: int) -> list[MaskItem]:
    """Each subject's mask moved into the next subject's brain (a cyclic pairing), host geometry."""
    rows = read_manifest(cache)
    if subjects is not None:
        rows = [r for r in rows if r["subject"] in set(subjects)]
    if len(rows) < 2:
        raise AldmError(f"{cache}: relocation needs at least two subjects")
    rng = np.random.default_rng(seed)
    return [_relocated_item(cache, row, rows[(i + 1) % len(rows)], rng) for i, row in enumerate(rows)]


MASK_KINDS = ("cache", "folder", "relocated", "appendix")


def resolve_masks(spec: str | None, pipe: ALDMPipeline, model_dir: str, subjects: list | None,
                  seed: int, n: int = 1) -> list[MaskItem]:
    """Mask items for a ``--masks`` value (see the module docstring); ``n`` only matters to appendix."""
    if spec is None:
        spec = "cache:" + pipe.info["data"]
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in MASK_KINDS else ("", "", spec)
    if not kind:
        kind = "cache" if os.path.exists(os.path.join(spec, "manifest.csv")) else "folder"
    if kind == "cache":
        return masks_from_cache(path, subjects, pipe.info, model_dir)
    if kind == "relocated":
        return relocated_masks(path, subjects, seed)
    if kind == "appendix":
        return appendix_masks(path, n, seed, subjects, pipe.info, model_dir)
    return masks_from_folder(path, pipe.profile.image_size)


def _write_sample(out_dir: str, name: str, image: np.ndarray, item: MaskItem, meta: dict, native: bool = True) -> None:
    """All files of one sample, into a temp folder renamed at the end (no half-written samples)."""
    final = os.path.join(out_dir, name)
    tmp = os.path.join(out_dir, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "model"))
    for c, mod in enumerate(MODALITY_FILES):
        save_nifti(os.path.join(tmp, "model", f"{mod}.nii.gz"), image[c], item.model_affine)
    save_nifti(os.path.join(tmp, "model", "mask.nii.gz"), item.mask[0], item.model_affine, np.uint8)
    if native and item.native_shape is not None:
        os.makedirs(os.path.join(tmp, "native"))
        native = to_native(image, item.model_affine, item.native_shape, item.native_affine, order=1, fill=-1.0)
        background = native[0] <= -0.999
        if item.intensity_ranges:
            native = unscale_intensities(native, item.intensity_ranges)
            native[:, background] = 0.0  # skull-stripped convention of the downloads
        for c, mod in enumerate(MODALITY_FILES):
            save_nifti(os.path.join(tmp, "native", f"{mod}.nii.gz"), native[c], item.native_affine)
        mask = to_native(item.mask[0].astype(np.float32), item.model_affine, item.native_shape, item.native_affine,
                         order=0)
        save_nifti(os.path.join(tmp, "native", "mask.nii.gz"), mask.astype(np.uint8), item.native_affine, np.uint8)
    meta = {**meta, "sha256": {os.path.relpath(os.path.join(d, f), tmp): sha256_file(os.path.join(d, f))
                               for d, _, files in sorted(os.walk(tmp)) for f in sorted(files)}}
    atomic_write_text(os.path.join(tmp, DONE), json.dumps(meta, indent=2) + "\n")
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)


def verify_samples(out_dir: str) -> tuple[int, list[str]]:
    """(finished samples, problems) of an ``aldm generate`` folder: files missing or not matching the
    checksums their sample.json records, and half-written ``.tmp-`` folders a kill left behind."""
    if not os.path.isdir(out_dir):
        raise AldmError(f"{out_dir}: not a folder")
    problems, n = [], 0
    for name in sorted(os.listdir(out_dir)):
        folder = os.path.join(out_dir, name)
        if name.startswith(".tmp-"):
            problems.append(f"{folder}: unfinished sample (interrupted); re-run aldm generate to finish it")
            continue
        if not (name.startswith("sample-") and os.path.isdir(folder)):
            continue
        try:
            with open(os.path.join(folder, DONE), encoding="utf-8") as fh:
                sums = json.load(fh).get("sha256", {})
        except (OSError, ValueError):
            problems.append(f"{os.path.join(folder, DONE)}: missing or damaged")
            continue
        n += 1
        for rel, digest in sums.items():
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                problems.append(f"{path}: missing")
            elif sha256_file(path) != digest:
                problems.append(f"{path}: checksum mismatch (damaged or modified)")
    if n == 0 and not problems:
        raise AldmError(f"{out_dir}: no generated samples (sample-*/{DONE})")
    return n, problems


def generate(model_dir: str, out_dir: str, n: int, masks: str | None = None, subjects: list | None = None,
             guidance_scale: float = 3.0, steps: int = 50, sampler: str = "ddim", seed: int = 0,
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
    items = resolve_masks(masks, pipe, model_dir, subjects, seed, n)
    os.makedirs(out_dir, exist_ok=True)
    if dist_info.is_main:
        remove_stale_temps(out_dir)  # half-written samples of an interrupted run; redone below
    barrier(dist_info)
    names = [f"sample-{i:04d}_{items[i % len(items)].name}" for i in range(n)]
    todo = [i for i in range(n) if i % dist_info.world_size == dist_info.rank
            and not os.path.exists(os.path.join(out_dir, names[i], DONE))]
    bar = tqdm(total=len(todo), desc="generate", unit="sample", disable=not (progress and dist_info.is_main))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
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
            _write_sample(out_dir, names[i], out["image"][j].numpy(), item, meta, native)
        bar.update(len(chunk))
        if on_progress is not None:
            on_progress(start + len(chunk), len(todo), 0, 0)
    bar.close()
    barrier(dist_info)
    rows = []
    for name in names:
        path = os.path.join(out_dir, name, DONE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                rows.append(json.load(fh))
    if dist_info.is_main:
        buf = io.StringIO()
        fields = ["sample", "index", "mask_subject", "mask_source", "context_subject", "mask_cache", "seed",
                  "guidance_scale", "steps", "sampler", "precision", "model", "model_hash", "stage"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(os.path.join(out_dir, "manifest.csv"), buf.getvalue())
    return rows
