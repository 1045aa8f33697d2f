"""Seconds per edited volume against seconds per generated volume, side by side in one process.

Run: ``python benchmarks/edit_speed.py --model RUN [--repeats 3] [--steps 20]`` on a finished few-shot ALDM run
(its first held-out patient, a transplant of the second's tumour). The target: one edit (20 sampler steps) in at
most the time of one generation — an edit adds the encoder pass, the region maps and the blend, and the
sampler's network evaluations are the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from aldm.artifacts.run import Run
from aldm.diffusion.settings import GenerationSettings
from aldm.editing.editor import EditSettings, edit_volume
from aldm.editing.operations import placed_inside
from aldm.editing.subjects import from_cache
from aldm.pipeline import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    run = Run(args.model)
    test = run.split()["test"]
    subject, donor = (from_cache(run.data, name, run.modalities) for name in test[:2])
    pipe = load_pipeline(args.model, device="cpu", precision="fp32")
    settings = pipe.validate(GenerationSettings(steps=args.steps))
    new = placed_inside(donor.labels, subject.brain, 0)
    labels = torch.from_numpy(new[None, None].astype(np.float32))
    brain = torch.from_numpy(subject.brain[None, None].astype(np.float32))
    timings = {"generate": [], "edit": []}
    for i in range(args.repeats + 1):  # the first round warms up
        start = time.perf_counter()
        pipe(labels, settings, generator=[i], brain=brain)
        generate_s = time.perf_counter() - start
        start = time.perf_counter()
        edit_volume(pipe, subject, new, settings, EditSettings(), i)
        edit_s = time.perf_counter() - start
        if i:
            timings["generate"].append(generate_s)
            timings["edit"].append(edit_s)
    out = {k: round(statistics.median(v), 2) for k, v in timings.items()}
    out["edit_over_generate"] = round(out["edit"] / out["generate"], 2)
    out.update(image_size=pipe.profile.image_size, steps=settings.steps, threads=torch.get_num_threads())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
