"""aldm edit: a real scan edited by its label map, every voxel outside the region of change the input's own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from aldm.cli import main
from aldm.errors import AldmError

pytestmark = pytest.mark.slow  # trains the tiny stages (session fixture) and writes native volumes


def _digest(paths) -> dict:
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def _inputs(root) -> list:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def _nifti(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def subject(prepared_cache, tiny_runs):
    """A held-out target subject of the few-shot run, as cache:DIR:ID, and its manifest row."""
    from aldm.artifacts.cache import PreparedCache
    from aldm.artifacts.run import Run

    name = Run(tiny_runs["fewshot"]).split()["test"][0]
    return f"cache:{prepared_cache}:{name}", PreparedCache(str(prepared_cache)).by_subject()[name]


def test_an_edit_changes_only_its_region_on_both_grids_and_resumes(subject, tiny_runs, prepared_cache,
                                                                   phantom_root, tmp_path, capsys):
    from aldm.artifacts.cache import PreparedCache
    from aldm.editing.operations import moved

    spec, row = subject
    before = _digest(_inputs(prepared_cache) + _inputs(phantom_root))
    cached = PreparedCache(str(prepared_cache)).load(row)
    old, brain = cached["labels"][0], cached["brain"][0]
    dx = next(d for d in (12, -12, 8, -8)  # a move along x that keeps the tumour inside the brain
              if (brain[moved(old, (d, 0, 0), json.loads(row["model_affine"]))[0] > 0] > 0).mean() > 0.99)
    out = tmp_path / "moved"
    argv = ["edit", "--model", tiny_runs["fewshot"], "--subject", spec, f"--move={dx},0,0", "--n", "2", "--steps",
            "3", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name.split("_", 1)[0] for p in folders] == ["sample-0000", "sample-0001"]
    for folder in folders:
        region = _nifti(folder / "model" / "region.nii.gz") > 0
        assert 0 < region.sum() < region.size
        for c, stem in enumerate(("t1", "t2", "flair")):
            edited = _nifti(folder / "model" / f"{stem}.nii.gz")
            assert np.array_equal(edited[~region], cached["image"][c][~region])  # bit for bit
            assert not np.allclose(edited[region], cached["image"][c][region])
            native_region = _nifti(folder / "native" / "region.nii.gz") > 0
            native = _nifti(folder / "native" / f"{stem}.nii.gz")
            source = nib.load(row[stem]).get_fdata(dtype=np.float32)
            assert native.shape == source.shape
            assert np.array_equal(native[~native_region], source[~native_region])
        seg = _nifti(folder / "model" / "seg.nii.gz")
        centre_shift = np.argwhere(seg > 0).mean(0) - np.argwhere(old > 0).mean(0)
        assert centre_shift[0] * np.sign(dx) > 1.0 and abs(centre_shift[1]) < 0.6  # along x (RAS), nowhere else
        # the same labels moved whole, less the few voxels (<= 1 %) that left the brain
        assert set(np.unique(seg)) == set(np.unique(old)) and 0.99 <= (seg > 0).sum() / (old > 0).sum() <= 1
        native_seg, own_seg = _nifti(folder / "native" / "seg.nii.gz"), nib.load(row["mask"]).get_fdata()
        assert np.array_equal(native_seg[~native_region], own_seg[~native_region])
        record = json.loads((folder / "edit.json").read_text())
        assert record["operation"] == "move" and record["region_voxels"] == int(region.sum())
        assert record["inputs_sha256"][row["t1"]] == before[row["t1"]]
    a, b = (_nifti(f / "model" / "t1.nii.gz") for f in folders)
    assert not np.array_equal(a, b)  # variants differ by their seeds
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert main(argv) == 0  # the same command again: nothing redone
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamps
    capsys.readouterr()
    assert main([*argv[:-1], "--margin", "3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with other settings" in err[0]
    assert _digest(_inputs(prepared_cache) + _inputs(phantom_root)) == before  # the input is never written to


def test_each_operation_makes_the_label_map_it_names(subject, prepared_cache):
    from aldm.artifacts.cache import PreparedCache
    from aldm.conditions import scaled_labels as scaled
    from aldm.editing.operations import checked_new_labels, moved, placed_inside

    _, row = subject
    data = PreparedCache(str(prepared_cache)).load(row)
    labels, brain = data["labels"][0], data["brain"][0]
    grown, shrunk = scaled(labels, 1.4), scaled(labels, 0.6)
    assert (grown > 0).sum() > 1.8 * (labels > 0).sum() > 1.8 * (shrunk > 0).sum() > 0
    assert set(np.unique(grown)) <= {0, 1, 2, 4}
    assert np.allclose(np.argwhere(grown > 0).mean(0), np.argwhere(labels > 0).mean(0), atol=1.0)
    with pytest.raises(AldmError, match="leave the volume"):
        moved(labels, (500.0, 0.0, 0.0), json.loads(row["model_affine"]))
    removed = checked_new_labels(labels, np.zeros_like(labels), brain, "--remove")
    assert not removed.any()
    with pytest.raises(AldmError, match="nothing to edit"):
        checked_new_labels(labels, labels.copy(), brain, "--labels x")
    far = np.zeros_like(labels)
    far[:6, :6, :6] = 2  # a corner of the cube: outside the brain
    with pytest.raises(AldmError, match="outside the brain"):
        checked_new_labels(labels, far, brain, "--labels far")
    placed = placed_inside(far, brain, seed=3)
    assert (brain[placed > 0] > 0).mean() >= 0.99 and (placed > 0).sum() == (far > 0).sum()


def test_a_healthy_case_folder_gets_another_patients_tumour(subject, tiny_runs, prepared_cache, tmp_path):
    """A case on disk without a label map (a healthy scan), a tumour transplanted into it from a cache subject."""
    from aldm.diffusion.settings import GenerationSettings
    from aldm.editing.editor import EditSettings
    from aldm.editing.operations import LabelEdit
    from aldm.editing.session import EditRequest, edit_scan

    spec, row = subject
    case = tmp_path / "case"
    case.mkdir()
    images = [nib.load(row[stem]) for stem in ("t1", "t2", "flair")]
    seg = nib.load(row["mask"]).get_fdata()
    for stem, image in zip(("t1", "t2", "flair"), images):  # a scan whose tumour is painted over with WM-like tissue
        data = image.get_fdata(dtype=np.float32)
        data[seg > 0] = np.median(data[(data > 0) & (seg == 0)])
        nib.save(nib.Nifti1Image(data, image.affine), str(case / f"{stem}.nii.gz"))
    donor = sorted(_target_subjects(prepared_cache) - {row["subject"]})[0]
    request = EditRequest(model=tiny_runs["fewshot"], subject=str(case),
                          operation=LabelEdit("transplant", path=f"cache:{prepared_cache}:{donor}"),
                          out=str(tmp_path / "out"), settings=GenerationSettings(steps=2), edit=EditSettings(4.0))
    (record,) = edit_scan(request)
    folder = tmp_path / "out" / record.sample
    seg_native = _nifti(folder / "native" / "seg.nii.gz")
    region = _nifti(folder / "native" / "region.nii.gz") > 0
    assert seg_native.any() and not seg_native[~region].any()
    brain = nib.load(str(case / "t1.nii.gz")).get_fdata() > 0
    assert brain[seg_native > 0].mean() > 0.97  # the transplanted tumour lies inside this brain
    t1 = _nifti(folder / "native" / "t1.nii.gz")
    assert np.array_equal(t1[~region], nib.load(str(case / "t1.nii.gz")).get_fdata(dtype=np.float32)[~region])
    # an edit folder is a sample folder: the BraTS export takes it, the edit's label map as the case's seg
    assert main(["export", "brats", "--synthetic", str(tmp_path / "out"), "--out", str(tmp_path / "brats")]) == 0
    (exported,) = [p for p in (tmp_path / "brats").iterdir() if p.is_dir()]
    assert np.array_equal(_nifti(next(exported.glob("*_seg.nii.gz"))), seg_native)


def _target_subjects(cache) -> set:
    from aldm.artifacts.cache import PreparedCache

    return {r["subject"] for r in PreparedCache(str(cache)).rows("target")}


def test_bad_edits_are_one_line_naming_the_file(subject, tiny_runs, prepared_cache, tmp_path, capsys):
    spec, row = subject
    size = 32
    affine = np.asarray(json.loads(row["model_affine"]))
    labels = np.zeros((size,) * 3, np.uint8)
    labels[14:18, 14:18, 14:18] = 1
    labels[15:17, 15:17, 15:17] = 4
    files = {}
    corner = np.zeros_like(labels)
    corner[:5, :5, :5] = 1  # a corner of the cube, outside the brain
    for name, data, grid in (("other_grid", labels, np.eye(4)), ("stray", labels * 3, affine),
                             ("regions", labels, affine), ("corner", corner, affine)):
        files[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), grid), str(files[name]))
    case = tmp_path / "no_flair"
    case.mkdir()
    for stem in ("t1", "t2"):
        shutil.copy(row[stem], case / f"{stem}.nii.gz")
    cases = {
        "another grid": (["--labels", str(files["other_grid"])], "other_grid.nii.gz: a label map of shape"),
        "labels outside BraTS": (["--labels", str(files["stray"])], "stray.nii.gz: labels [12] are not BraTS labels"),
        "sub-regions for a mask model": (["--labels", str(files["regions"])], "regions.nii.gz: a label map with sub"),
        "outside the brain": (["--labels", str(files["corner"])], "corner.nii.gz: 100% of the new tumour lies outside"),
        "off the volume": (["--move", "0,0,300"], "--move 0,0,300: the tumour would leave the volume"),
        "an empty edit": (["--move", "0.5,0,0"], "nothing to edit"),
        "a missing modality": (["--remove"], "no_flair: no FLAIR image"),
        "shrink above one": (["--shrink", "1.5"], "--shrink takes a factor between 0 and 1"),
    }
    before = _digest(_inputs(prepared_cache) + [str(p) for p in files.values()] + _inputs(case))
    for name, (what, words) in cases.items():
        target = str(case) if name == "a missing modality" else spec
        code = main(["edit", "--model", tiny_runs["fewshot"], "--subject", target, *what, "--out",
                     str(tmp_path / "out"), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], (name, err)
    assert _digest(_inputs(prepared_cache) + [str(p) for p in files.values()] + _inputs(case)) == before


def test_a_drawn_label_map_and_a_removal(subject, tiny_runs, prepared_cache, tmp_path):
    """--labels with a mask drawn on the model grid puts a tumour there; --remove leaves no tumour label."""
    from aldm.artifacts.cache import PreparedCache

    spec, row = subject
    data = PreparedCache(str(prepared_cache)).load(row)
    brain, old = data["brain"][0], data["labels"][0]
    drawn = np.zeros_like(old)
    centre = np.argwhere((brain > 0) & (old == 0)).mean(0).astype(int)
    drawn[tuple(slice(c - 2, c + 2) for c in centre)] = 1
    drawn[brain == 0] = 0
    path = tmp_path / "drawn.nii.gz"
    nib.save(nib.Nifti1Image(drawn.astype(np.float32), np.asarray(json.loads(row["model_affine"]))), str(path))
    common = ["--model", tiny_runs["fewshot"], "--subject", spec, "--steps", "2", "--model-space-only", "--quiet"]
    assert main(["edit", *common, "--labels", str(path), "--out", str(tmp_path / "drawn")]) == 0
    assert main(["edit", *common, "--remove", "--out", str(tmp_path / "removed")]) == 0
    (drawn_out,) = (tmp_path / "drawn").glob("sample-*")
    (removed_out,) = (tmp_path / "removed").glob("sample-*")
    assert np.array_equal(_nifti(drawn_out / "model" / "seg.nii.gz") > 0, drawn > 0)
    assert not _nifti(removed_out / "model" / "seg.nii.gz").any()
    assert not (removed_out / "native").exists()
    region = _nifti(removed_out / "model" / "region.nii.gz") > 0
    assert region[old > 0].all()  # the whole old tumour was redrawn


def test_an_inpainting_controlnet_starts_as_its_parent_and_edits(subject, tiny_runs, tmp_path):
    """--inpaint adapts a finished run into one whose ControlNet reads the known latent: at its first step it is
    the parent (zero-initialised context input, whatever the context), it trains on the parent's subjects, and
    aldm generate and aldm edit load it; an edit with it keeps the input outside R."""
    from aldm.artifacts.run import Run
    from aldm.models.unet import ConditionalDenoiser
    from aldm.train.stages import load_parent_denoiser

    parent = Run(tiny_runs["fewshot"])
    profile = parent.profile
    inpainting = ConditionalDenoiser(replace(profile.unet, inpaint_context=True), profile.vae.latent_channels)
    load_parent_denoiser(inpainting, parent.weights()["denoiser"], parent)
    plain = ConditionalDenoiser(profile.unet, profile.vae.latent_channels)
    plain.load_state_dict(parent.weights()["denoiser"])
    g = torch.Generator().manual_seed(0)
    s, zc = profile.latent_size, profile.vae.latent_channels
    z, t = torch.randn(2, zc, s, s, s, generator=g), torch.tensor([10, 400])
    control, stats = torch.rand(2, profile.unet.control_in, s, s, s, generator=g), torch.rand(2, profile.unet.stats_dim)
    context = torch.randn(2, zc + 1, s, s, s, generator=g)
    with torch.no_grad():
        assert torch.equal(inpainting(z, t, control, stats, context=context), plain(z, t, control, stats))
        torch.nn.init.normal_(inpainting.controlnet.context_stem.weight, std=0.1)  # once trained, it reads the context
        assert not torch.allclose(inpainting(z, t, control, stats, context=context), plain(z, t, control, stats))
    with pytest.raises(ValueError, match="inpaint_context"):
        plain(z, t, control, stats, context=context)

    run = tmp_path / "inpaint"
    assert main(["train", "fewshot", "--data", parent.info["data"], "--init", str(parent.path), "--split",
                 parent.split_path, "--inpaint", "--steps", "2", "--out", str(run), "--quiet"]) == 0
    assert Run(str(run)).profile.unet.inpaint_context and Run(str(run)).info["k"] == parent.info["k"]
    spec, _ = subject
    assert main(["generate", "--model", str(run), "--masks", f"cache:{parent.info['data']}", "--n", "1",
                 "--steps", "2", "--out", str(tmp_path / "generated"), "--quiet"]) == 0
    assert main(["edit", "--model", str(run), "--subject", spec, "--remove", "--steps", "2", "--model-space-only",
                 "--out", str(tmp_path / "removed"), "--quiet"]) == 0
    (removed,) = (tmp_path / "removed").glob("sample-*")
    assert not _nifti(removed / "model" / "seg.nii.gz").any()


def test_inpainting_regions_are_plain_generation_half_the_time_and_tumour_shaped_otherwise():
    from aldm.train.inpaint_regions import dilate, draw_unknown

    s = 12
    tumours = torch.zeros(3, 1, s, s, s)
    tumours[0, 0, 3:6, 3:6, 3:6] = 1
    tumours[1, 0, 7:9, 6:9, 5:7] = 1  # subject 2 has no tumour: its drawn tumour regions become ellipsoids
    brains = torch.zeros(3, 1, s, s, s)
    brains[:, 0, 1:11, 1:11, 1:11] = 1
    regions = draw_unknown(tumours, brains, torch.arange(3).repeat(100), torch.Generator().manual_seed(0))
    assert regions.shape == (300, 1, s, s, s) and set(regions.unique().tolist()) == {0.0, 1.0}
    plain = (regions.flatten(1).mean(1) == 1)
    assert 0.4 < plain.float().mean() < 0.6
    partial = regions[~plain]
    assert (partial.flatten(1).sum(1) > 0).all()
    own = dilate(tumours[0], 1)
    assert any(torch.equal(r, own) for r in regions[0::3])  # subject 0's own tumour, dilated by a cell
    again = draw_unknown(tumours, brains, torch.arange(3).repeat(100), torch.Generator().manual_seed(0))
    assert torch.equal(regions, again)


def test_the_known_region_follows_its_forward_trajectory_under_every_sampler():
    """With the noise constrained, any network leaves the known latent on sqrt(abar) z0 + sqrt(1 - abar) n: the
    sampler lands on z0 there (before the exact copy of finish) whatever it generates elsewhere."""
    from aldm.config import tiny
    from aldm.diffusion.inpainting import KnownLatent, constrained, sample_resampled
    from aldm.diffusion.samplers import run_sampler
    from aldm.diffusion.schedule import NoiseSchedule

    schedule = NoiseSchedule(tiny().diffusion)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 3, 6, 6, 6, generator=g)
    keep = (torch.rand(2, 1, 6, 6, 6, generator=g) > 0.4).float()
    known = KnownLatent(z0, keep)

    def network(z, t):  # an arbitrary "denoiser"
        return torch.tanh(z * 0.7 + 0.1 * t.view(-1, 1, 1, 1, 1).float().sqrt())

    for sampler in ("dpmpp2m", "ddim"):
        z_T = known.start(torch.randn(z0.shape, generator=g), schedule)
        out = run_sampler(sampler, constrained(network, known, schedule), schedule, z_T, 6, [g, g], False)
        assert torch.allclose(out[keep.expand_as(out) > 0], z0[keep.expand_as(out) > 0], atol=1e-4), sampler
        assert not torch.allclose(out[keep.expand_as(out) == 0], z0[keep.expand_as(out) == 0], atol=0.1)
    start = known.start(torch.randn(z0.shape), schedule)
    out = sample_resampled(constrained(network, known, schedule), schedule, start, 5, 3,
                           [torch.Generator().manual_seed(i) for i in range(2)])
    assert torch.allclose(out[keep.expand_as(out) > 0], z0[keep.expand_as(out) > 0], atol=1e-4)
    assert KnownLatent(z0, keep, jumps=3).evaluations(5) == 5 + 2 * 4


def test_the_inpainting_metrics_agree_with_the_official_package():
    official = pytest.importorskip("inpainting.challenge_metrics_2023")
    from scipy import ndimage

    from aldm.metrics.inpainting import inpainting_scores

    rng = np.random.default_rng(0)
    shape = (40, 36, 30)
    target = np.zeros(shape, np.float32)
    target[5:35, 4:32, 3:27] = rng.gamma(4, 100, (30, 28, 24))
    target = ndimage.gaussian_filter(target, 1.0)
    mask = np.zeros(shape, bool)
    mask[12:24, 10:22, 8:20] = True
    for noise in (5.0, 40.0, 200.0):
        prediction = np.clip(target + rng.normal(0, noise, shape).astype(np.float32) * mask, 0, None)
        voided = np.where(mask, 0, target)
        ours = inpainting_scores(prediction, target, voided, mask)
        theirs = official.generate_metrics(*(torch.from_numpy(np.ascontiguousarray(v))[None]
                                             for v in (prediction, target, voided, mask)))
        for key in ("ssim", "psnr", "mse"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (noise, key)
