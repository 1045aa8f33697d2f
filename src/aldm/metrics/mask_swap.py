"""The mask-swap check: same seed, two different masks — where does the difference lie?

A generator that follows its mask changes the volume where the tumour moved and little elsewhere;
one that ignores the mask gives the same volume for both (same seed), and one that reacts to the mask
globally changes everything. For a pair of masks A, B and one seed, with x_A, x_B the two samples and
Δ = mean over modalities of |x_A - x_B| (model space, [-1, 1]):

* ``inside``: mean Δ in the region R = (A ∪ B) dilated by ``margin`` voxels (where a change belongs);
* ``outside``: mean Δ in the rest of the volume;
* ``locality``: the share of the total Δ that lies in R; a change spread evenly over the volume would
  give ``chance`` = |R| / |volume|.

Reported as means over pairs of held-out patients' masks (Table 1's "Swap locality", with the chance
level in the reference row).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def swap_region(mask_a: np.ndarray, mask_b: np.ndarray, margin: int = 2) -> np.ndarray:
    """(A ∪ B) dilated by ``margin`` voxels (6-connected steps), boolean (S, S, S); masks (1, S, S, S)."""
    union = (np.asarray(mask_a)[0] > 0) | (np.asarray(mask_b)[0] > 0)
    return ndimage.binary_dilation(union, iterations=margin) if margin else union


def swap_scores(x_a: np.ndarray, x_b: np.ndarray, region: np.ndarray) -> dict:
    """inside / outside / locality / chance of one pair (see the module docstring); x (3, S, S, S)."""
    delta = np.abs(np.asarray(x_a, np.float64) - np.asarray(x_b, np.float64)).mean(0)
    total = float(delta.sum())
    return {"inside": float(delta[region].mean()), "outside": float(delta[~region].mean()),
            "locality": float(delta[region].sum() / total) if total > 0 else None,
            "chance": float(region.mean())}


def mask_swap(pipe, masks: list[np.ndarray], settings, pairs: int = 3, margin: int = 2,
              brains: list[np.ndarray] | None = None) -> dict:
    """The check on ``pairs`` consecutive pairs of ``masks`` (each (1, S, S, S): binary masks or BraTS label
    maps; ``brains`` beside them for a model conditioned on the brain: each sample of a pair keeps its own
    subject's) with ``settings``
    (:class:`aldm.diffusion.settings.GenerationSettings`), both samples of a pair from seed
    ``settings.seed + pair``; returns the means over pairs, the per-pair scores and the first pair's
    volumes and masks (for the figure). ``pipe``: a loaded ALDM or baseline pipeline."""
    n = min(pairs, len(masks) - 1)
    if n < 1:
        return {"pairs": 0}
    scores, example = [], None
    for p in range(n):
        a, b = masks[p], masks[p + 1]
        extra = {} if brains is None else {"brain": np.stack([brains[p], brains[p + 1]]).astype(np.float32)}
        out = pipe(np.stack([a, b]).astype(np.float32), settings,
                   generator=[settings.seed + p, settings.seed + p], **extra)["image"].numpy()
        scores.append(swap_scores(out[0], out[1], swap_region(a, b, margin)))
        if example is None:
            example = {"x_a": out[0].astype(np.float16), "x_b": out[1].astype(np.float16),
                       "mask_a": (np.asarray(a) > 0).astype(np.uint8), "mask_b": (np.asarray(b) > 0).astype(np.uint8)}
    localities = [s["locality"] for s in scores if s["locality"] is not None]
    return {"pairs": n, "inside": float(np.mean([s["inside"] for s in scores])),
            "outside": float(np.mean([s["outside"] for s in scores])),
            "locality": float(np.mean(localities)) if localities else None,
            "chance": float(np.mean([s["chance"] for s in scores])), "per_pair": scores, "example": example}
