"""Evaluation metrics against independent references on known inputs, and the evaluate command."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from aldm.cli import main
from aldm.diffusion.settings import GenerationSettings
from aldm.errors import AldmError
from aldm.evaluate import EvaluationSettings, evaluate
from aldm.fidelity import Fidelity
from aldm.generate import GenerationRequest, GenerationRuntime, generate
from aldm.metrics.fid import fid_scores
from aldm.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_features
from aldm.metrics.inception import FIDInceptionV3, load_fid_inception
from aldm.metrics.similarity import memorisation, ms_ssim_diversity, ssim_2d_slices, ssim_3d


def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)


def test_frechet_distance_full_covariance_against_eigendecomposition():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.5
    (m1, s1), (m2, s2) = feature_statistics(a), feature_statistics(b)
    # independent route: Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2) via symmetric eigendecompositions
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None)))
    assert frechet_distance_features(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_fid_definitions_patient_mean_and_pooled():
    rng = np.random.default_rng(1)
    real = {"p1": rng.normal(size=(50, 4)), "p2": rng.normal(size=(50, 4)) + 1}
    synth = {"p1": rng.normal(size=(50, 4)) + 0.2, "p2": rng.normal(size=(50, 4)) + 1.2}
    out = fid_scores(real, synth)
    assert out["fid_patient_mean"] == pytest.approx(np.mean([frechet_distance_features(real[p], synth[p])
                                                             for p in ("p1", "p2")]))
    assert out["fid_pooled"] == pytest.approx(frechet_distance_features(np.concatenate([real["p1"], real["p2"]]),
                                                                        np.concatenate([synth["p1"], synth["p2"]])))


def test_ssim_2d_matches_scikit_image():
    rng = np.random.default_rng(2)
    real = np.clip(rng.normal(0, 0.4, size=(3, 48, 48, 4)), -1, 1).astype(np.float32)
    synth = np.clip(real + rng.normal(0, 0.2, size=real.shape), -1, 1).astype(np.float32)
    ours = ssim_2d_slices(real, synth)
    ref = np.mean([structural_similarity(real[c, :, :, z], synth[c, :, :, z], data_range=2.0, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False)
                   for c in range(3) for z in range(4)])
    assert ours == pytest.approx(ref, abs=0.02)
    assert ssim_2d_slices(real, real) == pytest.approx(1.0, abs=1e-5)
    assert ssim_3d(real[..., :1].repeat(16, axis=3), real[..., :1].repeat(16, axis=3)) == pytest.approx(1.0, abs=1e-5)


def test_ms_ssim_diversity_orders_sets():
    rng = np.random.default_rng(3)
    base = np.clip(rng.normal(0, 0.3, size=(3, 48, 48, 48)), -1, 1).astype(np.float32)
    same = [base, base.copy(), base.copy()]
    varied = [np.clip(base + rng.normal(0, 0.5, size=base.shape), -1, 1).astype(np.float32) for _ in range(3)]
    assert ms_ssim_diversity(same) == pytest.approx(1.0, abs=1e-4)
    assert ms_ssim_diversity(varied) < 0.9


def test_memorisation_flags_copies():
    rng = np.random.default_rng(4)
    train = [rng.normal(size=(3, 8, 8, 8)) for _ in range(3)]
    held = [rng.normal(size=(3, 8, 8, 8)) for _ in range(3)]
    brain = np.ones((8, 8, 8), bool)
    copies = memorisation([t + 0.01 * rng.normal(size=t.shape) for t in train], train, held, brain)
    assert copies["near_copy_fraction"] == 1.0 and copies["closer_to_training_fraction"] == 1.0
    fresh = memorisation([rng.normal(size=(3, 8, 8, 8)) for _ in range(4)], train, held, brain)
    assert fresh["near_copy_fraction"] == 0.0


def test_held_out_criterion_flags_copies_not_draws_from_the_population():
    """Volumes that share an anatomy (as patients do): a sample closer to a training volume than any held-out
    patient comes is a copy; a fresh draw from the same population is not (issue 24)."""
    rng = np.random.default_rng(5)
    anatomy = rng.normal(size=(3, 12, 12, 12))

    def patient():
        return anatomy + 0.6 * rng.normal(size=anatomy.shape)

    train, held = [patient() for _ in range(4)], [patient() for _ in range(12)]
    brain = np.ones((12, 12, 12), bool)
    copies = memorisation([t + 0.2 * rng.normal(size=t.shape) for t in train], train, held, brain)
    assert copies["held_out_copy_fraction"] == 1.0 and copies["below_held_out_median_fraction"] == 1.0
    draws = memorisation([patient() for _ in range(40)], train, held, brain)
    assert draws["held_out_copy_fraction"] <= 0.1
    assert 0.25 <= draws["below_held_out_median_fraction"] <= 0.75
    assert draws["held_out_nn_training"]["min"] <= draws["held_out_nn_training"]["median"]


def test_fid_inception_architecture_and_weight_loading(tmp_path):
    net = FIDInceptionV3().eval()
    # torchvision's inception_v3 has 27,161,264 parameters; minus its auxiliary head (3,326,696) plus the 8
    # extra classes of the FID graph's 1008-way classifier (8 x 2049) gives 23,850,960
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 2048)
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    loaded = load_fid_inception(str(path))
    assert torch.equal(loaded.Mixed_7c.branch_pool.conv.weight, net.Mixed_7c.branch_pool.conv.weight)
    with pytest.raises(AldmError, match="FID Inception weights not found; download https://"):
        load_fid_inception(str(tmp_path / "missing.pth"))
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(AldmError, match="not the FID Inception weights"):
        load_fid_inception(str(tmp_path / "bad.pth"))


@pytest.mark.slow
def test_evaluate_scores_held_out_pairs_without_inception(tiny_runs, prepared_cache, tmp_path, capsys):
    generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "gen"), 2, settings=GenerationSettings(steps=2),
                               runtime=GenerationRuntime(progress=False)))
    # one more sample whose mask is a few-shot training subject: must not be scored
    split = json.load(open(os.path.join(tiny_runs["fewshot"], "split.json")))
    generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "gen_train"), 1,
                               settings=GenerationSettings(steps=2), subjects=split["k_shot"][:1],
                               masks=f"cache:{prepared_cache}", runtime=GenerationRuntime(progress=False)))
    sample = next(n for n in os.listdir(tmp_path / "gen_train") if n.startswith("sample-"))
    os.replace(tmp_path / "gen_train" / sample, tmp_path / "gen" / "extra")
    from aldm.artifacts.samples import SampleRecord, SampleSet

    samples = SampleSet(str(tmp_path / "gen"))
    extra = SampleRecord.from_dict({**json.load(open(tmp_path / "gen" / "extra" / "sample.json")), "sample": "extra"},
                                   "extra")
    samples.write_index(samples.records() + [extra])
    result = evaluate(str(prepared_cache), str(tmp_path / "gen"), str(tmp_path / "ev"),
                      EvaluationSettings(inception=str(tmp_path / "none.pth")))
    assert result.excluded_few_shot_samples == 1 and result.n_samples == 2
    assert -1 <= result.ssim_2d_patient_mean <= 1 and result.fid_patient_mean is None
    assert "FID Inception weights not found" in result.fid_unavailable
    assert 0 <= result.memorisation["near_copy_fraction"] <= 1
    assert (tmp_path / "ev" / "per_patient.csv").read_text().count("\n") == 1 + result.n_patients
    # metrics.json is the result as every release wrote it, and reads back as the same result
    written = json.load(open(tmp_path / "ev" / "metrics.json"))
    assert written["fid"] is None and "memorisation" in written and "frd" not in written
    assert Fidelity.from_dict(written) == result
    assert main(["evaluate", "--real", str(prepared_cache), "--synthetic", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "no samples.csv" in capsys.readouterr().err


def _frd_cube(rng, shift: float, noise: float) -> np.ndarray:
    """A (3, 24, 24, 24) volume: background -1 around a 16^3 'brain' of Gaussian texture (mean shift)."""
    v = np.full((3, 24, 24, 24), -1.0, np.float32)
    v[:, 4:20, 4:20, 4:20] = np.clip(shift + rng.normal(0, noise, size=(3, 16, 16, 16)), -1, 1)
    return v


def _frd_brain() -> np.ndarray:
    brain = np.zeros((24, 24, 24), np.uint8)
    brain[4:20, 4:20, 4:20] = 1
    return brain


@pytest.mark.slow
def test_frd_orders_distributions():
    from aldm.metrics.frd import frd_scores

    rng = np.random.default_rng(5)
    real = [_frd_cube(rng, 0.0, 0.2) for _ in range(6)]
    near = [_frd_cube(rng, 0.0, 0.2) for _ in range(6)]
    far = [_frd_cube(rng, 0.5, 0.05) for _ in range(6)]
    masks = [_frd_brain()] * 6
    close = frd_scores(real, near, masks, masks, modalities=("flair",))["frd_flair"]
    distant = frd_scores(real, far, masks, masks, modalities=("flair",))["frd_flair"]
    assert 0 <= close < distant


@pytest.mark.slow
def test_frd_reuses_the_real_features_and_gives_the_same_value(monkeypatch):
    """With a reference store, the real set's radiomics are extracted once for several synthetic sets and
    each FRD equals the one computed from scratch (frd-score's joint normalisation still sees both sets)."""
    from frd_score import frd as frd_module

    from aldm.metrics.frd import frd_scores

    rng = np.random.default_rng(6)
    real, masks = [_frd_cube(rng, 0.0, 0.2) for _ in range(5)], [_frd_brain()] * 5
    synthetic_sets = [[_frd_cube(rng, 0.0, 0.2) for _ in range(5)], [_frd_cube(rng, 0.4, 0.1) for _ in range(5)]]
    fresh = [frd_scores(real, s, masks, masks, modalities=("flair",))["frd_flair"] for s in synthetic_sets]
    extracted = []
    original = frd_module.compute_features
    monkeypatch.setattr(frd_module, "compute_features", lambda *a, **k: extracted.append(len(k["files"])) or
                        original(*a, **k))
    store: dict = {}
    reused = [frd_scores(real, s, masks, masks, modalities=("flair",), reference=store)["frd_flair"]
              for s in synthetic_sets]
    assert reused == fresh and fresh[0] < fresh[1]
    assert extracted == [5, 5, 5]  # real once, then each synthetic set
    assert frd_module.compute_features.__name__ == "<lambda>"  # the hook is put back after each call
