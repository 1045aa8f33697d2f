"""aldm.precision: bf16 autocast only where the hardware computes it natively and, for training,
correctly; the trainer follows the choice and names the fix when bf16 training breaks down."""

from __future__ import annotations

import json

import pytest
import torch

from aldm import precision
from aldm.config import Profile, TrainConfig, tiny
from aldm.errors import AldmError
from aldm.train.trainer import Trainer

AMX = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16_ONLY = frozenset({"avx512f", "avx512_bf16"})  # AMD Zen 4 (EPYC), Intel Cooper Lake
NO_BF16 = frozenset({"avx2", "avx512f"})


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has the given flags; ALDM_HIDE_CPU_FLAGS still applies on top."""
    monkeypatch.delenv(precision.HIDE_FLAGS_ENV, raising=False)

    def use(flags):
        monkeypatch.setattr(precision, "_proc_cpu_flags", lambda: frozenset(flags))

    return use


@pytest.mark.parametrize("flags, inference, training", [
    (NO_BF16, "fp32", "fp32"),
    (AVX512_BF16_ONLY, "bf16", "fp32"),  # bf16 weight gradients unreliable there (issue 13)
    (AMX, "bf16", "bf16"),
])
def test_auto_decides_inference_and_training_apart(cpu_flags, flags, inference, training):
    cpu_flags(flags)
    assert precision.resolve_precision("auto", "cpu") == inference
    assert precision.resolve_precision("auto", "cpu", training=True) == training
    for forced in ("fp32", "bf16"):
        assert precision.resolve_precision(forced, "cpu", training=True) == forced
    note = precision.training_fallback_note("cpu")
    assert (note is not None) == (inference != training)
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp16", "cpu")


def test_hidden_flags_force_the_non_amx_path(cpu_flags, monkeypatch):
    cpu_flags(AMX)
    monkeypatch.setenv(precision.HIDE_FLAGS_ENV, "amx_bf16, amx_tile")
    assert precision.resolve_precision("auto", "cpu", training=True) == "fp32"
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setenv(precision.HIDE_FLAGS_ENV, "amx_bf16,avx512_bf16")
    assert precision.resolve_precision("auto", "cpu") == "fp32"


def test_autocast_runs_convolutions_in_bf16_and_fp32_leaves_them_alone():
    conv, x = torch.nn.Conv3d(2, 4, 3), torch.randn(1, 2, 5, 5, 5)
    with precision.autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32


class _RecordsDtype(torch.nn.Module):
    """A task whose loss goes through a linear layer; records the dtype autocast gave it."""

    def __init__(self, nan: bool = False):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.nan = nan
        self.dtypes: list = []

    def forward(self, batch, step, total):
        out = self.lin(batch)
        self.dtypes.append(out.dtype)
        loss = out.float().pow(2).mean()
        return (loss * float("nan") if self.nan else loss), {}


@pytest.mark.parametrize("flags, setting, expected", [
    (AMX, "auto", torch.bfloat16), (AVX512_BF16_ONLY, "auto", torch.float32),
    (AVX512_BF16_ONLY, "bf16", torch.bfloat16), (AMX, "fp32", torch.float32),
])
def test_trainer_trains_in_the_resolved_precision(cpu_flags, tmp_path, capsys, flags, setting, expected):
    cpu_flags(flags)
    cfg = TrainConfig(steps=2, warmup_steps=1, checkpoint_every=10, log_every=1, precision=setting)
    task = _RecordsDtype()
    last = Trainer(task, lambda step, rank: torch.ones(2, 3), cfg, str(tmp_path), progress=True).run()
    assert set(task.dtypes) == {expected}
    assert last["precision"] == ("bf16" if expected == torch.bfloat16 else "fp32")
    noted = "training in fp32: this CPU has AVX512-BF16 but no AMX" in capsys.readouterr().err
    assert noted == (flags == AVX512_BF16_ONLY and setting == "auto")


@pytest.mark.parametrize("setting, advice", [("bf16", "--precision fp32"), ("fp32", "lower the learning rate")])
def test_non_finite_guard_names_the_likely_cause(tmp_path, setting, advice):
    cfg = TrainConfig(steps=30, warmup_steps=1, checkpoint_every=100, log_every=1, precision=setting)
    trainer = Trainer(_RecordsDtype(nan=True), lambda step, rank: torch.ones(2, 3), cfg, str(tmp_path),
                      progress=False)
    with pytest.raises(AldmError, match=f"11 non-finite steps .*{advice}"):
        trainer.run()


def test_profiles_read_precision_and_the_older_mixed_precision_field(tmp_path):
    data = tiny().to_dict()
    assert data["train_vae"]["precision"] == "fp32"  # tests never depend on the CPU's bf16
    for old, new in ((True, "auto"), (False, "fp32")):
        data["train_ldm"].pop("precision", None)
        data["train_ldm"]["mixed_precision"] = old
        assert Profile.from_dict(json.loads(json.dumps(data))).train_ldm.precision == new
    data["train_ldm"] = {"precision": "fp16"}
    with pytest.raises(AldmError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        Profile.from_dict(data)
