"""aldm.precision: bf16 autocast only where the hardware computes bf16 natively."""

from __future__ import annotations

import pytest
import torch

from aldm import precision


def test_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not precision.native_bf16("cpu")
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    for flag in ("amx_bf16", "avx512_bf16"):
        monkeypatch.setattr(precision, "_cpu_flags", lambda flag=flag: frozenset({"avx512f", flag}))
        assert precision.native_bf16("cpu")
        assert precision.resolve_precision("auto", "cpu") == "bf16"
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp16", "cpu")


def test_autocast_runs_convolutions_in_bf16_and_fp32_leaves_them_alone():
    conv, x = torch.nn.Conv3d(2, 4, 3), torch.randn(1, 2, 5, 5, 5)
    with precision.autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32
