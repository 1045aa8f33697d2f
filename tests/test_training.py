"""The trainer: exact resume, checkpoint fallback, non-finite steps, overfitting, 2-process DDP on gloo."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from aldm.config import TrainConfig, tiny
from aldm.data.cache import DatasetSource, prepare_dataset
from aldm.data.preprocess import PrepConfig
from aldm.errors import AldmError
from aldm.train.trainer import Trainer
from tests.training import train_ldm, train_vae


def _weights(run):
    return torch.load(os.path.join(run, "weights.pt"), weights_only=True)


def _equal_state(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal_state(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def _interrupted_copy(src, dst):
    """The state of ``src`` as if it had been killed right after its previous checkpoint (step 2 of 4)."""
    os.makedirs(dst)
    for name in ("run.json", "config.json"):
        shutil.copy(src / name, dst / name)
    shutil.copy(src / "checkpoint-prev.pt", dst / "checkpoint.pt")


def test_vae_resume_equals_uninterrupted(prepared_cache, tmp_path):
    cache = str(prepared_cache)
    train_vae(cache, str(tmp_path / "straight"), tiny(), steps=4, progress=False)  # checkpoints at 2 and 4
    _interrupted_copy(tmp_path / "straight", tmp_path / "resumed")
    with pytest.raises(AldmError, match="already holds a run"):
        train_vae(cache, str(tmp_path / "resumed"), tiny(), steps=4, progress=False)
    train_vae(cache, str(tmp_path / "resumed"), tiny(), steps=4, resume=True, progress=False)
    assert _equal_state(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))
    # a different seed really gives different weights (the comparison above can fail)
    train_vae(cache, str(tmp_path / "other"), tiny(), steps=4, seed=1, progress=False)
    assert not _equal_state(_weights(tmp_path / "straight"), _weights(tmp_path / "other"))


def test_a_cosine_schedule_decays_the_logged_rate_and_resumes_exactly(prepared_cache, tmp_path):
    """lr_schedule "cosine": warm-up, then the rate falls every update towards 0 (the trainer's log shows each
    update's rate), "constant" keeps it; a cosine run killed at its checkpoint resumes to the same weights."""
    cache = str(prepared_cache)

    def profile(schedule):
        return dataclasses.replace(tiny(), train_vae=dataclasses.replace(tiny().train_vae, lr_schedule=schedule,
                                                                        warmup_steps=1))

    def rates(run):
        with open(run / "metrics.csv", encoding="utf-8") as fh:
            return [float(r["lr"]) for r in csv.DictReader(fh)]

    train_vae(cache, str(tmp_path / "cos"), profile("cosine"), steps=4, progress=False)
    train_vae(cache, str(tmp_path / "flat"), profile("constant"), steps=4, progress=False)
    lr = tiny().train_vae.lr
    cos, flat = rates(tmp_path / "cos"), rates(tmp_path / "flat")
    assert flat == pytest.approx([lr] * 4)
    # warm-up (1 update), then 0.5 (1 + cos(pi k / 3)) for k = 0, 1, 2 of the 3 updates after it
    assert cos == pytest.approx([lr, lr, 0.75 * lr, 0.25 * lr])
    assert not _equal_state(_weights(tmp_path / "cos"), _weights(tmp_path / "flat"))
    _interrupted_copy(tmp_path / "cos", tmp_path / "resumed")
    train_vae(cache, str(tmp_path / "resumed"), profile("cosine"), steps=4, resume=True, progress=False)
    assert _equal_state(_weights(tmp_path / "cos"), _weights(tmp_path / "resumed"))
    with pytest.raises(AldmError, match="lr_schedule must be one of constant, cosine"):
        TrainConfig(lr_schedule="linear")


def test_ldm_resume_equals_uninterrupted(prepared_cache, tiny_runs, tmp_path):
    cache = str(prepared_cache)
    train_ldm(cache, str(tmp_path / "a"), vae_run=tiny_runs["vae"], steps=4, progress=False)
    _interrupted_copy(tmp_path / "a", tmp_path / "b")
    train_ldm(cache, str(tmp_path / "b"), vae_run=tiny_runs["vae"], steps=4, resume=True, progress=False)
    assert _equal_state(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_corrupted_checkpoint_falls_back_to_previous(prepared_cache, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny()
    cfg.train_vae = dataclasses.replace(cfg.train_vae, checkpoint_every=1)
    train_vae(str(prepared_cache), str(run), cfg, steps=3, progress=False)
    (run / "checkpoint.pt").write_bytes(b"garbage")
    train_vae(str(prepared_cache), str(run), cfg, steps=4, resume=True, progress=False)
    assert "cannot resume from it" in capsys.readouterr().err
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert rows[-1]["step"] == "4" and rows[-2]["step"] == "3"  # resumed from step 2 (the previous checkpoint)


def test_unusable_checkpoints_say_what_is_wrong_in_words(tmp_path):
    from aldm.errors import AldmError

    torch.save({"weights": torch.zeros(2)}, tmp_path / "checkpoint.pt")  # a torch file, but not a checkpoint
    (tmp_path / "checkpoint-prev.pt").write_bytes(b"cut short")
    trainer = Trainer(_NaNOnce(), lambda step, rank: torch.ones(3), TrainConfig(steps=1), str(tmp_path), progress=False)
    with pytest.raises(AldmError) as caught:
        trainer.resume()
    message = str(caught.value)
    assert "no usable checkpoint" in message and "checkpoint.pt: not a training checkpoint of aldm" in message
    assert "checkpoint-prev.pt: unreadable: truncated, damaged or not a torch file" in message


class _NaNOnce(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, batch, step, total):
        loss = (self.w * batch).sum()
        return (loss * float("nan") if step == 1 else loss), {}


def test_non_finite_step_is_skipped(tmp_path, capsys):
    cfg = TrainConfig(steps=3, lr=0.1, warmup_steps=1, checkpoint_every=10, log_every=1)
    trainer = Trainer(_NaNOnce(), lambda step, rank: torch.ones(3), cfg, str(tmp_path), progress=False)
    last = trainer.run()
    assert last["skipped_steps"] == 1
    assert torch.isfinite(trainer.task.w).all()
    assert "non-finite" in capsys.readouterr().err


class _AlwaysNaN(_NaNOnce):
    def forward(self, batch, step, total):
        return (self.w * batch).sum() * float("nan"), {}


def test_too_many_non_finite_steps_stop_the_run(tmp_path):
    cfg = TrainConfig(steps=30, lr=0.1, warmup_steps=1, checkpoint_every=100, log_every=1)
    trainer = Trainer(_AlwaysNaN(), lambda step, rank: torch.ones(3), cfg, str(tmp_path), progress=False)
    with pytest.raises(AldmError, match="11 non-finite steps"):
        trainer.run()
    assert torch.equal(trainer.task.w, torch.ones(3))  # never stepped on NaN


def test_resume_refuses_changed_data(prepared_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(prepared_cache, cache)
    train_vae(str(cache), str(tmp_path / "run"), tiny(), steps=2, progress=False)
    manifest = cache / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:-1]))  # one subject fewer
    with pytest.raises(AldmError, match="changed since the run started"):
        train_vae(str(cache), str(tmp_path / "run"), tiny(), steps=4, resume=True, progress=False)
    info = json.load(open(tmp_path / "run" / "run.json"))
    assert len(info["data_manifest_sha256"]) == 64


@pytest.mark.slow
def test_tiny_vae_overfits_two_volumes(phantom_root, tmp_path):
    cache = tmp_path / "two"
    prepare_dataset(DatasetSource("upenn-gbm", str(phantom_root / "UPENN-GBM"), limit=2),
                    str(cache), PrepConfig(size=32),
                    progress=False)
    cfg = tiny()
    cfg.train_vae = dataclasses.replace(cfg.train_vae, steps=60, lr=3e-3, warmup_steps=5, log_every=1,
                                        checkpoint_every=100)
    train_vae(str(cache), str(tmp_path / "run"), cfg, progress=False)
    rec = [float(r["rec"]) for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))]
    assert min(rec[-5:]) < rec[0] / 2.5


@pytest.mark.slow
def test_two_process_ddp_on_gloo(prepared_cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aldm.cli",
           "train", "vae", "--data", str(prepared_cache), "--out", str(tmp_path / "ddp"), "--profile", "tiny",
           "--steps", "3", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    info = json.load(open(tmp_path / "ddp" / "run.json"))
    assert info["world_size"] == 2
    rows = list(csv.DictReader(open(tmp_path / "ddp" / "metrics.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "ddp")["vae"].values())


def test_initial_weights_depend_on_the_seed_only(prepared_cache, tiny_runs, tmp_path):
    torch.manual_seed(123)  # whatever the global random state before the call...
    train_ldm(str(prepared_cache), str(tmp_path / "a"), vae_run=tiny_runs["vae"], steps=1, progress=False)
    torch.manual_seed(456)
    train_ldm(str(prepared_cache), str(tmp_path / "b"), vae_run=tiny_runs["vae"], steps=1, progress=False)
    assert _equal_state(_weights(tmp_path / "a"), _weights(tmp_path / "b"))  # ...same seed, same model


def test_resume_after_the_last_step_only_writes_weights(prepared_cache, tmp_path, capsys):
    """Killed between the final checkpoint and weights.pt: --resume trains nothing and writes weights."""
    from aldm.cli import main

    run = tmp_path / "run"
    train_vae(str(prepared_cache), str(run), tiny(), steps=2, progress=False)
    expected = _weights(run)
    os.remove(run / "weights.pt")
    assert main(["train", "vae", "--data", str(prepared_cache), "--out", str(run), "--profile", "tiny", "--steps",
                 "2", "--resume", "--quiet"]) == 0
    assert "all 2 steps were done" in capsys.readouterr().out
    assert _equal_state(expected, _weights(run))


def test_resume_takes_the_runs_own_profile(prepared_cache, tmp_path, capsys):
    from aldm.cli import main

    run = tmp_path / "run"
    train_vae(str(prepared_cache), str(run), tiny(), steps=2, progress=False)
    os.remove(run / "weights.pt")
    # no --profile: the run's own (tiny), not the default (small, 64^3, which would not fit the 32^3 cache)
    assert main(["train", "vae", "--data", str(prepared_cache), "--out", str(run), "--resume", "--quiet"]) == 0
    os.remove(run / "weights.pt")
    capsys.readouterr()
    assert main(["train", "vae", "--data", str(prepared_cache), "--out", str(run), "--resume", "--profile", "small",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "started with profile 'tiny'" in err[0] and "image_size" in err[0]
    config = run / "config.json"
    config.write_text(config.read_text()[:200])
    assert main(["train", "vae", "--data", str(prepared_cache), "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(config) in err[0] and "not a valid aldm config" in err[0]


@pytest.mark.slow
def test_gpu_profile_trains_one_step_of_each_stage_at_32(prepared_cache, tmp_path):
    """The ``gpu`` profile (paper widths, v-prediction, EMA warm-up, VAE on crops) at 32^3: one step of the
    VAE, source LDM, few-shot and a baseline, each leaving finished weights."""
    from aldm.artifacts.run import Run
    from aldm.config import get_profile
    from tests.training import train_baseline

    gpu = get_profile("gpu")
    assert gpu.diffusion.prediction == "v" and gpu.train_ldm.ema_warmup and gpu.vae.channels == (64, 128, 256)
    profile = dataclasses.replace(gpu, image_size=32, vae=dataclasses.replace(gpu.vae, train_crop=16),
                                  **{s: dataclasses.replace(getattr(gpu, s), precision="fp32", checkpoint_every=1)
                                     for s in ("train_vae", "train_ldm", "train_fewshot", "train_baseline",
                                               "train_baseline_fewshot")})
    cache = str(prepared_cache)
    train_vae(cache, str(tmp_path / "vae"), profile, steps=1, progress=False)
    train_ldm(cache, str(tmp_path / "ldm"), profile, vae_run=str(tmp_path / "vae"), steps=1, progress=False)
    train_ldm(cache, str(tmp_path / "fewshot"), profile, init_run=str(tmp_path / "ldm"), k=2, n_test=2, steps=1,
              progress=False)
    train_baseline("cgan", cache, str(tmp_path / "cgan"), profile, steps=1, progress=False)
    for name in ("vae", "ldm", "fewshot", "cgan"):
        run = Run(str(tmp_path / name)).require_finished()
        assert run.profile.name == "gpu" and run.profile.vae.channels == (64, 128, 256)
        # an ALDM run holds its diffusion config; a GAN run holds its own networks' and nothing of ALDM's
        assert run.profile.diffusion.prediction == "v" if name != "cgan" else "diffusion" not in run.profile_parts()
    assert Run(str(tmp_path / "cgan")).profile.baseline == gpu.baseline


def _adversarial(profile, **vae):
    """``profile`` with the VAE's adversarial patch loss on (a small discriminator, starting at step 1 of 4)."""
    settings = {"adv_weight": 0.1, "adv_start_fraction": 0.25, "disc_channels": 4, "disc_layers": 2, **vae}
    return dataclasses.replace(profile, vae=dataclasses.replace(profile.vae, **settings))


def test_adversarial_vae_resumes_exactly_and_starts_after_its_warm_up(prepared_cache, tmp_path):
    """The adversarial VAE stage (issue 23): the discriminator trains from adv_start on, its term is logged,
    a run resumed after the adversary started ends on the uninterrupted run's weights (discriminator and
    optimisers included), and weights.pt holds the VAE alone (what the LDM stage loads)."""
    from aldm.io.checkpoint import load_checkpoint

    cache, profile = str(prepared_cache), _adversarial(tiny())
    train_vae(cache, str(tmp_path / "straight"), profile, steps=4, progress=False)
    with open(tmp_path / "straight" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["d_loss"] == "nan" and float(rows[0]["adv"]) == 0.0  # step 0: before the adversary
    assert all(float(r["d_loss"]) > 0 and float(r["adv"]) > 0 for r in rows[1:])
    _interrupted_copy(tmp_path / "straight", tmp_path / "resumed")  # its checkpoint: step 2, adversary running
    train_vae(cache, str(tmp_path / "resumed"), profile, steps=4, resume=True, progress=False)
    assert _equal_state(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))
    final = [load_checkpoint(str(tmp_path / r / "checkpoint.pt")) for r in ("straight", "resumed")]
    assert _equal_state(final[0]["model"], final[1]["model"])
    assert any(k.startswith("discriminator.") for k in final[0]["model"])
    assert _weights(tmp_path / "straight")["vae"].keys() == _weights_of_plain_vae(cache, tmp_path).keys()
    # the adversary changes the VAE (the comparison above can fail)
    assert not _equal_state(_weights(tmp_path / "straight"), _weights(tmp_path / "plain"))


def _weights_of_plain_vae(cache, tmp_path):
    train_vae(cache, str(tmp_path / "plain"), tiny(), steps=4, progress=False)
    return _weights(tmp_path / "plain")["vae"]


def test_a_discriminator_too_deep_for_the_training_cubes_is_refused(prepared_cache, tmp_path):
    with pytest.raises(AldmError, match="disc_layers = 4 is too deep for 32"):
        train_vae(str(prepared_cache), str(tmp_path / "run"), _adversarial(tiny(), disc_layers=4), steps=1,
                  progress=False)


def test_training_seconds_add_up_over_a_resume_and_old_logs_keep_their_columns(prepared_cache, tmp_path):
    """``train_s`` (what a run cost, issue 24) is logged, kept in the checkpoint and carried over a resume; a
    run begun before the column existed is resumed into a well-formed metrics.csv with its own header."""
    from aldm.io.checkpoint import load_checkpoint

    cache = str(prepared_cache)
    train_vae(cache, str(tmp_path / "straight"), tiny(), steps=4, progress=False)
    with open(tmp_path / "straight" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    spent = [float(r["train_s"]) for r in rows]
    assert all(b > a > 0 for a, b in zip(spent, spent[1:]))
    assert load_checkpoint(str(tmp_path / "straight" / "checkpoint.pt"))["train_s"] == pytest.approx(spent[-1])
    _interrupted_copy(tmp_path / "straight", tmp_path / "resumed")
    resumed_at = load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))["train_s"]
    old = [{k: v for k, v in r.items() if k != "train_s"} for r in rows[:2]]  # as an older version wrote it
    with open(tmp_path / "resumed" / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(old[0]))
        writer.writeheader()
        writer.writerows(old)
    train_vae(cache, str(tmp_path / "resumed"), tiny(), steps=4, resume=True, progress=False)
    with open(tmp_path / "resumed" / "metrics.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == list(old[0]) and len(table) == 5 and all(len(r) == len(table[0]) for r in table)
    assert [r[0] for r in table[1:]] == ["1", "2", "3", "4"]
    final = load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))["train_s"]
    assert final > resumed_at > 0


def _budgeted(profile, stage, seconds):
    from aldm.config import with_budget

    return with_budget(profile, stage, seconds)


def test_a_budget_fits_the_steps_once_and_resume_trains_the_same_ones(prepared_cache, tmp_path):
    """A stage given seconds instead of steps (issue 24): its step count is fitted from timed steps, recorded
    in run.json and config.json, and a resumed run trains those steps to the uninterrupted run's weights."""
    from aldm.artifacts.run import Run

    cache, profile = str(prepared_cache), _budgeted(tiny(), "train_vae", 1.5)
    train_vae(cache, str(tmp_path / "straight"), profile, progress=False)
    run = Run(str(tmp_path / "straight"))
    fit = run.info["budget"]
    assert fit["budget_s"] == 1.5 and fit["steps"] == max(1, int(1.5 / fit["sec_per_step"]))
    assert run.profile.train_vae.steps == fit["steps"] != tiny().train_vae.steps
    with open(run.file("metrics.csv"), newline="") as fh:
        assert int(list(csv.DictReader(fh))[-1]["step"]) == fit["steps"]
    if fit["steps"] < 3:
        pytest.skip(f"this machine fits only {fit['steps']} tiny VAE steps in 1.5 s; nothing to interrupt")
    _interrupted_copy(tmp_path / "straight", tmp_path / "resumed")
    train_vae(cache, str(tmp_path / "resumed"), profile, resume=True, progress=False)
    assert Run(str(tmp_path / "resumed")).info["budget"] == fit  # not measured again
    assert _equal_state(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))


def test_a_baseline_stage_trains_to_its_budget(prepared_cache, tmp_path):
    from aldm.artifacts.run import Run
    from tests.training import train_baseline

    profile = _budgeted(tiny(), "train_baseline", 2.0)
    train_baseline("cgan", str(prepared_cache), str(tmp_path / "cgan"), profile, progress=False)
    run = Run(str(tmp_path / "cgan")).require_finished()
    assert run.profile.train_baseline.steps == run.info["budget"]["steps"] >= 1
    assert run.train_seconds is not None and run.train_seconds > 0


def test_the_no_pretraining_ablation_starts_from_random_weights_not_the_source_model(prepared_cache, tiny_runs,
                                                                                      tmp_path):
    """``from_scratch`` (issue 24's ablation): the few-shot stage's denoiser starts from seeded random weights
    (one step away from them, far from the source model), on the same VAE; its cost counts the VAE, not the
    source LDM it took the VAE from."""
    from aldm.artifacts.run import Run
    from aldm.io.checkpoint import save_checkpoint

    # a source model far from any initialisation (the tiny one trained 4 steps from the same seed's init)
    cache, source = str(prepared_cache), str(tmp_path / "source")
    shutil.copytree(tiny_runs["ldm"], source)
    weights = Run(source).weights()
    weights["denoiser"] = {k: v + 0.5 if v.is_floating_point() else v for k, v in weights["denoiser"].items()}
    save_checkpoint(os.path.join(source, "weights.pt"), weights)
    common = {"init_run": source, "k": 2, "n_test": 2, "steps": 1, "progress": False}
    train_ldm(cache, str(tmp_path / "adapted"), **common)
    train_ldm(cache, str(tmp_path / "scratch"), from_scratch=True, **common)
    parent = weights["denoiser"]

    def distance(run):
        state = _weights(tmp_path / run)["denoiser"]
        return sum(float((state[k].float() - parent[k].float()).norm()) for k in parent
                   if parent[k].is_floating_point())

    assert distance("scratch") > 10 * distance("adapted")
    assert _equal_state(Run(str(tmp_path / "scratch")).vae_state(), Run(source).vae_state())
    lineage = [os.path.basename(r.path) for r in Run(str(tmp_path / "scratch")).lineage()]
    assert lineage == ["scratch", "vae"] and [os.path.basename(r.path) for r in
                                              Run(str(tmp_path / "adapted")).lineage()] == ["adapted", "source", "vae"]
    with pytest.raises(AldmError, match="needs --init"):
        train_ldm(cache, str(tmp_path / "bad"), vae_run=tiny_runs["vae"], from_scratch=True, steps=1, progress=False)


class _Quadratic(torch.nn.Module):
    """A toy task: w moves toward the batch every step."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))

    def forward(self, batch, step, total):
        return ((self.w - batch) ** 2).sum(), {}


def _scripted_probe(values: dict, seen: dict):
    """A probe whose selection figure at step s is ``values[s]``; it records the EMA weights it saw."""
    def probe(task, step):
        seen[step] = task.w.detach().clone()
        return {"mse_mean": values[step]}

    probe.selection = "mse_mean"
    return probe


def test_select_by_probe_keeps_the_best_probed_weights_and_resume_selects_the_same(tmp_path):
    """Checkpoint selection (issue 24 item 5): the stage keeps the EMA weights of the probed step with the lowest
    held-out figure (step 4 here), not the last; a run resumed from a checkpoint after that step keeps them too."""
    values, seen = {2: 1.0, 4: 0.5, 6: 0.8, 8: 0.9}, {}
    cfg = TrainConfig(steps=8, lr=0.1, warmup_steps=1, checkpoint_every=3, log_every=1, probe_every=2,
                      select_by_probe=True, ema_decay=0.5)
    straight = Trainer(_Quadratic(), lambda step, rank: torch.ones(3), cfg, str(tmp_path / "a"), progress=False,
                       probe=_scripted_probe(values, seen))
    os.makedirs(tmp_path / "a")
    straight.run()
    assert straight.selected == {"step": 4, "by": "mse_mean", "value": 0.5}
    chosen = straight.selected_task().w
    assert torch.equal(chosen, seen[4]) and not torch.equal(chosen, straight.ema.shadow.w)
    # killed after the checkpoint of step 6 (the selection of step 4 inside it), resumed in a copy of the folder
    os.makedirs(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "checkpoint-prev.pt", tmp_path / "b" / "checkpoint.pt")
    shutil.copy(tmp_path / "a" / "selected.pt", tmp_path / "b" / "selected.pt")
    resumed = Trainer(_Quadratic(), lambda step, rank: torch.ones(3), cfg, str(tmp_path / "b"), progress=False,
                      probe=_scripted_probe(values, {}))
    resumed.resume()
    assert resumed.step == 6
    resumed.run()
    assert resumed.selected == straight.selected and torch.equal(resumed.selected_task().w, chosen)
    # without a probe that names its selection figure, the setting is refused before any training
    with pytest.raises(AldmError, match="select_by_probe needs a held-out probe"):
        Trainer(_Quadratic(), lambda step, rank: torch.ones(3), cfg, str(tmp_path / "c"), progress=False)


def test_a_selecting_few_shot_stage_records_its_choice(prepared_cache, tiny_runs, tmp_path):
    """A few-shot LDM stage with select_by_probe saves the weights of its recorded best probed step."""
    from aldm.artifacts.run import Run
    from aldm.io.checkpoint import load_checkpoint
    from aldm.train.stages import ProbeSubjects

    cache = str(prepared_cache)
    profile = tiny()
    profile = dataclasses.replace(profile, train_fewshot=dataclasses.replace(profile.train_fewshot, probe_every=1,
                                                                            select_by_probe=True))
    split = json.load(open(os.path.join(tiny_runs["fewshot"], "split.json")))
    run_dir = str(tmp_path / "selected")
    train_ldm(cache, run_dir, profile, init_run=tiny_runs["ldm"], split_path=os.path.join(tiny_runs["fewshot"],
                                                                                        "split.json"),
              progress=False, probe=ProbeSubjects(cache, split["test"][:1]))
    run = Run(run_dir)
    chosen = run.info["selected"]
    with open(run.file("probe.csv"), newline="") as fh:
        figures = {int(r["step"]): float(r["mse_mean"]) for r in csv.DictReader(fh)}
    assert chosen["step"] == min(figures, key=figures.get) and chosen["by"] == "mse_mean"
    selected = load_checkpoint(run.file("selected.pt"))
    assert _equal_state(run.weights()["denoiser"], {k.removeprefix("denoiser."): v for k, v in selected.items()
                                                    if k.startswith("denoiser.")})
