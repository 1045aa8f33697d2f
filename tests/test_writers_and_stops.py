"""One writer per folder, full disks and pre-emption, on real ``aldm`` subprocesses.

* two trainings started on one run folder: the second gets one line naming the folder and the PID of
  the first, exits 2 and touches nothing; a killed holder leaves no stale lock;
* SIGTERM mid-training: the step finishes, a checkpoint is written, exit status 75; ``--resume`` ends
  bit for bit where an uninterrupted run ends; SIGTERM mid-generation keeps whole samples only;
* writes that fail for an OS reason (a file size limit set with RLIMIT_FSIZE: a real EFBIG from the
  kernel, as mounting a small tmpfs needs privileges a test cannot assume): one line, exit 2, no
  temporary files, and the same command resumes once the limit is gone; a checkpoint that cannot fit
  in the free space is refused before anything is moved.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from aldm.artifacts.samples import SampleSet
from aldm.diffusion.settings import GenerationSettings
from aldm.errors import AldmError
from aldm.io.atomic import WriteFailed
from aldm.io.lock import LOCK_FILE, FolderBusy, exclusive_writer

pytestmark = pytest.mark.slow  # real subprocesses; see pyproject.toml

STEPS = 40
WRITER_STEPS = 400  # ~14 s: still at work when a second process has started (~5 s); stopped once it was refused


def _aldm(*args):
    return [sys.executable, "-m", "aldm.cli", *map(str, args)]


def _profile(folder, steps: int) -> str:
    """The tiny profile with ``steps`` VAE steps, checkpoints only at the end and one log row per step."""
    from aldm.config import tiny

    profile = tiny()
    profile = dataclasses.replace(profile, train_vae=dataclasses.replace(profile.train_vae, steps=steps,
                                                                         checkpoint_every=1000, log_every=1))
    path = folder / "profile.json"
    profile.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def long_profile(tmp_path_factory):
    """The tiny profile with STEPS VAE steps (see :func:`_profile`)."""
    return _profile(tmp_path_factory.mktemp("stops"), STEPS)


def _wait_for_rows(path: str, rows: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(path):
            with open(path) as fh:
                if sum(1 for _ in fh) > rows:
                    return
        time.sleep(0.02)
    raise AssertionError(f"{path}: fewer than {rows} rows before the process ended")


def _weights(run):
    return torch.load(os.path.join(run, "weights.pt"), weights_only=True)


def _same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_a_second_writer_is_refused_and_touches_nothing(prepared_cache, tmp_path):
    run = tmp_path / "run"
    args = ("train", "vae", "--data", prepared_cache, "--profile", _profile(tmp_path, WRITER_STEPS), "--out", run,
            "--quiet")
    first = subprocess.Popen(_aldm(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(str(run / "metrics.csv"), 2, first)
    before = sorted(os.listdir(run))
    second = subprocess.run(_aldm(*args), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and str(run) in lines[0] and f"PID {first.pid}" in lines[0], second.stderr
    first.send_signal(signal.SIGTERM)  # the first writer goes on undisturbed to its own end: a graceful stop
    assert first.wait(timeout=300) == 75, first.stderr.read()[-2000:]
    after = set(os.listdir(run))
    assert set(before) <= after and after - set(before) <= {"weights.pt", "vae.pt", "checkpoint.pt"}
    with open(run / "metrics.csv") as fh:
        steps = [int(line.split(",")[0]) for line in list(fh)[1:]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # one log, the first writer's alone


def test_the_lock_dies_with_its_process_and_is_reentrant(tmp_path):
    folder = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from aldm.io.lock import exclusive_writer\n"
        f"with exclusive_writer({str(folder)!r}, 'run'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusy, match=f"PID {holder.pid}"):
        with exclusive_writer(str(folder), "run"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive_writer(str(folder), "run"), exclusive_writer(str(folder), "run"):  # nested: same process
        assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
    # a writer that fails before writing anything leaves no folder behind
    with pytest.raises(AldmError):
        with exclusive_writer(str(tmp_path / "never"), "run"):
            raise AldmError("bad input")
    assert not (tmp_path / "never").exists()


def test_sigterm_checkpoints_and_resume_is_bit_exact(prepared_cache, long_profile, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    base = ("train", "vae", "--data", prepared_cache, "--profile", long_profile, "--quiet")
    subprocess.run(_aldm(*base, "--out", ref), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(_aldm(*base, "--out", cut), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(str(cut / "metrics.csv"), 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
    err = proc.stderr.read()
    assert "stopped by SIGTERM after step" in err and "--resume" in err, err
    assert (cut / "checkpoint.pt").exists() and not (cut / "weights.pt").exists()
    stopped_at = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert 3 <= stopped_at < STEPS
    subprocess.run(_aldm(*base, "--out", cut, "--resume"), check=True, capture_output=True, timeout=300)
    assert _same(_weights(ref), _weights(cut))
    losses = [[r.split(",")[:2] for r in (run / "metrics.csv").read_text().splitlines()] for run in (ref, cut)]
    assert len(losses[0]) == STEPS + 1 and losses[0] == losses[1]  # the loss log too, row for row


def test_sigterm_during_generation_keeps_whole_samples(tiny_runs, tmp_path):
    out = tmp_path / "gen"
    args = ("generate", "--model", tiny_runs["fewshot"], "--out", out, "--n", 6, "--batch-size", 1, "--steps", 4,
            "--quiet")
    proc = subprocess.Popen(_aldm(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("sample-*/sample.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    if code == 0:
        pytest.skip("generation finished before the signal arrived")
    assert code == 75, proc.stderr.read()
    assert not list(out.glob(".tmp-*"))
    done = len(list(out.glob("sample-*/sample.json")))
    assert 1 <= done < 6 and len(list(out.glob("sample-*"))) == done
    subprocess.run(_aldm(*args), check=True, capture_output=True, timeout=300)
    assert SampleSet(str(out)).verify() == (6, [])


def _file_size_limit(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_failed_write_is_one_line_and_the_same_command_resumes(tiny_runs, prepared_cache, long_profile, tmp_path):
    out = tmp_path / "gen"
    args = ("generate", "--model", tiny_runs["fewshot"], "--out", out, "--n", 3, "--batch-size", 1, "--steps", 2,
            "--quiet")
    limited = subprocess.run(_aldm(*args), capture_output=True, text=True, timeout=300,
                             preexec_fn=_file_size_limit(20_000))
    assert limited.returncode == 2
    lines = limited.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "file size limit" in lines[0] and "free there" in \
        lines[0], limited.stderr
    assert not list(out.glob(".tmp-*")) and not list(out.glob("sample-*/**/.tmp-*"))
    subprocess.run(_aldm(*args), check=True, capture_output=True, timeout=300)
    assert SampleSet(str(out)).verify() == (3, [])
    # training: the checkpoint cannot be written; one line; the same command with --resume continues
    run = tmp_path / "run"
    short = _profile(tmp_path, 4)  # the checkpoint is written (and fails) at the end of a 4-step run
    train = ("train", "vae", "--data", prepared_cache, "--profile", short, "--out", run, "--quiet")
    failed = subprocess.run(_aldm(*train), capture_output=True, text=True, timeout=300,
                            preexec_fn=_file_size_limit(200_000))
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "checkpoint.pt: cannot write" in failed.stderr
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]
    subprocess.run(_aldm(*train, "--resume"), check=True, capture_output=True, timeout=300)
    assert (run / "weights.pt").exists()


def test_a_checkpoint_that_cannot_fit_is_refused_before_anything_moves(tmp_path, monkeypatch):
    import shutil as real_shutil

    from aldm.config import TrainConfig
    from aldm.train.trainer import Trainer

    class _Task(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1000, 1000))

    trainer = Trainer(_Task(), lambda step, rank: None, TrainConfig(steps=1), str(tmp_path), progress=False)
    trainer.save_checkpoint()
    first = (tmp_path / "checkpoint.pt").read_bytes()
    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr("aldm.io.atomic.shutil.disk_usage", lambda p: usage._replace(free=5 * 2**20))
    with pytest.raises(WriteFailed, match=r"checkpoint at step 0 needs about \d+ MB but only 5 MB is free"):
        trainer.save_checkpoint()
    assert (tmp_path / "checkpoint.pt").read_bytes() == first and not (tmp_path / "checkpoint-prev.pt").exists()


def test_samples_that_cannot_fit_are_refused_before_writing(tiny_runs, tmp_path, monkeypatch):
    import shutil as real_shutil

    from aldm.generate import GenerationRequest, GenerationRuntime, generate

    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr("aldm.io.atomic.shutil.disk_usage", lambda p: usage._replace(free=2**20))
    with pytest.raises(WriteFailed, match=r"1 more sample\(s\) needs about .* but only 1 MB is free"):
        generate(GenerationRequest(tiny_runs["fewshot"], str(tmp_path / "gen"), 2, settings=GenerationSettings(steps=2),
                                   runtime=GenerationRuntime(batch_size=1, progress=False)))
    assert not (tmp_path / "gen").exists()  # nothing was written: not even the folder stays
