"""Ingestion: verification of bad input, preprocessing values, geometry round trip, cache reuse."""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest

from aldm.artifacts.cache import PreparedCache
from aldm.data.cache import DatasetSource, prepare_dataset
from aldm.data.cohorts import discover
from aldm.data.geometry import to_native
from aldm.data.preprocess import PrepConfig, load_and_verify, preprocess
from aldm.errors import AldmError

from .conftest import write_volume


def test_cache_contents(prepared_cache):
    rows = PreparedCache(str(prepared_cache)).rows()
    assert len(rows) == 8
    assert {r["domain"] for r in rows} == {"source", "target"}
    for row in rows:
        data = np.load(prepared_cache / row["file"])
        assert data["image"].dtype == np.float16 and data["image"].shape == (3, 32, 32, 32)
        assert data["mask"].shape == (1, 32, 32, 32) and set(np.unique(data["mask"])) <= {0, 1}
        assert np.array_equal(data["mask"], (data["labels"] > 0).astype(np.uint8))
        assert set(np.unique(data["labels"])) <= {0, 1, 2, 4}
        image = data["image"].astype(np.float32)
        assert image.min() >= -1.0 and image.max() <= 1.0
        brain = data["brain"][0] > 0
        assert np.all(image[:, ~brain] == -1.0)  # background -1
        assert image[:, brain].mean() > -0.5
        assert int(row["tumour_voxels"]) == int(data["mask"].sum()) > 0
        assert json.loads(row["native_shape"]) == [240, 240, 155]
    target = [r for r in rows if r["domain"] == "target"]
    assert all(r["idh"] in {"mutant", "wildtype"} and r["grade"] in {"2", "3", "4"} for r in target)


@pytest.mark.parametrize("mode", ["resize", "crop-pad"])
def test_geometry_round_trip(phantom_root, mode):
    record = discover("ucsf-pdgm", str(phantom_root / "UCSF-PDGM"))[0]
    volume, problems = load_and_verify(record)
    assert not problems
    out = preprocess(volume, PrepConfig(size=64, mode=mode, spacing=2.5))
    assert out["image"].shape == (3, 64, 64, 64)
    back = to_native(out["labels"][0].astype(np.float32), out["affine"], volume.labels.shape, volume.affine, order=0)
    native, mapped = volume.labels > 0, back > 0
    dice = 2 * (native & mapped).sum() / (native.sum() + mapped.sum())
    assert dice > 0.8

    def world_centroid(mask):
        ijk = np.argwhere(mask).mean(0)
        return volume.affine[:3, :3] @ ijk + volume.affine[:3, 3]

    assert np.linalg.norm(world_centroid(native) - world_centroid(mapped)) < 1.5  # mm
    image = to_native(out["image"][0], out["affine"], volume.labels.shape, volume.affine, order=1, fill=-1.0)
    brain = volume.images[0] > 0
    assert np.corrcoef(image[brain], volume.images[0][brain])[0, 1] > 0.9


def test_axis_aligned_resampling_is_scipys_affine_transform():
    """to_native's one-axis-at-a-time path (diagonal matrices: resize and crop modes, flips included) gives
    ndimage.affine_transform's values in constant mode: nearest exactly, trilinear to float32 rounding; the
    model cube's edges (coordinates exactly 0 and S - 1, just outside, all outside) included."""
    from scipy import ndimage

    volume = np.random.default_rng(0).standard_normal((8, 9, 10)).astype(np.float32)
    model = np.eye(4)
    for scales, offset, shape in (((0.3, -0.45, 1.0), (-0.6, 8.0, 0.0), (31, 20, 10)),
                                  ((1.0, 1.0, 1.0), (-1e-9, 0.0, 1e-9), (8, 9, 10)),
                                  ((2.0, 0.5, -1.0), (0.0, -0.5, 9.0), (5, 19, 12)),
                                  ((1.0, 1.0, 1.0), (50.0, 0.0, 0.0), (3, 3, 3))):
        native = np.diag([*scales, 1.0])
        native[:3, 3] = offset
        for order, fill in ((0, 0.0), (1, -1.0)):
            ours = to_native(volume, model, shape, native, order=order, fill=fill)
            oracle = ndimage.affine_transform(volume, native[:3, :3], offset=native[:3, 3], output_shape=shape,
                                              order=order, mode="constant", cval=fill)
            assert ours.dtype == np.float32 and ours.shape == shape
            assert np.abs(ours - oracle).max() <= (0.0 if order == 0 else 1e-5), (scales, offset, order)
    rotated = np.eye(4)
    rotated[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]  # not axis-aligned: the general path
    assert np.array_equal(to_native(volume, model, (9, 8, 10), rotated, order=0), ndimage.affine_transform(
        volume, rotated[:3, :3], output_shape=(9, 8, 10), order=0, mode="constant", cval=0.0))


def test_rerun_skips_cached_and_config_must_match(phantom_root, prepared_cache):
    summary = prepare_dataset(DatasetSource("ucsf-pdgm", str(phantom_root / "UCSF-PDGM")),
                              str(prepared_cache), PrepConfig(size=32),
                              progress=False)
    assert (summary.found, summary.cached, summary.prepared) == (5, 5, 0)
    with pytest.raises(AldmError, match="prepare.json: cache was prepared with"):
        prepare_dataset(DatasetSource("ucsf-pdgm", str(phantom_root / "UCSF-PDGM")),
                        str(prepared_cache), PrepConfig(size=48),
                        progress=False)


def test_verify_cache_finds_damage(phantom_root, tmp_path):
    cache = tmp_path / "c"
    prepare_dataset(DatasetSource("ucsf-pdgm", str(phantom_root / "UCSF-PDGM"), limit=2),
                    str(cache), PrepConfig(size=16),
                    progress=False)
    assert PreparedCache(str(cache)).verify() == []
    victim = cache / PreparedCache(str(cache)).rows()[0]["file"]
    raw = bytearray(victim.read_bytes())
    raw[-10] ^= 0xFF
    victim.write_bytes(bytes(raw))
    problems = PreparedCache(str(cache)).verify()
    assert len(problems) == 1 and "checksum mismatch" in problems[0] and victim.name in problems[0]
    # a damaged file is re-made by the next prepare
    summary = prepare_dataset(DatasetSource("ucsf-pdgm", str(phantom_root / "UCSF-PDGM"), limit=2),
                              str(cache), PrepConfig(size=16),
                              progress=False)
    assert summary.prepared == 1 and PreparedCache(str(cache)).verify() == []
    assert PreparedCache(str(cache)).load(PreparedCache(str(cache)).rows()[0])["image"].dtype == np.float32


def _good_subject(folder, name, shape=(24, 24, 20), affine=None):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    brain = np.zeros(shape, bool)
    brain[3:-3, 3:-3, 3:-3] = True
    for mod in ("t1", "t2", "flair"):
        write_volume(folder / name / f"{mod}.nii.gz", np.where(brain, rng.uniform(100, 200, shape), 0), affine)
    mask = np.zeros(shape, np.uint8)
    mask[8:14, 8:14, 8:12] = 2
    mask[10:12, 10:12, 9:11] = 4
    write_volume(folder / name / "mask.nii.gz", mask, affine, np.uint8)


BAD_CASES = {
    "truncated_gz": ("t1.nii.gz", "unreadable NIfTI"),
    "image_4d": ("t2.nii.gz", "expected a 3D volume"),
    "image_2d": ("flair.nii.gz", "expected a 3D volume"),
    "nan_voxels": ("t1.nii.gz", "non-finite voxels"),
    "inf_voxels": ("flair.nii.gz", "non-finite voxels"),
    "mask_labels": ("mask.nii.gz", "unexpected labels [3, 7]"),
    "mask_fractional": ("mask.nii.gz", "non-integer values"),
    "shape_mismatch": ("mask.nii.gz", "shape (24, 24, 18) differs"),
    "affine_mismatch": ("t2.nii.gz", "affine differs"),
    "empty_mask": ("mask.nii.gz", "empty tumour mask"),
    "missing_flair": ("flair.nii.gz", "missing FLAIR image"),
    "constant_image": ("t2.nii.gz", "image is constant"),
    "not_nifti": ("t1.nii.gz", "unreadable NIfTI"),
}


@pytest.fixture()
def bad_folder(tmp_path):
    root = tmp_path / "dataset"
    for name in ["good_a", "good_b", *BAD_CASES]:
        _good_subject(root, name)
    s = root
    raw = (s / "truncated_gz/t1.nii.gz").read_bytes()
    (s / "truncated_gz/t1.nii.gz").write_bytes(raw[: len(raw) // 2])
    write_volume(s / "image_4d/t2.nii.gz", np.ones((24, 24, 20, 3)))
    write_volume(s / "image_2d/flair.nii.gz", np.ones((24, 24)))
    arr = np.asarray(nib.load(s / "nan_voxels/t1.nii.gz").dataobj).copy()
    arr[5, 5, 5] = np.nan
    write_volume(s / "nan_voxels/t1.nii.gz", arr)
    arr[5, 5, 5] = np.inf
    write_volume(s / "inf_voxels/flair.nii.gz", arr)
    mask = np.zeros((24, 24, 20), np.float32)
    mask[8:10, 8:10, 8:10] = 3
    mask[12, 12, 12] = 7
    write_volume(s / "mask_labels/mask.nii.gz", mask)
    mask[mask > 0] = 0.5
    write_volume(s / "mask_fractional/mask.nii.gz", mask)
    write_volume(s / "shape_mismatch/mask.nii.gz", np.zeros((24, 24, 18), np.uint8), dtype=np.uint8)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    write_volume(s / "affine_mismatch/t2.nii.gz", np.asarray(nib.load(s / "good_a/t2.nii.gz").dataobj), shifted)
    write_volume(s / "empty_mask/mask.nii.gz", np.zeros((24, 24, 20), np.uint8), dtype=np.uint8)
    os.remove(s / "missing_flair/flair.nii.gz")
    write_volume(s / "constant_image/t2.nii.gz", np.full((24, 24, 20), 7.0))
    with gzip.open(s / "not_nifti/t1.nii.gz", "wb") as fh:
        fh.write(b"this is not a nifti file at all" * 20)
    return root


def test_bad_inputs_each_give_one_line_and_good_subjects_survive(bad_folder, tmp_path):
    cache = tmp_path / "cache"
    lines = []
    summary = prepare_dataset(DatasetSource("folder", str(bad_folder)), str(cache), PrepConfig(size=16), progress=False,
                              log=lines.append)
    assert summary.prepared == 2
    assert sorted(r["subject"] for r in PreparedCache(str(cache)).rows()) == ["good_a", "good_b"]
    assert set(summary.failed) == set(BAD_CASES)
    for name, (filename, message) in BAD_CASES.items():
        problems = summary.failed[name]
        assert any(os.path.join(name, filename) in p and message in p for p in problems), (name, problems)
        assert all("\n" not in p for p in problems)
    assert len(lines) == sum(len(p) for p in summary.failed.values())
    assert not any(f.startswith(".tmp") for f in os.listdir(cache))  # nothing half-written


def test_strict_makes_bad_input_fatal(bad_folder, tmp_path):
    with pytest.raises(AldmError, match="missing FLAIR image"):
        prepare_dataset(DatasetSource("folder", str(bad_folder)),
                        str(tmp_path / "c"), PrepConfig(size=16), progress=False,
                        strict=True)


def test_brats_layouts_and_label_remap(tmp_path):
    root21, root23 = tmp_path / "b21", tmp_path / "b23"
    shape = (24, 24, 20)
    brain = np.zeros(shape)
    brain[3:-3, 3:-3, 3:-3] = 150.0
    mask = np.zeros(shape, np.uint8)
    mask[8:14, 8:14, 8:12] = 2
    mask[10:12, 10:12, 9:11] = 3
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        write_volume(root23 / "BraTS-GLI-00001-000" / f"BraTS-GLI-00001-000-{suffix}.nii.gz", brain + mask)
    write_volume(root23 / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz", mask, dtype=np.uint8)
    mask21 = np.where(mask == 3, 4, mask).astype(np.uint8)
    for suffix in ("t1", "t1ce", "t2", "flair"):
        write_volume(root21 / "BraTS2021_00001" / f"BraTS2021_00001_{suffix}.nii.gz", brain + mask21)
    write_volume(root21 / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz", mask21, dtype=np.uint8)
    for dataset, root in (("brats2023", root23), ("brats2021", root21)):
        cache = tmp_path / f"cache_{dataset}"
        summary = prepare_dataset(DatasetSource(dataset, str(root)), str(cache), PrepConfig(size=16), progress=False)
        assert summary.prepared == 1, summary.failed
        row = PreparedCache(str(cache)).rows()[0]
        assert set(np.unique(np.load(cache / row["file"])["labels"])) == {0, 2, 4}


def _header_only(path, shape, dtype=np.int16, gz=True, payload: int = 0):
    """A NIfTI-1 file whose header declares ``shape`` x ``dtype`` and whose data are ``payload`` zero bytes
    (a header bomb with none; a gzip bomb with far more than the file's size)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    head = header.binaryblock + b"\0" * 4  # no extensions
    if not gz:
        path.write_bytes(head + b"\0" * payload)
        return
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(head)
        block = b"\0" * (1 << 24)
        for _ in range(payload // len(block)):
            fh.write(block)


BOMBS = {  # name -> (shape, dtype, zero bytes after the header, the one line that skips the subject); all .nii.gz,
    # as every dataset layout names its files
    "header_bomb": ((32767, 32767, 32767), np.int16, 0, ("over the limit of 2.1 GB",)),
    "inflates_to_1024_cubed": ((1024, 1024, 1024), np.uint8, 1 << 28, ("over the limit of 2.1 GB",)),
    # read up to its declared 24x24x20 zeros, no further: a constant image, or an empty mask
    "gzip_longer_than_declared": ((24, 24, 20), np.float32, 1 << 28, ("image is constant", "empty tumour mask")),
}


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["t1", "t2", "flair", "mask"])
def test_header_and_gzip_bombs_skip_their_subject_within_a_memory_bound(tmp_path, modality):
    """Each bomb replaces one modality (or the mask) of its own subject; prepare, in a subprocess whose peak
    memory is measured, skips those subjects with one line each and prepares the good one."""
    import subprocess
    import sys

    root = tmp_path / "dataset"
    _good_subject(root, "good")
    for name, (shape, dtype, payload, _) in BOMBS.items():
        _good_subject(root, name)
        target = root / name / f"{modality}.nii.gz"
        target.unlink()
        _header_only(target, shape, dtype, True, payload)
    # peak memory of this process alone: VmHWM starts afresh at exec (ru_maxrss would carry the forking
    # pytest process's own size over exec on Linux)
    code = ("import json, sys\n"
            "from aldm.data.cache import DatasetSource, prepare_dataset\nfrom aldm.data.preprocess import PrepConfig\n"
            "lines = []\n"
            f"s = prepare_dataset(DatasetSource('folder', {str(root)!r}), {str(tmp_path / 'cache')!r}, "
            "PrepConfig(size=16), progress=False, log=lines.append)\n"
            "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "print(json.dumps({'prepared': s.prepared, 'failed': s.failed, 'lines': lines, 'peak_mb': hwm / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["prepared"] == 1 and set(result["failed"]) == set(BOMBS)
    for name, (*_, words) in BOMBS.items():
        problems = result["failed"][name]
        assert f"{name}/{modality}.nii.gz" in problems[0] and any(w in p for w in words for p in problems), problems
    assert result["peak_mb"] < 1500, result["peak_mb"]  # the bombs inflate to 256 MB - 65 TB; none of it is read


def test_the_nifti_reader_checks_the_header_before_any_voxel(tmp_path, monkeypatch):
    from aldm.errors import AldmError
    from aldm.io.nifti import load_nifti

    _header_only(tmp_path / "bomb.nii", (32767, 32767, 32767), np.int16, gz=False)
    with pytest.raises(AldmError, match=r"bomb.nii: the header declares a 32767x32767x32767 volume .* over the limit"):
        load_nifti(str(tmp_path / "bomb.nii"))
    _header_only(tmp_path / "short.nii", (64, 64, 64), np.float32, gz=False, payload=1000)
    with pytest.raises(AldmError, match=r"short.nii: truncated: the header declares 1.0 MB of data, the file holds"):
        load_nifti(str(tmp_path / "short.nii"))
    _header_only(tmp_path / "big.nii.gz", (1024, 1024, 1024), np.uint8)
    monkeypatch.setenv("ALDM_MAX_VOLUME_GB", "0.001")
    with pytest.raises(AldmError, match="over the limit of 1.1 MB; set ALDM_MAX_VOLUME_GB"):
        load_nifti(str(tmp_path / "big.nii.gz"))
    monkeypatch.setenv("ALDM_MAX_VOLUME_GB", "8")  # raised: the header passes, the data (none) do not
    with pytest.raises(AldmError, match="big.nii.gz: unreadable NIfTI data"):
        load_nifti(str(tmp_path / "big.nii.gz"))
