"""The command line: sub-commands listed, one-line errors with non-zero exit, nothing lost."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aldm.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "aldm.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_help_lists_commands():
    out = _run("--help")
    assert out.returncode == 0 and "data" in out.stdout
    out = _run("data", "--help")
    for cmd in ("synth", "prepare", "verify", "split"):
        assert cmd in out.stdout


@pytest.mark.slow
def test_missing_dataset_is_one_line_error(tmp_path):
    out = _run("data", "prepare", "upenn-gbm", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "nowhere" in lines[0] and "Traceback" not in out.stderr


@pytest.mark.parametrize("argv", [
    ["data", "synth", "x", "--n-source", "-3"],
    ["data", "synth", "x", "--resized-twins", "1.3"],  # a resized twin shrinks its tumour: 0 < F <= 1
    ["data", "split", "c", "--k", "0"],
    ["data", "prepare", "adni", "x", "--out", "y"],
    ["train", "vae", "--data", "c", "--out", "o", "--budget-s", "0"],
])
def test_bad_values_rejected(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_split_and_verify_commands(prepared_cache, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert main(["data", "split", str(prepared_cache), "--domain", "target", "--k", "2", "--n-test", "2",
                 "--folds", "2", "--repeats", "1", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["data", "split", str(prepared_cache), "--k", "7", "--n-test", "2"]) == 2
    assert "exceed the 8 patients" in capsys.readouterr().err
    assert main(["data", "verify", str(prepared_cache)]) == 0


def test_train_budget_flag_sets_the_stage_budget(prepared_cache, tmp_path, capsys):
    """``--budget-s`` reaches the stage it trains (run.json records the fit); with --steps it is refused."""
    import json

    out = tmp_path / "vae"
    assert main(["train", "vae", "--data", str(prepared_cache), "--out", str(out), "--profile", "tiny",
                 "--budget-s", "0.5", "--quiet"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["budget"]["budget_s"] == 0.5 and info["budget"]["steps"] >= 1
    assert json.loads((out / "config.json").read_text())["train_vae"]["steps"] == info["budget"]["steps"]
    capsys.readouterr()
    assert main(["train", "vae", "--data", str(prepared_cache), "--out", str(tmp_path / "x"), "--profile", "tiny",
                 "--budget-s", "1", "--steps", "3", "--quiet"]) == 2
    assert "not both" in capsys.readouterr().err


def test_every_train_subcommand_parses_its_options():
    """Each train subcommand takes the options README lists for it (a misplaced add_argument drops one)."""
    from aldm.cli import build_parser

    parser = build_parser()
    common = ["--data", "c", "--out", "o", "--budget-s", "2", "--seed", "1", "--precision", "fp32", "--quiet"]
    vae = parser.parse_args(["train", "vae", *common, "--probe-every", "5", "--probe-subjects", "a"])
    assert vae.budget_s == 2.0 and vae.probe_every == 5
    ldm = parser.parse_args(["train", "ldm", *common, "--init", "r", "--k", "3", "--condition", "regions",
                             "--from-scratch", "--probe-every", "5"])
    assert ldm.from_scratch and ldm.condition == "regions" and ldm.k == 3
    gan = parser.parse_args(["train", "baseline", "cgan", *common, "--init", "r", "--k", "3", "--n-test", "2",
                             "--condition", "regions+brain"])
    assert gan.condition == "regions+brain" and gan.n_test == 2 and not hasattr(gan, "from_scratch")
    source = parser.parse_args(["train", "source", *common, "--vae", "v", "--condition", "regions",
                                "--select-by-probe", "--probe-every", "5"])
    assert source.vae == "v" and source.select_by_probe and not hasattr(source, "init")
    fewshot = parser.parse_args(["train", "fewshot", *common, "--init", "r", "--split", "s.json", "--from-scratch"])
    assert fewshot.init == "r" and fewshot.split == "s.json" and not hasattr(fewshot, "vae")
    with pytest.raises(SystemExit):  # few-shot adapts a source run: --init is required
        parser.parse_args(["train", "fewshot", *common, "--k", "3"])


def test_train_ldm_says_which_stage_it_chose(tiny_runs, prepared_cache, tmp_path, capsys):
    assert main(["train", "ldm", "--data", str(prepared_cache), "--out", str(tmp_path / "fs"), "--init",
                 tiny_runs["ldm"], "--k", "2", "--n-test", "2", "--steps", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "--init given: few-shot adaptation, as 'aldm train fewshot'" in out
    assert main(["train", "fewshot", "--data", str(prepared_cache), "--out", str(tmp_path / "fs2"), "--init",
                 tiny_runs["ldm"], "--k", "2", "--n-test", "2", "--steps", "1", "--quiet"]) == 0
    assert "as 'aldm train" not in capsys.readouterr().out
