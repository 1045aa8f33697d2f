"""The allocator the ``aldm`` command re-runs itself with (aldm.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from aldm import allocator


def test_choices(monkeypatch):
    base = {"PATH": os.environ.get("PATH", "")}
    assert allocator.allocator_env("system", base) == ("system", base)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    name, env = allocator.allocator_env("auto", base)
    assert name == "glibc-tuned" and env["MALLOC_MMAP_MAX_"] == "0" and "LD_PRELOAD" not in env
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/opt/libtcmalloc.so.4")
    name, env = allocator.allocator_env("auto", {**base, "LD_PRELOAD": "/x/other.so"})
    assert name == "tcmalloc" and env["LD_PRELOAD"] == "/opt/libtcmalloc.so.4:/x/other.so"
    assert allocator.allocator_env("glibc-tuned", base)[0] == "glibc-tuned"
    with pytest.raises(ValueError, match="ALDM_ALLOCATOR"):
        allocator.allocator_env("fastest", base)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the relaunch is Linux-only")
@pytest.mark.parametrize("choice", ["glibc-tuned", "system"])
def test_the_command_really_relaunches(choice):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.MARK, "MALLOC_MMAP_MAX_")}
    env["ALDM_ALLOCATOR"] = choice
    out = subprocess.run([sys.executable, "-m", "aldm.cli", "--version"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and f"(allocator: {choice})" in out.stdout


def test_missing_tcmalloc_is_said_in_one_line_with_its_cost_and_fix(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    note = allocator.missing_tcmalloc_note({})
    assert note and "\n" not in note and "1.45x" in note and "libgoogle-perftools4" in note
    assert allocator.missing_tcmalloc_note({"ALDM_ALLOCATOR": "glibc-tuned"}) is None
    assert allocator.missing_tcmalloc_note({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}) is None
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/usr/lib/libtcmalloc.so.4")
    assert allocator.missing_tcmalloc_note({}) is None


def test_aldm_tcmalloc_names_the_library_or_none(monkeypatch, tmp_path):
    library = tmp_path / "libtcmalloc.so.4"
    library.write_bytes(b"")
    monkeypatch.setenv("ALDM_TCMALLOC", str(library))
    assert allocator.find_tcmalloc() == str(library)
    monkeypatch.setenv("ALDM_TCMALLOC", str(tmp_path / "missing.so"))
    assert allocator.find_tcmalloc() is None
    monkeypatch.setenv("ALDM_TCMALLOC", "none")
    assert allocator.find_tcmalloc() is None


def test_the_note_comes_with_training_progress_once(monkeypatch, capsys):
    from aldm.config import TrainConfig
    from aldm.train.trainer import Trainer

    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator, "_said", False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("ALDM_ALLOCATOR", raising=False)

    class Task(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, batch, step, total):
            return (self.w - 1).pow(2).sum(), {}

    config = TrainConfig(steps=1, precision="fp32", warmup_steps=0)
    Trainer(Task(), lambda step, rank: {}, config, None, progress=False)
    assert allocator.NO_TCMALLOC_NOTE not in capsys.readouterr().err
    Trainer(Task(), lambda step, rank: {}, config, None, progress=True)
    Trainer(Task(), lambda step, rank: {}, config, None, progress=True)
    assert capsys.readouterr().err.count(allocator.NO_TCMALLOC_NOTE) == 1
