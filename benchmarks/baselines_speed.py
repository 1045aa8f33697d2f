"""Seconds per training step (D + G phases) and per generated sample of each baseline.

Run: ``python benchmarks/baselines_speed.py [--profile paper|small] [--device cuda] [--reps 2]``.
Random weights and data of the profile's size (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from aldm.config import get_profile
from aldm.models.families import GANS
from aldm.train.baselines import GANTask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    prof, device = get_profile(args.profile), torch.device(args.device)
    s, b = prof.image_size, 1
    results = {"profile": prof.name, "device": args.device, "threads": torch.get_num_threads()}
    for kind in GANS:
        task = GANTask(kind, prof, augment=True).to(device)
        opts = {p: torch.optim.AdamW(ps, lr=1e-4) for p, ps in task.parameter_groups().items()}
        mask = torch.zeros(b, 1, s, s, s)
        mask[..., s // 3:s // 2, s // 3:s // 2, s // 3:s // 2] = 1
        batch = {"image": torch.rand(b, 3, s, s, s) * 2 - 1, "mask": mask, "control": torch.rand(b, 3, s, s, s),
                 "domain": torch.ones(b), "noise": torch.randn(b, *task.generator.noise_shape),
                 "eps_posterior": torch.randn(b, prof.vae.latent_channels, *(prof.latent_size,) * 3),
                 "aug_seed": torch.tensor([1])}

        def step(task=task, opts=opts, batch=batch):
            for phase in ("d", "g"):
                opts[phase].zero_grad(set_to_none=True)
                loss, _ = task(batch, 0, 10, phase)
                loss.backward()
                opts[phase].step()

        step()
        start = time.perf_counter()
        for _ in range(args.reps):
            step()
        results[f"{kind}_train_step_s"] = round((time.perf_counter() - start) / args.reps, 3)
        gen = task.generator.eval()
        with torch.inference_mode():
            gen(batch["control"].to(device), batch["domain"].to(device), batch["noise"].to(device))
            start = time.perf_counter()
            for _ in range(args.reps):
                gen(batch["control"].to(device), batch["domain"].to(device), batch["noise"].to(device))
            results[f"{kind}_sample_s"] = round((time.perf_counter() - start) / args.reps, 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
