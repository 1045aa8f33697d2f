"""One phantom subject: real MNI152 anatomy, individually deformed, with a grown tumour.

Pipeline for a subject (all on the 240x240x155 native grid of the real datasets):

1. a smooth random affine (rotation, anisotropic scale, shift) plus an elastic displacement
   field maps native world coordinates into the MNI template; a radial mass effect pushes
   tissue away from the tumour centre;
2. the template's T1 / GM / WM / CSF / brain maps are resampled through that map (trilinear);
3. an irregular tumour grows inside the brain around a centre drawn from the white matter
   (frontal for IDH-mutant phenotypes) with BraTS sub-regions 1 (necrotic / non-enhancing core),
   2 (oedema, spreading preferentially along white matter) and 4 (enhancing rim);
4. T1, T1-contrast, T2 and FLAIR are mixed from the tissue fractions with per-tissue contrasts
   (:data:`~aldm.data.phenotype.TISSUE_CONTRAST`), then the domain's scanner profile applies a
   contrast curve, a smooth bias field, slice-direction blur and Rician noise; the background
   (outside the brain) is exactly zero, as in skull-stripped downloads.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..conditions import scaled_labels
from .phenotype import SCANNERS, TISSUE_CONTRAST, TISSUES, Phenotype
from .template import NATIVE_AFFINE, NATIVE_SHAPE, load_template

MODALITIES = ("T1", "T1c", "T2", "FLAIR")


@dataclass
class PhantomSubject:
    """Native-grid arrays of one subject (shape 240x240x155, LPS affine :data:`NATIVE_AFFINE`).

    ``images`` maps modality name -> float32 intensities (0 outside the brain);
    ``segmentation`` uint8 in {0, 1, 2, 4}; ``tissue`` uint8 (0 background, 1 CSF, 2 GM, 3 WM);
    ``healthy``: the images as they would be without the tumour — the same deformed anatomy (its mass effect
    included), scanner, bias field and noise, so they equal ``images`` wherever the tumour does not reach —
    when asked for; ``resized`` / ``resized_segmentation``: the same with the tumour scaled about its centre
    (:func:`aldm.conditions.scaled_labels`; shrunk only), the truth of a shrunk tumour, when asked for.
    """

    images: dict
    segmentation: np.ndarray
    tissue: np.ndarray
    phenotype: Phenotype
    healthy: dict | None = None  # the same anatomy, scanner, bias and noise without the tumour (its healthy twin)
    resized: dict | None = None  # the same with the tumour scaled about its centre (a resized twin)
    resized_segmentation: np.ndarray | None = None


def _smooth_noise(rng: np.random.Generator, shape: tuple, coarse: tuple, channels: int = 1) -> torch.Tensor:
    """Low-frequency Gaussian noise of ``shape`` (C, *shape): a coarse random grid, trilinearly upsampled."""
    coarse_field = torch.from_numpy(rng.standard_normal((1, channels, *coarse)).astype(np.float32))
    return F.interpolate(coarse_field, size=shape, mode="trilinear", align_corners=True)[0]


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _pick_centre_mni(phenotype: Phenotype, rng: np.random.Generator) -> np.ndarray:
    """A tumour centre (MNI mm) in supratentorial white matter, deep enough for its core."""
    tpl = load_template()
    depth = _brain_depth_mm()
    ijk = np.argwhere((tpl.wm > 0.6) & (depth > 0.45 * phenotype.radius_mm + 6.0))
    world = ijk @ tpl.affine[:3, :3].T + tpl.affine[:3, 3]
    keep = world[:, 2] > -10.0  # above the tentorium: no cerebellar / brainstem gliomas
    if phenotype.frontal:
        keep &= world[:, 1] > 8.0
    candidates = world[keep] if keep.any() else world
    return candidates[rng.integers(len(candidates))]


@functools.lru_cache(maxsize=1)
def _brain_depth_mm() -> np.ndarray:
    """Distance (mm) of every template voxel from the brain surface (cached)."""
    return ndimage.distance_transform_edt(load_template().brain > 0.5).astype(np.float32)


# The part of the native grid a phantom brain can reach (its bounding box plus a margin): all the
# work happens here and the result is embedded in the 240x240x155 volume, zero elsewhere.
WORK_BOX = (slice(32, 208), slice(16, 226), slice(0, 155))
WORK_SHAPE = tuple(s.stop - s.start for s in WORK_BOX)
WORK_ORIGIN = np.array([s.start for s in WORK_BOX], dtype=np.float64)


@functools.lru_cache(maxsize=1)
def _native_world_grid() -> torch.Tensor:
    """World (mm) coordinates of every voxel of :data:`WORK_BOX`, shape (3, *WORK_SHAPE)."""
    axes = [torch.arange(s.start, s.stop, dtype=torch.float32) for s in WORK_BOX]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    lin = torch.from_numpy(NATIVE_AFFINE[:3, :3].astype(np.float32))
    off = torch.from_numpy(NATIVE_AFFINE[:3, 3].astype(np.float32))
    return torch.einsum("ab,bijk->aijk", lin, ijk) + off[:, None, None, None]


@functools.lru_cache(maxsize=1)
def _tissue_stack() -> torch.Tensor:
    """The template's GM, WM and CSF maps as one (1, 3, 197, 233, 189) tensor (cached)."""
    tpl = load_template()
    return torch.from_numpy(np.stack([tpl.gm, tpl.wm, tpl.csf]))[None]


def _warp_template(phenotype: Phenotype, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """Resample the template through this subject's deformation.

    Returns (maps, tumour centre in voxel coordinates of :data:`WORK_BOX`); ``maps`` has float32
    arrays 'gm', 'wm', 'csf', 'brain' (tissue fractions) of shape :data:`WORK_SHAPE`.
    """
    tpl = load_template()
    world = _native_world_grid()

    rot = _rotation(np.deg2rad(rng.uniform(-6.0, 6.0, size=3)))
    scale = rng.uniform(0.9, 0.97) * rng.uniform(0.97, 1.03, size=3)
    shift = rng.uniform(-4.0, 4.0, size=3)
    # native world p -> MNI q = L p + t  (L = R diag(1/scale): a subject smaller than the template)
    lin = rot @ np.diag(1.0 / scale)
    centre_mni = _pick_centre_mni(phenotype, rng)
    centre_world = np.linalg.solve(lin, centre_mni - shift)

    q = torch.einsum("ab,bijk->aijk", torch.from_numpy(lin.astype(np.float32)), world)
    q += torch.from_numpy(shift.astype(np.float32))[:, None, None, None]
    q += 2.5 * _smooth_noise(rng, WORK_SHAPE, (6, 6, 5), channels=3)  # elastic part, ~2.5 mm

    # Mass effect: sample closer to the tumour centre, so tissue appears pushed outwards.
    c = torch.from_numpy(centre_world.astype(np.float32))[:, None, None, None]
    rel = world - c
    reach = phenotype.radius_mm * phenotype.oedema_factor * 1.3
    push = phenotype.mass_effect * torch.exp(-(rel.square().sum(0) / reach**2))
    q -= torch.einsum("ab,bijk->aijk", torch.from_numpy(lin.astype(np.float32)), rel * push)

    # MNI world -> template voxel -> grid_sample's normalised (x=W, y=H, z=D) order.
    inv = np.linalg.inv(tpl.affine)
    vox = torch.einsum("ab,bijk->aijk", torch.from_numpy(inv[:3, :3].astype(np.float32)), q)
    vox += torch.from_numpy(inv[:3, 3].astype(np.float32))[:, None, None, None]
    sizes = torch.tensor(tpl.t1.shape, dtype=torch.float32)[:, None, None, None]
    norm = 2.0 * vox / (sizes - 1.0) - 1.0
    grid = norm.flip(0).permute(1, 2, 3, 0)[None]

    out = F.grid_sample(_tissue_stack(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    maps = dict(zip(("gm", "wm", "csf"), out[0].numpy()))
    maps["brain"] = maps["gm"] + maps["wm"] + maps["csf"]  # CSF is brain - GM - WM on the template
    centre_vox = np.linalg.solve(NATIVE_AFFINE[:3, :3], centre_world - NATIVE_AFFINE[:3, 3]) - WORK_ORIGIN
    return maps, centre_vox


def _grow_tumour(
    phenotype: Phenotype, maps: dict, centre_vox: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, tuple]:
    """Irregular tumour with BraTS sub-regions inside a local box; returns (labels, box slices)."""
    reach = phenotype.radius_mm * phenotype.oedema_factor * 1.45 + 4
    lo = np.maximum(np.floor(centre_vox - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + reach).astype(int) + 1, WORK_SHAPE)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    axes = [np.arange(a, b, dtype=np.float32) - cv for a, b, cv in zip(lo, hi, centre_vox)]
    dist = np.sqrt(sum(np.square(g) for g in np.meshgrid(*axes, indexing="ij")))

    coarse = tuple(max(2, s // 12) for s in shape)
    noise = np.clip(_smooth_noise(rng, shape, coarse, channels=3).numpy(), -1.5, 1.5)
    r_core = dist / phenotype.radius_mm * (1.0 + 0.3 * noise[0])
    r_oed = dist / (phenotype.radius_mm * phenotype.oedema_factor) * (1.0 + 0.35 * noise[1])
    brain = maps["brain"][box] > 0.5
    wm = maps["wm"][box]

    labels = np.zeros(shape, dtype=np.uint8)
    # Vasogenic oedema follows the white matter; both regions stay well inside the box.
    oedema = (r_oed < 0.75 + 0.5 * wm) & (dist < 1.4 * phenotype.radius_mm * phenotype.oedema_factor) & brain
    core = (r_core < 1.0) & (dist < 1.5 * phenotype.radius_mm) & brain
    labels[oedema] = 2
    labels[core] = 1  # non-enhancing tumour core unless enhancing below
    if phenotype.enhancing:
        necrotic = r_core < phenotype.necrosis_fraction * (1.0 + 0.25 * noise[2])
        rim = core & ~necrotic
        if phenotype.grade < 4 or phenotype.idh_mutant:
            rim &= noise[2] > 0.3  # patchy, nodular enhancement in lower grades
        labels[rim] = 4
    full = np.zeros(WORK_SHAPE, dtype=np.uint8)
    full[box] = labels
    return full, box


def _compose(phenotype: Phenotype, maps: dict, seg: np.ndarray, box: tuple, rng: np.random.Generator) -> dict:
    """Mix the four modalities from tissue fractions and tumour compartments, then apply the scanner."""
    scanner = SCANNERS[phenotype.domain]
    brain = maps["brain"] > 0.5
    total = np.maximum(maps["brain"], 1e-3)
    fractions = {name: maps[name] / total for name in ("csf", "gm", "wm")}

    # Soft tumour compartments inside the box (partial volume at their borders).
    comps = {}
    box_seg = seg[box]
    for name, label in (("necrosis", 1), ("enhancing", 4), ("oedema", 2)):
        comps[name] = ndimage.gaussian_filter((box_seg == label).astype(np.float32), 0.8)
    if not phenotype.enhancing or phenotype.necrosis_fraction == 0.0:
        comps["nonenhancing"], comps["necrosis"] = comps["necrosis"], np.zeros_like(comps["necrosis"])
    else:
        comps["nonenhancing"] = np.zeros_like(comps["necrosis"])
    tumour_total = sum(comps.values())
    texture = 1.0 + 0.12 * _smooth_noise(rng, box_seg.shape, tuple(max(2, s // 4) for s in box_seg.shape))[0].numpy()
    # T2-FLAIR mismatch: the non-enhancing core is FLAIR-dark in its centre with a bright rim.
    core = ndimage.gaussian_filter((box_seg == 1).astype(np.float32), 2.5) if phenotype.mismatch else None

    bias = np.exp(scanner.bias * _smooth_noise(rng, WORK_SHAPE, (4, 4, 3))[0].numpy())
    images = {}
    for modality in MODALITIES:
        contrast = dict(zip(TISSUES, TISSUE_CONTRAST[modality]))
        img = sum(fractions[name] * contrast[name] for name in ("csf", "gm", "wm"))
        tumour = sum(comps[name] * contrast[name] for name in comps)
        if core is not None and modality == "FLAIR":
            tumour = tumour - comps["nonenhancing"] * 0.45 * np.clip(core, 0.0, 1.0)
        if core is not None and modality == "T2":
            tumour = tumour + comps["nonenhancing"] * 0.12
        sub = img[box]
        img[box] = sub * (1.0 - np.clip(tumour_total, 0, 1)) + tumour * texture
        img = np.clip(img, 0.0, None)
        if scanner.gamma[modality] != 1.0:
            img = img ** scanner.gamma[modality]
        img *= bias
        if scanner.slice_blur[modality] > 0:
            img = ndimage.gaussian_filter1d(img, scanner.slice_blur[modality], axis=2)
        # Rician noise on brain voxels only (the background of a skull-stripped image is exactly 0).
        vals = img[brain]
        n1 = rng.standard_normal(vals.shape, dtype=np.float32) * scanner.noise
        n2 = rng.standard_normal(vals.shape, dtype=np.float32) * scanner.noise
        out = np.zeros(NATIVE_SHAPE, dtype=np.float32)
        out[WORK_BOX][brain] = np.sqrt((vals + n1) ** 2 + n2**2) * scanner.full_scale
        images[modality] = out
    return images


def synthesize_subject(phenotype: Phenotype, seed: int, healthy_twin: bool = False,
                       tumour: bool = True, resized_twin: float = 0.0) -> PhantomSubject:
    """Make one phantom subject; deterministic for (phenotype, seed). ``healthy_twin``: also its images without
    the tumour (the same random draws, so identical away from it); ``resized_twin`` F in (0, 1]: also its images
    with the tumour shrunk by F about its centre (the same draws and anatomy, so identical away from the tumour;
    the mass effect stays the full tumour's, as in an edit of the scan); ``tumour=False``: a healthy subject (no
    tumour, no mass effect; its segmentation all 0)."""
    if not 0.0 <= resized_twin <= 1.0:
        raise ValueError(f"a resized twin shrinks the tumour: factor {resized_twin} is not in (0, 1]")
    rng = np.random.default_rng(seed)
    if not tumour:
        phenotype = dataclasses.replace(phenotype, mass_effect=0.0)
    maps, centre_vox = _warp_template(phenotype, rng)
    seg, box = _grow_tumour(phenotype, maps, centre_vox, rng)
    if not tumour:
        seg = np.zeros_like(seg)
    twin_rng, resized_rng = copy.deepcopy(rng), copy.deepcopy(rng)
    images = _compose(phenotype, maps, seg, box, rng)
    healthy = _compose(phenotype, maps, np.zeros_like(seg), box, twin_rng) if healthy_twin else None
    brain = maps["brain"] > 0.5
    resized = resized_segmentation = None
    if resized_twin > 0 and seg.any():
        resized_seg = np.where(brain, scaled_labels(seg, resized_twin), 0).astype(np.uint8)
        resized = _compose(phenotype, maps, resized_seg, box, resized_rng)
        resized_segmentation = np.zeros(NATIVE_SHAPE, dtype=np.uint8)
        resized_segmentation[WORK_BOX] = resized_seg
    csf, gm, wm = maps["csf"][brain], maps["gm"][brain], maps["wm"][brain]
    classes = np.where((wm >= gm) & (wm >= csf), 3, np.where(gm >= csf, 2, 1)).astype(np.uint8)
    tissue = np.zeros(NATIVE_SHAPE, dtype=np.uint8)
    tissue[WORK_BOX][brain] = classes
    segmentation = np.zeros(NATIVE_SHAPE, dtype=np.uint8)
    segmentation[WORK_BOX] = np.where(brain, seg, 0)
    return PhantomSubject(images=images, segmentation=segmentation, tissue=tissue, phenotype=phenotype,
                          healthy=healthy, resized=resized, resized_segmentation=resized_segmentation)
