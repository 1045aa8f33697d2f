"""Sharpness of synthetic volumes against real ones: is a generator's detail as fine as a scan's?

* :func:`gradient_sharpness` — mean 3D gradient magnitude |grad x| (central differences, numpy) inside
  the head of one modality; :func:`sharpness_ratio` — that of a set of synthetic volumes over that of the
  real ones, per modality: 1.0 = as sharp as real, below 1 = blurred, above 1 = noisier / over-sharpened.
  The head (:func:`head_mask`) is the real volume's non-background voxels (> -0.999 in model space) and its
  brain mask; a synthetic volume is measured inside its real counterpart's head (the training probe and the
  evaluation alike), so a blurred skull edge counts and the empty background does not.
* :func:`radial_power_spectrum` — the radially averaged power spectrum of a volume per modality (the
  mean |FFT|^2 over shells of equal spatial frequency), whose high-frequency tail blur lowers and noise
  raises; :func:`mean_spectrum` averages it over a set (the report's spectrum figure).

Both work in the volumes' normalised units (model space [-1, 1] or the cache's), so the ratio compares
like with like when synthetic and real volumes come from the same pipeline.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = -0.999  # model-space voxels at or below this are background (the cache's -1)


def head_mask(image: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """(S, S, S) bool: voxels of any channel above the background of ``image`` (C, S, S, S), or inside ``brain``."""
    head = (np.asarray(image) > BACKGROUND).any(axis=0)
    if brain is not None:
        head |= np.asarray(brain).reshape(head.shape) > 0
    return head


def gradient_magnitude(volume: np.ndarray) -> np.ndarray:
    """|grad v| of one channel (S, S, S) by central differences (numpy.gradient), same shape."""
    gx, gy, gz = np.gradient(np.asarray(volume, dtype=np.float32))
    return np.sqrt(gx * gx + gy * gy + gz * gz)


def gradient_sharpness(image: np.ndarray, head: np.ndarray) -> np.ndarray:
    """(C,) mean gradient magnitude of each channel of ``image`` (C, S, S, S) inside ``head`` (S, S, S)."""
    return np.array([float(gradient_magnitude(channel)[head].mean()) if head.any() else float("nan")
                     for channel in np.asarray(image)])


def set_sharpness(volumes: list, heads: list) -> np.ndarray:
    """(C,) mean over ``volumes`` (each (C, S, S, S)) of :func:`gradient_sharpness` inside ``heads[i]`` (S, S, S)."""
    return np.mean([gradient_sharpness(v, h) for v, h in zip(volumes, heads)], axis=0)


def sharpness_ratio(synthetic: list, real: list, modalities, synthetic_heads: list, real_heads: list) -> dict:
    """{modality: mean gradient magnitude of the synthetic set / that of the real set} (1.0 = as sharp as
    real), plus ``mean`` over modalities; volumes (C, S, S, S), channel c being ``modalities[c]``, each measured
    inside its head mask (S, S, S) — for a paired synthetic volume, its real counterpart's :func:`head_mask`, so
    both sets are measured over the same voxels and blur leaking into the background cannot enlarge the region."""
    ratio = set_sharpness(synthetic, synthetic_heads) / set_sharpness(real, real_heads)
    out = {m: float(r) for m, r in zip(modalities, ratio)}
    out["mean"] = float(np.mean(ratio))
    return out


def radial_power_spectrum(image: np.ndarray, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies (F,) in cycles per voxel, power (C, F)): the radially averaged power spectrum of each
    channel of ``image`` (C, S, S, S) over ``bins`` shells (default S // 2) up to the Nyquist frequency 0.5."""
    image = np.asarray(image, dtype=np.float64)
    size = image.shape[1:]
    bins = bins or min(size) // 2
    grids = np.meshgrid(*[np.fft.fftfreq(n) for n in size], indexing="ij")
    radius = np.sqrt(sum(g * g for g in grids))
    edges = np.linspace(0.0, 0.5, bins + 1)
    shell = np.digitize(radius, edges) - 1
    inside = (shell >= 0) & (shell < bins)
    counts = np.bincount(shell[inside], minlength=bins).astype(np.float64)
    power = []
    for channel in image:
        p = np.abs(np.fft.fftn(channel)) ** 2 / channel.size
        power.append(np.bincount(shell[inside], weights=p[inside], minlength=bins) / np.maximum(counts, 1))
    return 0.5 * (edges[:-1] + edges[1:]), np.array(power)


def mean_spectrum(volumes: list, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies (F,), mean power (C, F)) of :func:`radial_power_spectrum` over ``volumes``."""
    spectra = [radial_power_spectrum(v, bins) for v in volumes]
    return spectra[0][0], np.mean([s[1] for s in spectra], axis=0)
