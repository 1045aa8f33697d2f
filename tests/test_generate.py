"""Generation: held-out masks by default, NIfTI in model and native space, seeds, resumption, mask sources."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from aldm.artifacts.cache import PreparedCache
from aldm.cli import main
from aldm.data.masks import relocate_mask
from aldm.diffusion.settings import GenerationSettings
from aldm.errors import AldmError
from aldm.generate import GenerationRequest, GenerationRuntime, generate
from aldm.pipeline import ALDMPipeline

from .conftest import write_volume

pytestmark = pytest.mark.slow  # trains several stages or runs subprocesses; see pyproject.toml


def test_default_masks_are_the_held_out_subjects(tiny_runs, tmp_path):
    split = json.load(open(os.path.join(tiny_runs["fewshot"], "split.json")))
    rows = generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "gen"), 3,
                                      settings=GenerationSettings(steps=4), runtime=GenerationRuntime(progress=False)))
    used = {r.mask_subject for r in rows}
    assert used == set(split["test"]) and not used & set(split["k_shot"])
    sample = tmp_path / "gen" / rows[0].sample
    model_t1 = nib.load(sample / "model" / "t1.nii.gz")
    assert model_t1.shape == (32, 32, 32)
    native_t1, native_mask = nib.load(sample / "native" / "t1.nii.gz"), nib.load(sample / "native" / "mask.nii.gz")
    manifest = {r["subject"]: r for r in PreparedCache(json.load(open(os.path.join(tiny_runs["fewshot"],
                                                                                     "run.json")))["data"]).rows()}
    subject = manifest[rows[0].mask_subject]
    assert native_t1.shape == tuple(json.loads(subject["native_shape"])) == (240, 240, 155)
    assert np.allclose(native_t1.affine, np.asarray(json.loads(subject["native_affine"])), atol=1e-4)
    assert np.asarray(native_mask.dataobj).sum() > 0
    assert (tmp_path / "gen" / "samples.csv").read_text().count("\n") == 4


def test_same_seed_same_volume_and_resumption(tiny_runs, tmp_path):
    # fp32: the batch-1 regeneration below agrees to fp32 rounding (under bf16, to bf16 rounding)
    five, six = (GenerationSettings(steps=3, seed=seed, precision="fp32") for seed in (5, 6))
    a = generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "a"), 2, settings=five,
                                   runtime=GenerationRuntime(progress=False)))
    generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "b"), 2, settings=five,
                               runtime=GenerationRuntime(progress=False)))
    generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "c"), 1, settings=six,
                               runtime=GenerationRuntime(progress=False)))
    vol = lambda d, name: np.asarray(nib.load(tmp_path / d / name / "model" / "flair.nii.gz").dataobj)  # noqa: E731
    assert np.array_equal(vol("a", a[1].sample), vol("b", a[1].sample))
    first_c = os.listdir(tmp_path / "c")
    c_name = [n for n in first_c if n.startswith("sample-0000")][0]
    assert not np.array_equal(vol("a", a[0].sample), vol("c", c_name))
    # an interrupted run: sample 1 missing, a half-written temp folder left behind
    import shutil

    keep = tmp_path / "a" / a[0].sample / "sample.json"
    stamp = os.path.getmtime(keep)
    shutil.rmtree(tmp_path / "a" / a[1].sample)
    os.makedirs(tmp_path / "a" / f".tmp-{a[1].sample}" / "model")
    rows = generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "a"), 2, settings=five,
                                      runtime=GenerationRuntime(progress=False)))
    assert len(rows) == 2 and os.path.getmtime(keep) == stamp and rows[1].precision == "fp32"
    # regenerated alone (batch 1) instead of beside sample 0: equal up to float rounding of batched convs
    assert np.allclose(vol("a", a[1].sample), vol("b", a[1].sample), atol=1e-4)
    assert not [n for n in os.listdir(tmp_path / "a") if n.startswith(".tmp")]


def test_relocate_mask_stays_inside_the_host_brain():
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32, 32), np.uint8)
    mask[2:7, 2:7, 2:7] = 1
    brain = np.zeros((32, 32, 32), np.uint8)
    brain[10:28, 8:26, 6:24] = 1
    moved = relocate_mask(mask, brain, rng)
    assert moved.sum() == mask.sum()
    assert np.all(brain[moved > 0] == 1)
    assert not np.array_equal(moved, mask)


def test_relocated_and_folder_masks(tiny_runs, prepared_cache, tmp_path):
    rows = generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "r"), 2,
                                      settings=GenerationSettings(steps=2), masks=f"relocated:{prepared_cache}",
                                      runtime=GenerationRuntime(progress=False)))
    assert all("-in-" in r.mask_subject and r.mask_source.startswith("relocated:") for r in rows)
    mask = np.zeros((40, 44, 30), np.uint8)
    mask[10:20, 12:22, 8:16] = 1
    write_volume(tmp_path / "masks" / "lesion.nii.gz", mask, dtype=np.uint8)
    rows = generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "f"), 1,
                                      settings=GenerationSettings(steps=2), masks=f"folder:{tmp_path / 'masks'}",
                                      runtime=GenerationRuntime(progress=False)))
    native = nib.load(tmp_path / "f" / rows[0].sample / "native" / "mask.nii.gz")
    assert native.shape == (40, 44, 30)
    overlap = (np.asarray(native.dataobj) > 0) & (mask > 0)
    assert overlap.sum() > 0.8 * mask.sum()


def test_appendix_masks_order_and_determinism(prepared_cache):
    from aldm.data.masks import appendix_masks

    cache = str(prepared_cache)
    subjects = ["UCSF-PDGM-0006", "UCSF-PDGM-0009", "UCSF-PDGM-0010"]
    items = appendix_masks(cache, 8, seed=3, subjects=subjects)
    assert [i.source for i in items[:3]] == [f"cache:{s}" for s in subjects]
    # sample i >= G: mask i mod G inside subject (i mod G + i // G) mod G's brain
    assert items[3].source == f"relocated:{subjects[0]}->{subjects[1]}"
    assert items[7].source == f"relocated:{subjects[1]}->{subjects[0]}"
    assert all(i.context_subject in subjects for i in items)
    again = appendix_masks(cache, 5, seed=3, subjects=subjects)  # each item depends on (seed, i) only
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(items[:5], again))
    assert items[3].mask.sum() == items[0].mask.sum() and not np.array_equal(items[3].mask, items[0].mask)


def test_pipeline_api_and_errors(tiny_runs):
    pipe = ALDMPipeline.from_pretrained(tiny_runs["fewshot"], device="cpu", precision="fp32")
    masks = torch.zeros(2, 1, 32, 32, 32)
    masks[:, :, 8:16, 8:16, 8:16] = 1
    three = GenerationSettings(guidance=3.0, steps=3, sampler="dpmpp2m")
    out = pipe(masks, three, generator=[0, 1])
    assert out["image"].shape == (2, 3, 32, 32, 32) and out["image"].abs().max() <= 1.0
    split = ALDMPipeline.from_pretrained(tiny_runs["fewshot"], device="cpu", decode_slab=5, precision="fp32")
    again = split(masks, three, generator=[0, 1])
    torch.testing.assert_close(again["image"], out["image"], rtol=1e-5, atol=1e-5)
    # bf16 autocast (the default where the CPU or GPU computes bf16 natively): the same volumes to bf16 rounding
    half = ALDMPipeline.from_pretrained(tiny_runs["fewshot"], device="cpu", precision="bf16")
    low = half(masks, three, generator=[0, 1])["image"]
    assert half.precision == "bf16" and not torch.equal(low, out["image"])
    assert (low - out["image"]).abs().mean() < 0.02 * out["image"].abs().mean() + 1e-3
    with pytest.raises(AldmError, match="decode slab must be 0"):
        ALDMPipeline.from_pretrained(tiny_runs["fewshot"], device="cpu", decode_slab=-1)
    with pytest.raises(AldmError, match="precision must be one of auto, fp32, bf16"):
        ALDMPipeline.from_pretrained(tiny_runs["fewshot"], device="cpu", precision="fp16")
    with pytest.raises(AldmError, match="ancestral DDPM runs all T = 100 steps"):
        pipe(masks, GenerationSettings(sampler="ddpm", steps=50))
    with pytest.raises(AldmError, match=r"masks must be \(B, 1, 32, 32, 32\)"):
        pipe(torch.zeros(1, 1, 16, 16, 16))
    with pytest.raises(AldmError, match="finite"):
        pipe(masks, GenerationSettings(guidance=float("nan")))
    with pytest.raises(AldmError, match="a vae run cannot generate"):
        ALDMPipeline.from_pretrained(tiny_runs["vae"])


def test_four_stages_and_generate_from_the_cli(prepared_cache, tmp_path, capsys):
    c, r = str(prepared_cache), tmp_path
    assert main(["train", "vae", "--data", c, "--out", str(r / "vae"), "--profile", "tiny", "--steps", "2",
                 "--quiet"]) == 0
    assert main(["train", "ldm", "--data", c, "--out", str(r / "ldm"), "--vae", str(r / "vae"), "--steps", "2",
                 "--quiet"]) == 0
    assert main(["train", "ldm", "--data", c, "--out", str(r / "fs"), "--init", str(r / "ldm"), "--k", "2",
                 "--n-test", "1", "--steps", "2", "--quiet"]) == 0
    assert main(["generate", "--model", str(r / "fs"), "--out", str(r / "gen"), "--n", "1", "--steps", "2",
                 "--sampler", "ddim", "--decode-slab", "3", "--quiet"]) == 0
    assert "1 samples in" in capsys.readouterr().out
    assert main(["train", "ldm", "--data", c, "--out", str(r / "fs2"), "--init", str(r / "ldm"), "--k", "50",
                 "--quiet"]) == 2
    assert "--k 50 exceeds the 5 target patients" in capsys.readouterr().err


@pytest.mark.slow
def test_a_rerun_continues_only_the_same_request(tiny_runs, prepared_cache, tmp_path, capsys):
    from aldm.cli import main

    out = str(tmp_path / "gen")
    test = json.load(open(os.path.join(tiny_runs["fewshot"], "split.json")))["test"]
    request = {"--model": tiny_runs["fewshot"], "--out": out, "--n": "1", "--steps": "2", "--subjects": test[0],
               "--masks": f"cache:{prepared_cache}"}

    def argv(**change):
        asked = {**request, **{f"--{k}": v for k, v in change.items()}}
        return ["generate", *[x for kv in asked.items() for x in kv if x is not True], "--quiet"]

    assert main(argv()) == 0
    first = sorted(n for n in os.listdir(out) if n.startswith("sample-"))[0]
    stamp = os.path.getmtime(os.path.join(out, first, "sample.json"))
    for change, words in (({"seed": "1"}, "seed 0 here, 1 asked"), ({"guidance": "2"}, "guidance 3.0 here, 2.0 asked"),
                          ({"steps": "3"}, "steps 2 here, 3 asked"), ({"sampler": "ddim"}, "sampler 'dpmpp2m' here"),
                          ({"model": tiny_runs["ldm"]}, "model_hash"),
                          ({"subjects": test[1]}, "made by another request")):
        capsys.readouterr()
        assert main(argv(**change)) == 2, change
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "--overwrite" in err[0], (change, err)
    assert os.path.getmtime(os.path.join(out, first, "sample.json")) == stamp  # nothing was touched
    assert main(argv()) == 0 and os.path.getmtime(os.path.join(out, first, "sample.json")) == stamp  # same: kept
    assert main(argv(n="2")) == 0  # more samples of the same request: continued
    assert len([n for n in os.listdir(out) if n.startswith("sample-")]) == 2
    assert main([*argv(seed="7"), "--overwrite"]) == 0
    seeds = sorted(json.load(open(os.path.join(out, n, "sample.json")))["seed"] for n in os.listdir(out)
                   if n.startswith("sample-"))
    assert seeds == [7]


def test_generate_says_what_it_will_take_and_refuses_a_disk_too_small(tiny_runs, tmp_path, monkeypatch):
    from aldm.artifacts.samples import SampleSet
    from aldm.errors import AldmError

    lines = []
    generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "a"), 3, settings=GenerationSettings(steps=2),
                               native=False, runtime=GenerationRuntime(batch_size=1, progress=False, log=lines.append)))
    assert len(lines) == 1 and "2 more sample(s): about" in lines[0] and "measured on the first batch" in lines[0]
    monkeypatch.setattr("aldm.generate.free_bytes", lambda path: 1000)  # room for the first batch's check only
    with pytest.raises(AldmError, match=r"the 2 remaining samples need about .* but only 1.0 kB is free"):
        generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "b"), 3, settings=GenerationSettings(steps=2),
                                   native=False,
                                   runtime=GenerationRuntime(batch_size=1, progress=False, log=lines.append)))
    assert len(SampleSet(str(tmp_path / "b")).finished_names()) == 1  # what was written stays; a re-run continues
