"""Bad input at the command line: each case gives one clear error line and a non-zero exit, and no
file already written (caches, runs, generated samples) changes.

The per-file corpus of malformed NIfTI subjects lives in tests/test_prepare.py (BAD_CASES); this
file covers what reaches the commands: CSV columns, dataset layouts, option values, damaged runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from aldm.cli import main

pytestmark = pytest.mark.slow  # trains several stages or runs subprocesses; see pyproject.toml


def _tree_digest(root) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(phantom_root, prepared_cache, tiny_runs, tmp_path_factory):
    """Copies of a phantom download, a cache, finished runs and a generate folder to throw bad input at."""
    root = tmp_path_factory.mktemp("bad_cli")
    shutil.copytree(phantom_root, root / "phantom")
    shutil.copytree(phantom_root, root / "misspelt")
    shutil.copytree(prepared_cache, root / "cache")
    for name, run in tiny_runs.items():
        shutil.copytree(run, root / "runs" / name)
    for name in ("ldm", "fewshot"):  # the copies point at the copied cache
        info = json.load(open(root / "runs" / name / "run.json"))
        info["data"] = str(root / "cache")
        (root / "runs" / name / "run.json").write_text(json.dumps(info))
    assert main(["generate", "--model", str(root / "runs" / "fewshot"), "--out", str(root / "gen"), "--n", "1",
                 "--steps", "2", "--quiet"]) == 0
    csv_upenn = root / "misspelt" / "UPENN-GBM" / "UPENN-GBM_clinical_info_v2.1.csv"
    csv_upenn.write_text(csv_upenn.read_text().replace("IDH1", "IDH_1", 1))
    csv_ucsf = root / "misspelt" / "UCSF-PDGM" / "UCSF-PDGM-metadata_v5.csv"
    csv_ucsf.write_text(csv_ucsf.read_text().replace("WHO CNS Grade", "WHO grade", 1))
    (root / "unknown" / "a" / "b").mkdir(parents=True)
    (root / "unknown" / "a" / "b" / "scan.nii.gz").write_bytes(b"x")
    (root / "bad_profile.json").write_text("{ not json")
    return root


# (argv with {root} placeholders, words the error line must hold)
CASES = {
    "csv_column_upenn": (["data", "prepare", "upenn-gbm", "{root}/misspelt/UPENN-GBM", "--out", "{root}/c1"],
                         "missing column(s) 'IDH1'"),
    "csv_column_ucsf": (["data", "prepare", "ucsf-pdgm", "{root}/misspelt/UCSF-PDGM", "--out", "{root}/c2"],
                        "missing column(s) 'WHO CNS Grade'"),
    "layout_ucsf": (["data", "prepare", "ucsf-pdgm", "{root}/unknown", "--out", "{root}/c3"],
                    "not a UCSF-PDGM download"),
    "layout_upenn": (["data", "prepare", "upenn-gbm", "{root}/unknown", "--out", "{root}/c3"], "unknown"),
    "layout_folder": (["data", "prepare", "folder", "{root}/unknown", "--out", "{root}/c3"], "found"),
    "unknown_dataset": (["data", "prepare", "adni", "{root}/unknown", "--out", "{root}/c3"], "invalid choice"),
    "cache_other_size": (["data", "prepare", "ucsf-pdgm", "{root}/phantom/UCSF-PDGM", "--out", "{root}/cache",
                          "--size", "48"], "prepared with"),
    "negative_steps": (["train", "vae", "--data", "{root}/cache", "--out", "{root}/r1", "--steps", "-5"],
                       "must be at least 1"),
    "k_larger_than_cohort": (["train", "ldm", "--data", "{root}/cache", "--out", "{root}/r2", "--init",
                              "{root}/runs/ldm", "--k", "999"], "999"),
    "split_k_too_large": (["data", "split", "{root}/cache", "--k", "500", "--out", "{root}/s.json"], "500"),
    "existing_run": (["train", "vae", "--data", "{root}/cache", "--out", "{root}/runs/vae", "--profile", "tiny"],
                     "already holds a run"),
    "resume_other_stage": (["train", "ldm", "--data", "{root}/cache", "--out", "{root}/runs/vae", "--vae",
                            "{root}/runs/vae", "--resume"], "holds a vae run"),
    "vae_not_a_run": (["train", "ldm", "--data", "{root}/cache", "--out", "{root}/r3", "--vae", "{root}/cache"],
                      "not an aldm run"),
    "bad_profile_json": (["train", "vae", "--data", "{root}/cache", "--out", "{root}/r4", "--profile",
                          "{root}/bad_profile.json"], "bad_profile.json"),
    "guidance_nan": (["generate", "--model", "{root}/runs/fewshot", "--out", "{root}/gen", "--guidance", "nan"],
                     "finite"),
    "guidance_inf": (["generate", "--model", "{root}/runs/fewshot", "--out", "{root}/gen", "--guidance", "inf"],
                     "finite"),
    "steps_zero": (["generate", "--model", "{root}/runs/fewshot", "--out", "{root}/gen", "--steps", "0"],
                   "must be at least 1"),
    "steps_over_T": (["generate", "--model", "{root}/runs/fewshot", "--out", "{root}/gen", "--steps", "5000"],
                     "steps must be at most T = 100"),
    "ddpm_partial": (["generate", "--model", "{root}/runs/fewshot", "--out", "{root}/gen", "--sampler", "ddpm",
                      "--steps", "10"], "ancestral DDPM runs all"),
    "n_negative": (["generate", "--model", "{root}/runs/fewshot", "--out", "{root}/gen", "--n", "-2"],
                   "must be at least 1"),
    "generate_from_vae": (["generate", "--model", "{root}/runs/vae", "--out", "{root}/g2"], "cannot generate"),
    "masks_missing": (["generate", "--model", "{root}/runs/fewshot", "--out", "{root}/g3", "--masks",
                       "folder:{root}/nowhere"], "mask folder not found"),
    "mask_subject_unknown": (["generate", "--model", "{root}/runs/fewshot", "--out", "{root}/g4", "--masks",
                              "cache:{root}/cache", "--subjects", "nobody"], "unknown subject"),
    "evaluate_missing": (["evaluate", "--real", "{root}/cache", "--synthetic", "{root}/nowhere", "--out",
                          "{root}/e"], "nowhere"),
    "verify_missing": (["data", "verify", "{root}/nowhere"], "nowhere"),
    "serve_bad_port": (["serve", "--model", "{root}/runs/fewshot", "--port", "99999"], "port"),
    "serve_vae": (["serve", "--model", "{root}/runs/vae", "--out", "{root}/srv"], "cannot generate"),
}


def _call(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage + one error line
        code = exc.code
    return code, capsys.readouterr().err


def test_bad_command_lines_fail_cleanly_and_damage_nothing(world, capsys):
    before = _tree_digest(world)
    for name, (argv, words) in CASES.items():
        argv = [a.replace("{root}", str(world)) for a in argv]
        code, err = _call(argv, capsys)
        assert code not in (0, None), (name, code)
        assert "Traceback" not in err, (name, err)
        lines = [line for line in err.strip().splitlines() if "error" in line]
        assert len(lines) == 1 and words in lines[0], (name, err)
    after = _tree_digest(world)
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, changed
    print(f"\n{len(CASES)} bad command lines: one error line each, nothing written changed")


def test_damaged_run_files_give_one_line(world, capsys):
    run = world / "damaged"
    shutil.copytree(world / "runs" / "fewshot", run)
    weights = run / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, err = _call(["generate", "--model", str(run), "--out", str(world / "g5")], capsys)
    assert code == 2 and "weights.pt: unreadable checkpoint" in err and len(err.strip().splitlines()) == 1
    (run / "run.json").write_text("{ broken")
    code, err = _call(["generate", "--model", str(run), "--out", str(world / "g5")], capsys)
    assert code == 2 and "run.json: damaged run description" in err
    assert not (world / "g5").exists() or not os.listdir(world / "g5")
