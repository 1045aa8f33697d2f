"""Seconds per subject of ``aldm data synth`` and ``aldm data prepare`` on one core.

Run: ``python benchmarks/data_speed.py --n 6`` (writes into a temporary folder, prints a table).
The issue's target: a phantom subject takes at most ~2 s of one core.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from aldm.data.cache import DatasetSource, prepare_dataset
from aldm.data.phantom import synthesize_subject
from aldm.data.phenotype import sample_phenotype
from aldm.data.preprocess import PrepConfig
from aldm.data.synth import synth_cohorts
from aldm.data.template import load_template


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=6, help="subjects per domain")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_template()
    import numpy as np

    synthesize_subject(sample_phenotype("source", np.random.default_rng(0)), 0)  # warm caches
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synth_cohorts(tmp, args.n, args.n, seed=1, workers=1, progress=False)
        results["synth_s_per_subject_with_writing"] = (time.perf_counter() - start) / (2 * args.n)
        start = time.perf_counter()
        for i in range(args.n):
            synthesize_subject(sample_phenotype("target", np.random.default_rng(i)), i)
        results["synth_s_per_subject_in_memory"] = (time.perf_counter() - start) / args.n
        for mode in ("resize", "crop-pad"):
            start = time.perf_counter()
            prepare_dataset(DatasetSource("ucsf-pdgm", f"{tmp}/UCSF-PDGM"), f"{tmp}/cache-{mode}",
                            PrepConfig(size=112, mode=mode), progress=False)
            results[f"prepare_{mode}_112_s_per_subject"] = (time.perf_counter() - start) / args.n
    print(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
