"""The vocabulary of image channels: which MR modalities aldm knows and the file names they are written under.

Which channels a given volume holds is data, not a constant: a prepared cache records its modalities
(``prepare.json``), a run records those of the cache it was trained on (``run.json``) and a sample
records its own (``sample.json``); the VAE, the writers, the evaluation and the web UI read them from
there (:mod:`aldm.artifacts`). A model-space volume is (C, S, S, S), channel c being ``modalities[c]``.
The default is the paper's three, T1, T2, FLAIR; files are ``t1.nii.gz``, ``t1c.nii.gz``,
``t2.nii.gz``, ``flair.nii.gz`` and ``mask.nii.gz``.
"""

from __future__ import annotations

from .errors import AldmError

KNOWN_MODALITIES = ("T1", "T1c", "T2", "FLAIR")
DEFAULT_MODALITIES = ("T1", "T2", "FLAIR")  # the paper's (§4.1); what a cache or run without a record holds
MASK_FILE = "mask"


def file_stem(modality: str) -> str:
    """The file name stem of ``modality`` (``T1c`` -> ``t1c``)."""
    return modality.lower()


def file_stems(modalities) -> tuple[str, ...]:
    """The file name stems of ``modalities``, in order."""
    return tuple(file_stem(m) for m in modalities)


def volume_files(modalities) -> tuple[str, ...]:
    """Every volume a sample of ``modalities`` has: one file per channel, then the mask."""
    return (*file_stems(modalities), MASK_FILE)


def parse_modalities(value, where: str = "modalities") -> tuple[str, ...]:
    """A validated channel list from a list or a comma-separated string (case-insensitive names of
    :data:`KNOWN_MODALITIES`, no repeats); an AldmError naming ``where`` otherwise. None gives the default."""
    if value is None:
        return DEFAULT_MODALITIES
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise AldmError(f"{where}: expected a non-empty list of modalities, got {value!r}")
    by_lower = {m.lower(): m for m in KNOWN_MODALITIES}
    names = []
    for item in items:
        name = by_lower.get(str(item).strip().lower()) if isinstance(item, str) else None
        if name is None:
            raise AldmError(f"{where}: unknown modality {item!r}; choose from {', '.join(KNOWN_MODALITIES)}")
        if name in names:
            raise AldmError(f"{where}: modality {name} given twice")
        names.append(name)
    return tuple(names)
