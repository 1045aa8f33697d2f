"""Learning curves from the held-out probes (``probe.csv`` of run folders) as one PNG.

The trainer redraws ``RUN/probe.png`` after every probe; the Table 1 report draws every ALDM stage
side by side. VAE runs show 3D SSIM per modality, LDM runs the noise-prediction MSE per timestep
band (:mod:`aldm.train.probes`), against the training step.
"""

from __future__ import annotations

import csv
import os


def plot_probe_curves(runs: list[tuple[str, str]], path: str) -> bool:
    """One panel per (title, run folder) whose ``probe.csv`` has rows; written to ``path``. False (and
    nothing written) when no run has probes."""
    found = []
    for title, folder in runs:
        probe = os.path.join(folder, "probe.csv")
        if os.path.exists(probe):
            with open(probe, encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit()]
            if rows:
                found.append((title, rows))
    if not found:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_path

    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.4), squeeze=False)
    for ax, (title, rows) in zip(axes[0], found):
        steps = [int(r["step"]) for r in rows]
        keys = [k for k in rows[0] if k.startswith(("ssim_", "mse_"))]
        for key in keys:
            ax.plot(steps, [float(r[key]) for r in rows], marker=".", label=key)
        kind = "3D SSIM (held out)" if keys and keys[0].startswith("ssim") else "noise MSE (held out)"
        ax.set_title(f"{title}: {kind}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True
