"""The embedded phantom generator: realistic contrasts, domain differences, biology, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from aldm.data.phantom import synthesize_subject
from aldm.data.phenotype import SOURCE, TARGET, Phenotype, sample_phenotype
from aldm.data.template import NATIVE_SHAPE


def _pheno(domain, **kw):
    base = dict(domain=domain, grade=4, idh_mutant=False, codeleted=False, radius_mm=20.0, oedema_factor=1.8,
                necrosis_fraction=0.6, enhancing=True, mismatch=False, frontal=False, mass_effect=0.25)
    base.update(kw)
    return Phenotype(**base)


@pytest.fixture(scope="module")
def gbm():
    return synthesize_subject(_pheno(SOURCE), seed=1)


@pytest.fixture(scope="module")
def gbm_target():
    return synthesize_subject(_pheno(TARGET), seed=1)


@pytest.fixture(scope="module")
def mutant():
    return synthesize_subject(_pheno(TARGET, grade=2, idh_mutant=True, radius_mm=16.0, oedema_factor=1.2,
                                     necrosis_fraction=0.0, enhancing=False, mismatch=True, frontal=True,
                                     mass_effect=0.08), seed=2)


def _tissue_mean(subject, modality, tissue):
    healthy = (subject.tissue == tissue) & (subject.segmentation == 0)
    return float(subject.images[modality][healthy].mean())


def test_grid_and_background(gbm):
    for image in gbm.images.values():
        assert image.shape == NATIVE_SHAPE
        assert np.all(image[gbm.tissue == 0] == 0)  # skull-stripped: background exactly zero
        assert np.isfinite(image).all()
    brain_voxels = int((gbm.tissue > 0).sum())
    assert 1.0e6 < brain_voxels < 1.9e6  # an adult brain is ~1.1-1.6 litres


@pytest.mark.parametrize("domain_fixture", ["gbm", "gbm_target"])
def test_tissue_contrasts(domain_fixture, request):
    s = request.getfixturevalue(domain_fixture)
    csf, gm, wm = 1, 2, 3
    assert _tissue_mean(s, "T1", csf) < _tissue_mean(s, "T1", gm) < _tissue_mean(s, "T1", wm)
    assert _tissue_mean(s, "T2", csf) > _tissue_mean(s, "T2", gm) > _tissue_mean(s, "T2", wm)
    assert _tissue_mean(s, "FLAIR", csf) < _tissue_mean(s, "FLAIR", wm)


def test_source_and_target_scanners_differ(gbm, gbm_target):
    # Same anatomy and tumour (same seed), different scanner: contrast, noise and scale all differ.
    ratio_src = _tissue_mean(gbm, "T1", 3) / _tissue_mean(gbm, "T1", 2)
    ratio_tgt = _tissue_mean(gbm_target, "T1", 3) / _tissue_mean(gbm_target, "T1", 2)
    assert ratio_tgt > ratio_src * 1.1
    wm = (gbm.tissue == 3) & (gbm.segmentation == 0)
    # relative noise in white matter, via the local difference between neighbouring voxels in x
    def rel_noise(s):
        img = s.images["T1"]
        d = (img[1:] - img[:-1])[wm[1:] & wm[:-1]]
        return float(d.std() / img[wm].mean())
    assert rel_noise(gbm) > 1.25 * rel_noise(gbm_target)


def test_gbm_is_necrotic_ring_enhancing_with_oedema(gbm):
    seg = gbm.segmentation
    assert set(np.unique(seg)) == {0, 1, 2, 4}
    assert np.all(gbm.tissue[seg > 0] > 0)  # the tumour lies inside the brain
    t1c, t1 = gbm.images["T1c"], gbm.images["T1"]
    assert t1c[seg == 4].mean() > 1.4 * t1[seg == 4].mean()  # enhancement
    assert t1c[seg == 1].mean() < t1c[seg == 4].mean()  # necrotic core dark inside the ring
    assert gbm.images["FLAIR"][seg == 2].mean() > gbm.images["FLAIR"][(gbm.tissue == 3) & (seg == 0)].mean()
    assert (seg == 2).sum() > (seg == 4).sum()  # wide oedema


def test_idh_mutant_is_non_enhancing_with_mismatch(mutant):
    seg = mutant.segmentation
    assert 4 not in np.unique(seg)
    core = seg == 1
    from scipy import ndimage

    centre = ndimage.binary_erosion(core, iterations=3)
    rim = core & ~centre
    assert centre.sum() > 50
    flair, t2 = mutant.images["FLAIR"], mutant.images["T2"]
    wm = (mutant.tissue == 3) & (seg == 0)
    assert t2[centre].mean() > 1.5 * t2[wm].mean()  # T2-bright core
    assert flair[centre].mean() < 0.85 * flair[rim].mean()  # FLAIR-dark centre, bright rim: mismatch sign


def test_deterministic_for_seed():
    p = _pheno(TARGET, radius_mm=12.0)
    a, b = synthesize_subject(p, seed=5), synthesize_subject(p, seed=5)
    c = synthesize_subject(p, seed=6)
    assert all(np.array_equal(a.images[m], b.images[m]) for m in a.images)
    assert np.array_equal(a.segmentation, b.segmentation)
    assert not np.array_equal(a.images["T1"], c.images["T1"])


def test_phenotype_frequencies_follow_the_cohorts():
    rng = np.random.default_rng(0)
    target = [sample_phenotype(TARGET, rng) for _ in range(3000)]
    grades = np.array([p.grade for p in target])
    mutant = np.array([p.idh_mutant for p in target])
    assert abs((grades == 4).mean() - 0.80) < 0.04
    assert 0.16 < mutant.mean() < 0.27  # ~20 % IDH-mutant
    assert mutant[grades == 2].mean() > 0.7 and mutant[grades == 4].mean() < 0.15
    frontal_mut = np.mean([p.frontal for p in target if p.idh_mutant])
    assert frontal_mut > 0.65
    size_mut = np.mean([p.radius_mm for p in target if p.idh_mutant])
    size_gbm = np.mean([p.radius_mm for p in target if not p.idh_mutant and p.grade == 4])
    assert size_mut < size_gbm
    source = [sample_phenotype(SOURCE, rng) for _ in range(200)]
    assert all(p.grade == 4 and not p.idh_mutant and p.enhancing for p in source)


def test_a_healthy_twin_is_the_subject_without_its_tumour():
    """The twin shares the subject's anatomy, scanner and noise: identical away from the tumour, different on it;
    a healthy subject has no tumour at all."""
    import numpy as np
    from scipy import ndimage

    from aldm.data.phantom import synthesize_subject
    from aldm.data.phenotype import TARGET, sample_phenotype

    pheno = sample_phenotype(TARGET, np.random.default_rng(3))
    subject = synthesize_subject(pheno, 11, healthy_twin=True, resized_twin=0.7)
    tumour = subject.segmentation > 0
    near = ndimage.distance_transform_edt(~tumour) <= 6  # the soft compartments and slice blur reach ~5 voxels
    # the resized twin: its tumour shrunk about the same centre (0.7^3 of the voxels per label), inside the old one
    shrunk = subject.resized_segmentation
    for label in np.unique(subject.segmentation[tumour]):
        assert abs((shrunk == label).sum() / (subject.segmentation == label).sum() - 0.7 ** 3) < 0.03, label
    assert np.allclose(np.argwhere(shrunk > 0).mean(0), np.argwhere(tumour).mean(0), atol=1.0)
    lost = tumour & (shrunk == 0)  # tumour in the subject, normal tissue in the twin
    for modality, image in subject.images.items():
        for twin in (subject.healthy[modality], subject.resized[modality]):
            assert np.array_equal(image[~near], twin[~near]), modality
        assert np.abs(image[tumour] - subject.healthy[modality][tumour]).mean() > 0.05 * image[tumour].mean()
        assert np.abs(image[lost] - subject.resized[modality][lost]).mean() > 0.05 * image[lost].mean()
    healthy = synthesize_subject(pheno, 11, tumour=False)
    assert not healthy.segmentation.any() and healthy.healthy is None


def test_synth_writes_the_twins_and_healthy_subjects_it_is_asked_for(tmp_path, capsys):
    """aldm data synth --healthy-twins --resized-twins F --healthy N: each extra in aldm's folder layout, the resized
    twins with their label map and F on record (what aldm experiment edit --resized-twins reads)."""
    import json

    import nibabel as nib

    from aldm.cli import main

    out = tmp_path / "phantom"
    assert main(["data", "synth", str(out), "--n-source", "0", "--n-target", "1", "--healthy-twins",
                 "--resized-twins", "0.7", "--healthy", "1", "--quiet"]) == 0
    assert "resized twins (tumour x0.7)" in capsys.readouterr().out
    (study,) = [d.name for d in (out / "resized-twins").iterdir() if d.is_dir()]
    assert json.loads((out / "resized-twins" / "resize.json").read_text()) == {"factor": 0.7}
    assert sorted(f.name for f in (out / "resized-twins" / study).iterdir()) == [
        "flair.nii.gz", "seg.nii.gz", "t1.nii.gz", "t1c.nii.gz", "t2.nii.gz"]
    assert "seg.nii.gz" not in {f.name for f in (out / "healthy-twins" / study).iterdir()}
    assert (out / "healthy" / "HEALTHY-0001" / "flair.nii.gz").is_file()
    original = nib.load(next(out.glob(f"UCSF-PDGM/*/{study}_nifti/*tumor_segmentation.nii.gz"))).get_fdata() > 0
    shrunk = nib.load(out / "resized-twins" / study / "seg.nii.gz").get_fdata() > 0
    assert 0.3 < shrunk.sum() / original.sum() < 0.39 and (shrunk & ~original).sum() <= 0.02 * shrunk.sum()
