"""The vocabulary of conditions: what a generator is conditioned on, and the BraTS tumour labels and regions.

A tumour is given as a label map in the BraTS convention (what every cache stores): 0 background,
1 necrotic tumour core (NCR), 2 peritumoural oedema (ED), 4 enhancing tumour (ET; BraTS 2023 writes 3).
The evaluation regions are nested (BraTS): whole tumour WT = {1, 2, 4}, tumour core TC = {1, 4},
enhancing tumour ET = {4} — the convention of MONAI's ``ConvertToMultiChannelBasedOnBratsClasses``.

A condition names the binary masks a generator sees, each turned into control maps and FiLM statistics
by :mod:`aldm.data.control`:

* ``mask`` (the paper, the default): the whole tumour only — a binary mask; any label map works too;
* ``regions``: the three BraTS regions WT, TC, ET, so a user can ask for a larger necrotic core or
  oedema without enhancement (a region may be empty: many UCSF-PDGM cases lack label 1 or 4);
* ``regions+brain``: the three regions and the brain mask (the head's outline given too).
"""

from __future__ import annotations

import numpy as np

from .errors import AldmError

CONDITIONS = ("mask", "regions", "regions+brain")
DEFAULT_CONDITION = "mask"

NECROSIS, OEDEMA, ENHANCING = 1, 2, 4
BRATS_LABELS = (NECROSIS, OEDEMA, ENHANCING)
LABEL_NAMES = {NECROSIS: "necrosis", OEDEMA: "oedema", ENHANCING: "enhancing"}
#: the nested BraTS evaluation regions and the labels each holds
REGIONS = {"WT": (NECROSIS, OEDEMA, ENHANCING), "TC": (NECROSIS, ENHANCING), "ET": (ENHANCING,)}
REGION_NAMES = tuple(REGIONS)
BRAIN = "brain"

MAPS_PER_MASK = 3  # mask, edge, soft distance (aldm.data.control.control_maps)
STATISTICS_PER_MASK = 8  # aldm.data.control.STATISTICS
SEG_FILE = "seg"  # a sample's label map: seg.nii.gz (BraTS labels), as the BraTS downloads name it


def condition_masks(condition: str) -> tuple[str, ...]:
    """The binary masks ``condition`` conditions on, in channel order (``("WT",)`` for ``mask``)."""
    return {"mask": ("WT",), "regions": REGION_NAMES, "regions+brain": (*REGION_NAMES, BRAIN)}[
        parse_condition(condition)]


def control_channel_count(condition: str) -> int:
    """Channels of the control maps of ``condition`` (3 per mask: the U-Net's ``control_in``)."""
    return MAPS_PER_MASK * len(condition_masks(condition))


def statistic_count(condition: str) -> int:
    """FiLM statistics of ``condition`` (8 per mask: the U-Net's ``stats_dim``)."""
    return STATISTICS_PER_MASK * len(condition_masks(condition))


def needs_brain(condition: str) -> bool:
    """Whether ``condition`` takes the brain mask beside the label map."""
    return BRAIN in condition_masks(condition)


def parse_condition(value, where: str = "condition") -> str:
    """A known condition name (an AldmError naming ``where`` otherwise); None gives the default."""
    if value is None:
        return DEFAULT_CONDITION
    if value not in CONDITIONS:
        raise AldmError(f"{where}: unknown condition {value!r}; choose one of {', '.join(CONDITIONS)}")
    return value


def brats_label_map(values: np.ndarray, where: str) -> np.ndarray:
    """``values`` as a BraTS label map uint8 in {0, 1, 2, 4}; BraTS 2023's 3 (enhancing) is read as 4 when
    the map has no 4. Anything else is an AldmError naming ``where`` and the labels found."""
    if not np.isfinite(values).all() or (np.rint(values) != values).any():
        raise AldmError(f"{where}: a label map must hold whole numbers (BraTS labels 0, 1, 2, 4)")
    found = {int(v) for v in np.unique(values)}
    labels = values.astype(np.uint8)
    if 3 in found and 4 not in found:
        labels[labels == 3] = ENHANCING
        found = (found - {3}) | {ENHANCING}
    stray = sorted(found - {0, *BRATS_LABELS})
    if stray:
        raise AldmError(f"{where}: labels {stray} are not BraTS labels (0 background, 1 necrosis, 2 oedema, "
                        "4 enhancing; 3 is read as 4 when there is no 4)")
    return labels


def is_brats_label_map(values: np.ndarray) -> bool:
    """Whether ``values`` reads as a BraTS label map with more than one tumour label (so not a plain binary
    mask): what a mask source keeps as the sample's label map."""
    found = {int(v) for v in np.unique(values)} - {0}
    return len(found) > 1 and found <= {1, 2, 3, 4} and not {3, 4} <= found


def scaled_labels(labels: np.ndarray, factor: float) -> np.ndarray:
    """``labels`` (X, Y, Z, BraTS labels) scaled by ``factor`` about the tumour's centre of mass in voxel
    coordinates (nearest neighbour: labels stay whole; F > 1 grows, F < 1 shrinks the tumour)."""
    from scipy import ndimage

    centre = np.argwhere(labels > 0).mean(0)
    matrix = np.eye(3) / factor
    offset = centre - matrix @ centre
    return ndimage.affine_transform(labels, matrix, offset=offset, order=0, mode="constant", cval=0)
