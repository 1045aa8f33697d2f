"""A corpus of damaged artefacts driven through every command that reads them: each file of a run, a cache
and a sample folder truncated, emptied, replaced by valid JSON of the wrong shape or by another model's
file. Every case gives one line on stderr (no traceback), exit 2 (1 for ``aldm data verify``, which
reports damage as its result), and loses nothing: every other file of the artefact keeps its bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from aldm.cli import main

pytestmark = pytest.mark.slow  # dozens of commands, each loading a model or a cache


def _digests(folder) -> dict:
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(open(os.path.join(d, f), "rb").read()).digest()
            for d, _, files in os.walk(folder) for f in files if not f.startswith(".aldm-")}


def _damage(path, how: str, other=None) -> None:
    raw = open(path, "rb").read()
    if how == "truncated":
        open(path, "wb").write(raw[: max(1, len(raw) // 3)])
    elif how == "empty":
        open(path, "wb").close()
    elif how == "garbage":
        open(path, "wb").write(os.urandom(2048))
    elif how.startswith("json:"):
        open(path, "w").write(how[5:])
    elif how == "swapped":
        shutil.copyfile(other, path)
    else:
        raise ValueError(how)


def _one_line_exit(capsys, argv, codes=(2,)) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("aldm: warning")]
    assert code in codes and "Traceback" not in err and len(lines) == 1, (argv, code, err)
    return lines[0]


RUN_CASES = [
    ("run.json", "truncated"), ("run.json", "empty"), ("run.json", "json:[]"), ("run.json", 'json:{"stage": 5}'),
    ("run.json", 'json:{"stage": "fewshot", "modalities": "T2w"}'),
    ("config.json", "truncated"), ("config.json", "empty"), ("config.json", "json:[]"),
    ("config.json", "image_size:-64"), ("config.json", "unet.channels:[0,0,0]"),
    ("config.json", "unet.channels:[8,8,8]"),
    ("weights.pt", "truncated"), ("weights.pt", "empty"), ("weights.pt", "garbage"), ("weights.pt", "swapped:baseline"),
    ("weights.pt", "swapped:vae"), ("vae.pt", "truncated"), ("vae.pt", "swapped:baseline"),
    ("split.json", "truncated"), ("split.json", "json:[]"), ("split.json", 'json:{"test": 3}'),
]


@pytest.mark.parametrize("name, how", RUN_CASES, ids=[f"{n}-{h.split(':')[0]}" for n, h in RUN_CASES])
def test_a_damaged_run_file(tiny_runs, baseline_runs, tmp_path, capsys, name, how):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["fewshot"], run)
    path = run / name
    if how.startswith("swapped:"):
        other = {"baseline": os.path.join(baseline_runs["cgan"], "weights.pt"),
                 "vae": os.path.join(tiny_runs["vae"], "weights.pt")}[how.split(":")[1]]
        _damage(path, "swapped", other)
    elif name == "config.json" and not how.startswith(("json:", "truncated", "empty")):
        key, value = how.split(":")
        data = json.loads(path.read_text())
        section, _, field = key.rpartition(".")
        (data[section] if section else data)[field] = json.loads(value)
        path.write_text(json.dumps(data))
    else:
        _damage(path, how)
    before = _digests(run)
    line = _one_line_exit(capsys, ["generate", "--model", str(run), "--out", str(tmp_path / "gen"), "--n", "1",
                                   "--steps", "2", "--quiet"])
    assert str(run) in line, line
    assert _digests(run) == before  # nothing changed, nothing lost
    written = os.listdir(tmp_path / "gen") if (tmp_path / "gen").exists() else []
    assert not [n for n in written if n.startswith("sample-")]


CACHE_CASES = [("manifest.csv", "truncated"), ("manifest.csv", "empty"), ("manifest.csv", "garbage"),
               ("prepare.json", "truncated"), ("prepare.json", "json:[]"), ("prepare.json", 'json:{"modalities": 3}'),
               ("npz", "truncated"), ("npz", "empty"), ("npz", "garbage"), ("npz", "swapped")]


@pytest.mark.parametrize("name, how", CACHE_CASES, ids=[f"{n}-{h.split(':')[0]}" for n, h in CACHE_CASES])
def test_a_damaged_cache_file(prepared_cache, tiny_runs, tmp_path, capsys, name, how):
    import numpy as np

    from aldm.artifacts.cache import PreparedCache

    cache = tmp_path / "cache"
    shutil.copytree(prepared_cache, cache)
    rows = PreparedCache(str(cache)).rows("target")
    victim = rows[0]
    if name == "npz":
        path = cache / victim["file"]
        if how == "swapped":  # an npz of the right name without the cache's arrays
            np.savez(path, something=np.zeros(3))
        else:
            _damage(path, how)
    else:
        _damage(cache / name, how)
    before = _digests(cache)
    for argv in (["train", "vae", "--data", str(cache), "--out", str(tmp_path / "vae"), "--profile", "tiny",
                  "--steps", "1", "--quiet"],
                 ["generate", "--model", tiny_runs["fewshot"], "--out", str(tmp_path / "gen"), "--n", "1",
                  "--steps", "2", "--masks", f"cache:{cache}", "--subjects", victim["subject"], "--quiet"]):
        if name == "npz" and argv[0] == "train":
            continue  # a target subject's npz: the VAE trains on the source subjects (the next command reads it)
        line = _one_line_exit(capsys, argv)
        assert str(cache) in line, (argv, line)
    _one_line_exit(capsys, ["data", "verify", str(cache)], codes=(1, 2))
    assert _digests(cache) == before


SAMPLE_CASES = [("sample.json", "truncated"), ("sample.json", "empty"), ("sample.json", "json:[]"),
                ("sample.json", "missing"), ("samples.csv", "truncated"), ("samples.csv", "empty"),
                ("samples.csv", "garbage"), ("model/flair.nii.gz", "truncated"), ("model/flair.nii.gz", "empty"),
                ("model/mask.nii.gz", "garbage")]


@pytest.fixture(scope="module")
def samples(tiny_runs, tmp_path_factory):
    from aldm.diffusion.settings import GenerationSettings
    from aldm.generate import GenerationRequest, GenerationRuntime, generate

    out = tmp_path_factory.mktemp("samples") / "gen"
    generate(GenerationRequest(tiny_runs["fewshot"], str(out), 2, settings=GenerationSettings(steps=2), native=False,
                               runtime=GenerationRuntime(progress=False)))
    return out


@pytest.mark.parametrize("name, how", SAMPLE_CASES, ids=[f"{n}-{h.split(':')[0]}" for n, h in SAMPLE_CASES])
def test_a_damaged_sample_file(prepared_cache, samples, tmp_path, capsys, name, how):
    folder = tmp_path / "gen"
    shutil.copytree(samples, folder)
    first = sorted(n for n in os.listdir(folder) if n.startswith("sample-"))[0]
    path = folder / name if name == "samples.csv" else folder / first / name
    if how == "missing":
        path.unlink()
    else:
        _damage(path, how)
    before = _digests(folder)
    line = _one_line_exit(capsys, ["evaluate", "--real", str(prepared_cache), "--synthetic", str(folder), "--out",
                                   str(tmp_path / "ev"), "--frd", "none", "--inception", str(tmp_path / "none")])
    assert str(folder) in line, line
    if name != "samples.csv":  # verify checks each sample against its own sample.json, not the index
        _one_line_exit(capsys, ["data", "verify", str(folder)], codes=(1,))
    assert _digests(folder) == before
