"""``aldm --deterministic``: ask PyTorch for bitwise-reproducible kernels (see docs/reliability.md).

On the CPU, a run is already bit-for-bit repeatable for one seed, config, thread count and torch
build (tests/test_kill_resume.py compares whole trainings). On CUDA several kernels are not:
cuDNN may pick different convolution algorithms per run (``benchmark``) and some pick
non-deterministic ones; trilinear upsampling's backward accumulates with atomic adds; TF32
matmuls change the rounding. :func:`force_determinism` switches all of these off;
:func:`aldm.models.blocks.upsample_trilinear` then uses an exact transposed-convolution form of
the x2 trilinear upsampling instead of the atomic-add kernel. Expect slower training.
"""

from __future__ import annotations

import os

import torch


def force_determinism() -> None:
    """Deterministic algorithms everywhere (an op without one raises), no cuDNN autotuning, no TF32."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def determinism_requested(flag: bool = False) -> bool:
    """Whether bitwise-reproducible kernels were asked for (``--deterministic`` or ALDM_DETERMINISTIC)."""
    return flag or os.environ.get("ALDM_DETERMINISTIC", "") not in ("", "0")
