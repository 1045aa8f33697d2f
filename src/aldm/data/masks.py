"""Where the masks of synthetic samples come from (``aldm generate --masks``), in model space.

* ``cache:PATH`` (or the path of a prepared cache): masks of a prepared cache. For the model's
  own target cache the held-out test subjects of its split are used by default (never the K
  few-shot subjects); ``--subjects`` picks others.
* ``folder:PATH``: NIfTI masks (``*.nii.gz``, any label > 0 is tumour). Masks already at the model's
  S^3 are used as they are; others are reoriented to RAS and resized to S^3 (nearest-exact).
* ``relocated:PATH``: each cache mask moved into another subject's brain (paper Appendix A), so
  tumours appear in new places; the native grid is the host subject's.
* ``appendix:PATH``: the paper's Appendix A scheme, as the web UI uses it: samples 0..G-1
  (G = min(16, M) subjects, chosen as for ``cache:``) reuse those subjects' ground-truth masks;
  sample i >= G applies mask i mod G inside another of the G subjects' brains.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..artifacts.cache import PreparedCache
from ..artifacts.run import Run
from ..errors import AldmError
from ..io.nifti import load_nifti


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
    data = PreparedCache(cache).load(row)
    return MaskItem(
        name=name or row["subject"], mask=data["mask"] if mask is None else mask,
        model_affine=np.asarray(json.loads(row["model_affine"])),
        native_shape=tuple(json.loads(row["native_shape"])), native_affine=np.asarray(json.loads(row["native_affine"])),
        intensity_ranges=json.loads(row["intensity_ranges"]), source=f"cache:{row['subject']}",
        context_subject=row["subject"], cache=os.path.abspath(cache),
    )


def _relocated_item(cache: str, row: dict, host: dict, rng: np.random.Generator) -> MaskItem:
    """``row``'s mask moved into ``host``'s brain; the item takes the host's geometry."""
    prepared = PreparedCache(cache)
    moved = relocate_mask(prepared.load(row)["mask"][0], prepared.load(host)["brain"][0], rng)
    item = _item_from_row(cache, host, name=f"{row['subject']}-in-{host['subject']}", mask=moved[None])
    item.source = f"relocated:{row['subject']}->{host['subject']}"
    return item


def cache_rows(cache: str, subjects: list | None = None, model: Run | None = None) -> list[dict]:
    """Manifest rows of the mask subjects: ``subjects``, else the ``model`` run's held-out test subjects
    when ``cache`` is the model's own data and it has a split (never the few-shot subjects), else all."""
    prepared = PreparedCache(cache).require()
    rows = prepared.rows()
    split = model.split() if model is not None and os.path.abspath(cache) == model.data else None
    if subjects is None and split is not None:
        subjects = split["test"]  # held out: never the few-shot subjects
        if not subjects:
            raise AldmError(f"{model.split_path}: the split has no held-out test subjects; pass --subjects")
    if subjects is not None:
        rows = prepared.subject_rows(subjects)
    return rows


def masks_from_cache(cache: str, subjects: list | None = None, model: Run | None = None) -> list[MaskItem]:
    """The masks of :func:`cache_rows`, each with its subject's geometry."""
    return [_item_from_row(cache, r) for r in cache_rows(cache, subjects, model)]


def appendix_masks(cache: str, n: int, seed: int, subjects: list | None = None,
                   model: Run | None = None) -> list[MaskItem]:
    """``n`` mask items in the paper's Appendix A order (see the module docstring).

    Sample i >= G (pass p = i // G, mask j = i mod G) goes into subject (j + p) mod G's brain at a
    place drawn from ``default_rng([seed, i])``, so each item depends only on (seed, i), not on n.
    """
    rows = cache_rows(cache, subjects, model)[:APPENDIX_GROUND_TRUTH]
    items = [_item_from_row(cache, r) for r in rows[:n]]
    for i in range(len(rows), n):
        passes, j = divmod(i, len(rows))
        host = rows[(j + passes) % len(rows)]
        items.append(_relocated_item(cache, rows[j], host, np.random.default_rng([seed, i])))
    return items


def masks_from_folder(folder: str, size: int) -> list[MaskItem]:
    """NIfTI masks of ``folder`` (any label > 0 is tumour), reoriented to RAS and resized to ``size``^3
    (nearest-exact) unless already at that size; an AldmError naming the first bad file."""
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
        data, native_affine = load_nifti(path, scaled=False)  # the header is checked before any voxel is read
        if data.ndim != 3 or not np.isfinite(data).all():
            raise AldmError(f"{path}: a mask must be a finite 3D volume, got shape {data.shape}")
        mask = (data > 0).astype(np.float32)
        if not mask.any():
            raise AldmError(f"{path}: empty mask")
        if mask.shape == (size,) * 3:
            model, affine = mask, native_affine
        else:
            t = MetaTensor(torch.from_numpy(mask)[None], affine=torch.as_tensor(native_affine, dtype=torch.float64))
            t = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(t)
            t = Resize((size,) * 3, mode="nearest-exact")(t)
            model, affine = t.numpy()[0], np.asarray(t.affine)
        items.append(MaskItem(name=name.split(".")[0], mask=(model[None] > 0.5).astype(np.uint8),
                              model_affine=np.asarray(affine, dtype=np.float64), native_shape=tuple(data.shape),
                              native_affine=np.asarray(native_affine), source=f"folder:{path}"))
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
    rows = PreparedCache(cache).require().rows()
    if subjects is not None:
        rows = [r for r in rows if r["subject"] in set(subjects)]
    if len(rows) < 2:
        raise AldmError(f"{cache}: relocation needs at least two subjects")
    rng = np.random.default_rng(seed)
    return [_relocated_item(cache, row, rows[(i + 1) % len(rows)], rng) for i, row in enumerate(rows)]


MASK_KINDS = ("cache", "folder", "relocated", "appendix")


def resolve_masks(spec: str | None, model: Run, image_size: int, subjects: list | None, seed: int,
                  n: int = 1) -> list[MaskItem]:
    """Mask items for a ``--masks`` value (see the module docstring; None: the ``model`` run's own
    cache); ``n`` only matters to appendix."""
    if spec is None:
        spec = "cache:" + model.data
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in MASK_KINDS else ("", "", spec)
    if not kind:
        kind = "cache" if PreparedCache.is_cache(spec) else "folder"
    if kind == "cache":
        return masks_from_cache(path, subjects, model)
    if kind == "relocated":
        return relocated_masks(path, subjects, seed)
    if kind == "appendix":
        return appendix_masks(path, n, seed, subjects, model)
    return masks_from_folder(path, image_size)
