"""What ``aldm evaluate`` measured of one synthetic set, typed: :class:`Fidelity` (with its
:class:`MaskAdherence` and per-region :class:`RegionAdherence`). It is written as ``metrics.json`` and as the
``fidelity`` of a Table 1 cell; :meth:`Fidelity.from_dict` reads both back, those of earlier releases included,
so tables and reports read results by attribute, never by picking keys out of nested dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# metrics.json keys of the FRD that are not one modality's score
_FRD_SUMMARY = ("frd_mean", "frd_unavailable")


@dataclass(frozen=True)
class RegionAdherence:
    """The segmenter's Dice of one BraTS region (WT, TC or ET) on the samples (``dice_mean`` / ``dice_std``),
    with shuffled label maps (the floor) and on the real volumes of the same subjects (the ceiling)."""

    dice_mean: float
    dice_std: float
    real_dice_mean: float
    real_dice_std: float
    shuffled_dice_mean: float | None = None


@dataclass(frozen=True)
class MaskAdherence:
    """Whether the samples follow their masks: the segmenter's whole-tumour Dice against each sample's own
    mask (``per_sample``: sample name -> Dice), the shuffled-mask floor, the real volumes' ceiling, and per
    BraTS region when the samples carry label maps (``regions``; WT alone otherwise)."""

    mask_dice_mean: float
    mask_dice_std: float
    real_dice_mean: float
    real_dice_std: float
    n_samples: int
    n_real: int
    segmenter: str
    shuffled_dice_mean: float | None = None
    per_sample: dict = field(default_factory=dict)
    regions: dict = field(default_factory=dict)  # name -> RegionAdherence

    def region_dice(self, name: str) -> float | None:
        """The samples' mean Dice of region ``name`` (None when it was not measured)."""
        region = self.regions.get(name)
        return None if region is None else region.dice_mean

    def to_dict(self) -> dict:
        """As ``metrics.json`` holds it."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "regions"}
        data["regions"] = {name: {f.name: getattr(r, f.name) for f in fields(r)} for name, r in self.regions.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> MaskAdherence:
        """From :meth:`to_dict` data."""
        known = {f.name for f in fields(cls)} - {"regions"}
        regions = {name: RegionAdherence(**{k: v for k, v in r.items() if k in _names(RegionAdherence)})
                   for name, r in (data.get("regions") or {}).items()}
        return cls(regions=regions, **{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Fidelity:
    """The figures of one synthetic set against the real volumes of its mask subjects
    (:func:`aldm.evaluate.evaluate`).

    ``ssim_*_patient_mean``: SSIM (2D slices, the paper; 3D) averaged per patient; ``ms_ssim_diversity_*``:
    MS-SSIM among the synthetic and among the real volumes; ``memorisation``: nearest-neighbour figures
    against the K training volumes (:func:`aldm.metrics.similarity.memorisation`); ``sharpness``: per modality
    and "mean", synthetic over real; ``spectrum``: the radially averaged power spectra; ``region_contrast``:
    :func:`aldm.metrics.region_contrast.contrast_check` of labelled samples; ``frd``: FRD per modality
    (file stem -> value) with ``frd_mean``; FID per patient mean and pooled; ``*_unavailable``: why a metric
    was skipped. ``extra``: keys of a file this version does not know, kept as they were."""

    n_samples: int
    n_patients: int
    ssim_2d_patient_mean: float
    ssim_3d_patient_mean: float
    excluded_few_shot_samples: int = 0
    ms_ssim_diversity_synthetic: float | None = None
    ms_ssim_diversity_real: float | None = None
    memorisation: dict | None = None
    sharpness: dict | None = None
    spectrum: dict | None = None
    mask_adherence: MaskAdherence | None = None
    region_contrast: dict | None = None
    frd: dict = field(default_factory=dict)
    frd_mean: float | None = None
    frd_unavailable: str | None = None
    fid_patient_mean: float | None = None
    fid_pooled: float | None = None
    fid_unavailable: str | None = None
    extra: dict = field(default_factory=dict)

    def lowest_sharpness(self) -> float | None:
        """The lowest per-modality sharpness ratio (None when not measured)."""
        ratios = [v for k, v in (self.sharpness or {}).items() if k != "mean"]
        return min(ratios) if ratios else None

    def near_copy_percent(self) -> float | None:
        """The share of samples nearer a training volume than any held-out one is, in % (None: not measured)."""
        return None if not self.memorisation else 100.0 * self.memorisation["near_copy_fraction"]

    def held_out_copy_percent(self) -> float | None:
        """The same share for held-out real volumes, in % (None when not measured)."""
        value = (self.memorisation or {}).get("held_out_copy_fraction")
        return None if value is None else 100.0 * value

    def contrast_signs(self) -> str | None:
        """"right / scored" of the region-contrast check (None when no contrast was scored)."""
        contrast = self.region_contrast or {}
        return f"{contrast['right_signs']}/{contrast['scored']}" if contrast.get("scored") else None

    def to_dict(self) -> dict:
        """``metrics.json``: one flat object, FRD as ``frd_<modality>`` keys (as every release has written it)."""
        data = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("frd", "extra") or value is None:
                continue
            data[f.name] = value.to_dict() if isinstance(value, MaskAdherence) else value
        data.update({f"frd_{stem}": value for stem, value in self.frd.items()})
        if self.fid_unavailable is not None:
            data["fid"] = None  # files before typed results said "fid": null beside the reason
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Fidelity:
        """From ``metrics.json`` or a Table 1 cell's ``fidelity`` (earlier releases' included)."""
        known = _names(cls) - {"frd", "extra", "mask_adherence"}
        values = {k: v for k, v in data.items() if k in known}
        frd = {k[len("frd_"):]: v for k, v in data.items() if k.startswith("frd_") and k not in _FRD_SUMMARY}
        extra = {k: v for k, v in data.items() if k not in known and k != "mask_adherence"
                 and not k.startswith("frd_") and not (k == "fid" and v is None)}
        adherence = data.get("mask_adherence")
        return cls(frd=frd, extra=extra, mask_adherence=MaskAdherence.from_dict(adherence) if adherence else None,
                   **values)


def _names(kind) -> set:
    return {f.name for f in fields(kind)}
