"""What a VAE recipe lets ALDM reach at most, per BraTS region: train VAEs of one experiment's settings with
different options on its source cache and score each one's reconstruction bound on its held-out test patients
(:func:`aldm.experiments.table1.vae_bound`: mask Dice per region by the experiment's own segmenter, the
region-contrast checks, sharpness, 3D SSIM), beside the bound of the experiment's own VAE.

    python benchmarks/vae_bound.py --experiment aldm-demo-regions/table1 \\
        --recipe plain --recipe decoder_regions=true --recipe tumour_weight=2 --out vae-bound.json

Each ``--recipe`` is ``plain`` (the experiment's profile as it is, decoder_regions off) or comma-separated
``VAEConfig`` overrides (``decoder_regions=true,tumour_weight=2``). Every VAE trains the steps (or the seconds of
``--budget-s``) of the experiment's VAE stage with its seed: only the recipe differs. Needs a finished
``aldm experiment table1`` folder (its split, caches and segmenter). Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from aldm.artifacts.cache import PreparedCache  # noqa: E402
from aldm.artifacts.run import Run  # noqa: E402
from aldm.config import get_profile, with_budget, with_condition  # noqa: E402
from aldm.experiments.common import ExperimentConfig, real_items  # noqa: E402
from aldm.experiments.table1 import vae_bound  # noqa: E402
from aldm.train.requests import Runtime, StageRequest  # noqa: E402
from aldm.train.stages import vae_stage  # noqa: E402


def parse_recipe(text: str) -> dict:
    """``plain`` -> {}; ``a=1,b=true`` -> {"a": 1, "b": True} (JSON values)."""
    if text == "plain":
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key.strip()] = json.loads(value)
    return out


def table_row(result: dict) -> str:
    """One Markdown row of a recipe's bound: SSIM, the lowest modality's sharpness, Dice per region, the region
    contrasts (synthetic) and the training seconds."""
    b = result["bound"]
    sharp = min(v for k, v in b["sharpness"].items() if k != "mean")
    dice = " | ".join(f"{b['regions'][n]['dice_mean']:.3f}" if n in b.get("regions", {}) else "" for n in
                      ("WT", "TC", "ET"))
    contrasts = ", ".join(f"{c['synthetic']:.2f}" for c in b["region_contrast"]["checks"])
    seconds = f"{result['train_s']:.0f}" if result["train_s"] else ""
    return f"| {result['recipe']} | {b['ssim_3d_mean']:.3f} | {sharp:.2f} | {dice} | {contrasts} | {seconds} |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="a finished aldm experiment table1 folder")
    parser.add_argument("--recipe", action="append", required=True, help="plain, or VAEConfig overrides a=v,b=w")
    parser.add_argument("--budget-s", type=float, default=None, help="train each VAE for these seconds instead")
    parser.add_argument("--out", default="vae-bound.json")
    parser.add_argument("--runs", default=None, help="where the VAEs are trained (default: next to --out)")
    args = parser.parse_args(argv)

    cfg = ExperimentConfig.load(os.path.join(args.experiment, "config.json"))
    k = max(cfg.k)
    with open(os.path.join(args.experiment, f"split_k{k}.json"), encoding="utf-8") as fh:
        test = json.load(fh)["test"]
    items = real_items(cfg.target_cache, test)
    segmenter = os.path.join(args.experiment, "segmenter")
    base = with_condition(get_profile(cfg.profile), cfg.condition)
    steps = (cfg.steps or {}).get("vae")
    runs_dir = args.runs or os.path.splitext(args.out)[0] + "-runs"
    results = []
    own = os.path.join(args.experiment, "cells", "vae-reconstruction.json")
    if os.path.exists(own):
        with open(own, encoding="utf-8") as fh:
            results.append({"recipe": "the experiment's own VAE", "bound": json.load(fh), "train_s": None})
    for text in args.recipe:
        overrides = parse_recipe(text)
        profile = replace(base, vae=replace(base.vae, **{"decoder_regions": False, **overrides}))
        if args.budget_s:
            profile = with_budget(profile, "train_vae", args.budget_s)
        run = os.path.join(runs_dir, text.replace(",", "_").replace("=", "-"))
        if not os.path.exists(os.path.join(run, "weights.pt")):
            vae_stage(StageRequest(cfg.source_cache, run, profile, steps=None if args.budget_s else steps,
                                   seed=cfg.seed, runtime=Runtime(resume=os.path.exists(run), progress=False)))
        seconds = Run(run).total_train_seconds()
        bound = vae_bound(run, segmenter, items, PreparedCache(cfg.target_cache).modalities)
        results.append({"recipe": text, "bound": bound, "train_s": seconds})
        print(f"{text}: {json.dumps(bound['regions'])}", file=sys.stderr)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    print("| recipe | SSIM 3D | sharpness (lowest) | WT Dice | TC | ET | contrasts oedema/FLAIR, necrosis/T1, "
          "enhancing/T1c | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(table_row(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
