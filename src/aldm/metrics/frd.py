"""FRD — the Fréchet Radiomics Distance (Osuala et al.; PyPI ``frd-score``), per modality, in 3D.

Radiomics features (PyRadiomics, the maintained ``pyradiomics-bhklab`` fork) of each real and
synthetic volume, optionally restricted to a mask (the brain by default), are normalised and
compared with the Fréchet distance. It needs no downloaded weights, so it is the distance that
always runs offline. Install with ``pip install "aldm[frd]"``.

Extracting the radiomics features is most of FRD's cost, and half of it is the real set's. An
experiment scores many synthetic sets against the same real volumes, so :func:`frd_scores` takes a
``reference`` store: the real set's raw features are extracted once and handed back to frd-score on
later calls (its joint normalisation still sees both sets, so the value is the same to the bit; tested).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile

import nibabel as nib
import numpy as np

from ..errors import AldmError


def _frd_module():
    try:
        from frd_score import frd
    except ImportError as exc:
        raise AldmError('FRD needs the frd-score and pyradiomics-bhklab packages: pip install "aldm[frd]"') from exc
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return frd


def _fingerprint(modality: str, volumes: list[np.ndarray], masks: list[np.ndarray] | None) -> str:
    """A key for the real set's features: the modality and the bytes of its volumes and masks."""
    digest = hashlib.sha1(modality.encode())
    for array in list(volumes) + list(masks or []):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _first_set_features_from(frd, store: dict, key: str):
    """While active, frd-score's per-set feature extraction returns ``store[key]`` for the first set it is
    asked for (the real one: ``compute_frd`` extracts its ``paths`` in order) when present, and files what
    it extracted there otherwise. frd-score's ``compute_features(files=...) -> (features, results,
    mask paths)`` is the hook (frd-score 1.x; the test in tests/test_eval_metrics.py fails if it moves)."""
    original = frd.compute_features
    calls = [0]

    def compute_features(*args, **kwargs):
        first = calls[0] == 0
        calls[0] += 1
        if first and key in store:
            features, results = store[key]
            return features.copy(), results, []
        out = original(*args, **kwargs)
        if first:
            store[key] = (np.array(out[0], copy=True), out[1])
        return out

    frd.compute_features = compute_features
    try:
        yield
    finally:
        frd.compute_features = original


def frd_scores(real: list[np.ndarray], synthetic: list[np.ndarray], real_masks: list[np.ndarray] | None = None,
               synthetic_masks: list[np.ndarray] | None = None, modalities=("t1", "t2", "flair"),
               modality_names=("t1", "t2", "flair"), reference: dict | None = None) -> dict:
    """FRD per modality between volume sets (C, S, S, S) in [-1, 1] whose channel c is ``modality_names[c]``
    (file stems, :mod:`aldm.modalities`); ``modalities``: the ones scored; masks (S, S, S) restrict the features.

    ``reference``: a dict kept by the caller across calls with the same real set; the real volumes'
    features are extracted on the first call and reused after (same values, about half the time).
    Returns {"frd_<modality>": value, "frd_mean": mean over the modalities}.
    """
    frd = _frd_module()
    if len(real) < 2 or len(synthetic) < 2:
        raise AldmError("FRD needs at least two real and two synthetic volumes")
    out = {}
    with tempfile.TemporaryDirectory(prefix="aldm-frd-") as tmp:
        def write(kind, i, array, dtype):
            path = os.path.join(tmp, f"{kind}{i:04d}.nii.gz")
            nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), np.eye(4)), path)
            return path

        masks = None
        if real_masks is not None and synthetic_masks is not None:
            masks = [[write("rm", i, m, np.uint8) for i, m in enumerate(real_masks)],
                     [write("sm", i, m, np.uint8) for i, m in enumerate(synthetic_masks)]]
        for modality in modalities:
            if modality not in modality_names:
                raise AldmError(f"FRD of {modality!r}: the volumes hold {', '.join(modality_names)}")
            c = list(modality_names).index(modality)
            paths = [[write(f"r{modality}", i, v[c], np.float32) for i, v in enumerate(real)],
                     [write(f"s{modality}", i, v[c], np.float32) for i, v in enumerate(synthetic)]]
            reuse = contextlib.nullcontext() if reference is None else \
                _first_set_features_from(frd, reference, _fingerprint(modality, [v[c] for v in real], real_masks))
            with reuse, contextlib.redirect_stdout(io.StringIO()):
                value = frd.compute_frd(paths, paths_masks=masks, num_workers=1)
            out[f"frd_{modality}"] = float(value)
    out["frd_mean"] = float(np.mean([out[f"frd_{m}"] for m in modalities]))
    return out
