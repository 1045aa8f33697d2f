"""Where the masks of synthetic samples come from (``aldm generate --masks``), in model space.

* ``cache:PATH`` (or the path of a prepared cache): masks of a prepared cache. For the model's
  own target cache the held-out test subjects of its split are used by default (never the K
  few-shot subjects); ``--subjects`` picks others.
* ``folder:PATH``: NIfTI masks or BraTS label maps (``*.nii.gz``). Files already at the model's S^3 are
  used as they are; others are reoriented to RAS and resized to S^3 (nearest-exact). A ``mask`` model
  reads any label > 0 as tumour (a file holding several BraTS labels is kept as the sample's label map);
  a ``regions`` model reads every file as a label map {0, 1, 2, 4} (3 as 4 when there is no 4; other
  labels are an error naming the file). ``<name>_brain.nii.gz`` beside ``<name>.nii.gz`` is its brain
  mask (needed by a ``regions+brain`` model).
* ``relocated:PATH``: each cache label map moved, whole, into another subject's brain (paper Appendix A),
  so tumours appear in new places; the native grid and the brain are the host subject's.
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
from ..conditions import BRAIN, brats_label_map, is_brats_label_map, needs_brain
from ..errors import AldmError
from ..io.nifti import load_nifti


@dataclass
class MaskItem:
    """A tumour mask in model space (1, S, S, S) uint8, where it came from and its native geometry; ``labels``
    its BraTS label map (1, S, S, S) uint8 {0, 1, 2, 4} when known, ``brain`` the brain mask when known."""

    name: str
    mask: np.ndarray
    model_affine: np.ndarray
    native_shape: tuple | None = None
    native_affine: np.ndarray | None = None
    intensity_ranges: list | None = None
    source: str = ""
    context_subject: str = ""  # the cache subject whose anatomy and native grid the sample gets
    cache: str = ""
    labels: np.ndarray | None = None
    brain: np.ndarray | None = None

    def condition(self) -> np.ndarray:
        """What a pipeline takes as this item's tumour: the label map when known, else the binary mask."""
        return self.mask if self.labels is None else self.labels


APPENDIX_GROUND_TRUTH = 16  # paper Appendix A: the first 16 samples reuse the target subjects' masks


def item_from_row(cache: str, row: dict, name: str | None = None, labels=None, data: dict | None = None) -> MaskItem:
    """The item of a cache subject: its label map (or ``labels``, e.g. moved from another subject), its brain
    and its geometry; ``data``: its arrays when the caller has loaded them already (read once)."""
    data = PreparedCache(cache).load(row) if data is None else data
    labels = data["labels"] if labels is None else labels
    return MaskItem(
        name=name or row["subject"], mask=(labels > 0).astype(np.uint8), labels=labels, brain=data["brain"],
        model_affine=np.asarray(json.loads(row["model_affine"])),
        native_shape=tuple(json.loads(row["native_shape"])), native_affine=np.asarray(json.loads(row["native_affine"])),
        intensity_ranges=json.loads(row["intensity_ranges"]), source=f"cache:{row['subject']}",
        context_subject=row["subject"], cache=os.path.abspath(cache),
    )


def _relocated_item(cache: str, row: dict, host: dict, rng: np.random.Generator) -> MaskItem:
    """``row``'s label map moved, whole, into ``host``'s brain; the item takes the host's geometry and brain."""
    prepared = PreparedCache(cache)
    host_data = prepared.load(host)
    moved = relocate_mask(prepared.load(row)["labels"][0], host_data["brain"][0], rng)
    item = item_from_row(cache, host, name=f"{row['subject']}-in-{host['subject']}", labels=moved[None],
                         data=host_data)
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
    return [item_from_row(cache, r) for r in cache_rows(cache, subjects, model)]


def appendix_masks(cache: str, n: int, seed: int, subjects: list | None = None,
                   model: Run | None = None) -> list[MaskItem]:
    """``n`` mask items in the paper's Appendix A order (see the module docstring).

    Sample i >= G (pass p = i // G, mask j = i mod G) goes into subject (j + p) mod G's brain at a
    place drawn from ``default_rng([seed, i])``, so each item depends only on (seed, i), not on n.
    """
    rows = cache_rows(cache, subjects, model)[:APPENDIX_GROUND_TRUTH]
    items = [item_from_row(cache, r) for r in rows[:n]]
    for i in range(len(rows), n):
        passes, j = divmod(i, len(rows))
        host = rows[(j + passes) % len(rows)]
        items.append(_relocated_item(cache, rows[j], host, np.random.default_rng([seed, i])))
    return items


def masks_from_folder(folder: str, size: int, condition: str = "mask") -> list[MaskItem]:
    """The masks or label maps of ``folder`` (see the module docstring) for a model of ``condition``,
    reoriented to RAS and resized to ``size``^3 (nearest-exact) unless already at that size; an AldmError
    naming the first bad file."""
    if not os.path.isdir(folder):
        raise AldmError(f"{folder}: mask folder not found")
    files = sorted(f for f in os.listdir(folder) if f.endswith((".nii.gz", ".nii")))
    names = {_stem(f): f for f in files}
    tumours = [f for f in files if not (_stem(f).endswith(f"_{BRAIN}") and _stem(f)[:-len(BRAIN) - 1] in names)]
    if not tumours:
        raise AldmError(f"{folder}: no .nii.gz masks")
    items = []
    for name in tumours:
        path = os.path.join(folder, name)
        data, native_affine = load_nifti(path, scaled=False)  # the header is checked before any voxel is read
        if data.ndim != 3 or not np.isfinite(data).all():
            raise AldmError(f"{path}: a mask must be a finite 3D volume, got shape {data.shape}")
        if not (data > 0).any():
            raise AldmError(f"{path}: empty mask")
        labels = brats_label_map(data, path) if condition != "mask" or is_brats_label_map(data) else None
        model = _to_model_space(labels if labels is not None else (data > 0), native_affine, size)
        item = MaskItem(name=_stem(name), mask=(model[0][None] > 0).astype(np.uint8), model_affine=model[1],
                        native_shape=tuple(data.shape), native_affine=np.asarray(native_affine),
                        source=f"folder:{path}", labels=None if labels is None else model[0][None].astype(np.uint8))
        brain_file = names.get(f"{_stem(name)}_{BRAIN}")
        if brain_file is not None:
            brain_path = os.path.join(folder, brain_file)
            brain, brain_affine = load_nifti(brain_path, scaled=False)
            if brain.shape != data.shape:
                raise AldmError(f"{brain_path}: brain mask of shape {brain.shape}, but {name} is {data.shape}")
            item.brain = (_to_model_space(brain > 0, brain_affine, size)[0][None] > 0).astype(np.uint8)
        elif needs_brain(condition):
            raise AldmError(f"{path}: this model is conditioned on the brain too; put its brain mask beside it as "
                            f"{_stem(name)}_{BRAIN}.nii.gz")
        items.append(item)
    return items


def _stem(file_name: str) -> str:
    return file_name.split(".")[0]


def _to_model_space(values: np.ndarray, native_affine: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(values on the model's ``size``^3 grid (nearest-exact), its affine): RAS-reoriented and resized, or as
    they are when already ``size``^3."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Resize

    values = np.asarray(values, dtype=np.float32)
    if values.shape == (size,) * 3:
        return values, np.asarray(native_affine, dtype=np.float64)
    t = MetaTensor(torch.from_numpy(values)[None], affine=torch.as_tensor(native_affine, dtype=torch.float64))
    t = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(t)
    t = Resize((size,) * 3, mode="nearest-exact")(t)
    return np.rint(t.numpy()[0]), np.asarray(t.affine, dtype=np.float64)


def relocate_mask(mask: np.ndarray, brain: np.ndarray, rng: np.random.Generator, tries: int = 200) -> np.ndarray:
    """Translate ``mask`` (S, S, S; a binary mask or a label map, moved whole with its values) so that it lies
    inside ``brain`` (S, S, S) at a random place.

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
    out[tuple(best.T)] = mask[tuple(idx.T)]
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


@dataclass(frozen=True)
class MaskSource:
    """Where the masks of a generation come from: ``kind`` (``cache``, ``folder``, ``relocated`` or
    ``appendix``; see the module docstring) and the ``path`` of the cache or folder. The command line's
    ``--masks KIND:PATH`` is parsed once by :meth:`parse`; code passes the object."""

    kind: str
    path: str

    def __post_init__(self):
        """Refuse an unknown kind."""
        if self.kind not in MASK_KINDS:
            raise AldmError(f"unknown mask source {self.kind!r}; choose one of {', '.join(MASK_KINDS)}")

    @classmethod
    def parse(cls, spec: str) -> MaskSource:
        """``KIND:PATH``, or a bare path (a prepared cache's, else a folder of masks)."""
        kind, _, path = spec.partition(":")
        if kind in MASK_KINDS:
            return cls(kind, path)
        return cls("cache" if PreparedCache.is_cache(spec) else "folder", spec)

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def resolve_masks(source: MaskSource | str | None, model: Run, image_size: int, subjects: list | None, seed: int,
                  n: int = 1, condition: str = "mask") -> list[MaskItem]:
    """Mask items from ``source`` (a :class:`MaskSource`, its ``KIND:PATH`` text, or None: the ``model`` run's
    own cache) for a model of ``condition``; ``n`` only matters to appendix."""
    if source is None:
        source = MaskSource("cache", model.data)
    elif isinstance(source, str):
        source = MaskSource.parse(source)
    if source.kind == "cache":
        return masks_from_cache(source.path, subjects, model)
    if source.kind == "relocated":
        return relocated_masks(source.path, subjects, seed)
    if source.kind == "appendix":
        return appendix_masks(source.path, n, seed, subjects, model)
    return masks_from_folder(source.path, image_size, condition)
