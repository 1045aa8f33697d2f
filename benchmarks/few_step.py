"""Quality per network evaluation: a teacher's samplers against its distilled students, on held-out patients.

Run: ``python benchmarks/few_step.py --teacher RUN --student RUN [--student RUN ...] --real CACHE
--segmenter DIR --out DIR [--n 10] [--guidance 3] [--ddpm-n 2]`` where the students come from
``aldm train distill --teacher RUN`` (one per step count). For each configuration — the teacher with
DPM-Solver++(2M) at 5 / 10 / 20 steps, DDIM at 25, ancestral DDPM over all T (on ``--ddpm-n`` patients: it is
slow), each student on its own grid — it generates one volume per held-out label map of the teacher's split
(fp32, model space), scores them as Table 1 does (``aldm evaluate``: FRD, SSIM 3D, per-region mask Dice with
the segmenter, region contrasts, sharpness, near-copies), counts the network evaluations of one volume (a
wrapper around the denoiser: a guided step with both halves counts 2) and times one volume's denoising and
decoding apart, all in this one process, the configurations taking turns (DDPM-1000 timed once, alone). A re-run
reuses the sets already generated and scored. Writes ``DIR/few_step.md`` (the table), ``few_step.json`` and
``few_step.png`` (the first patient's middle axial FLAIR slice across configurations).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from aldm.artifacts.run import Run
from aldm.diffusion.guidance import EvaluationCounter
from aldm.diffusion.settings import GenerationSettings
from aldm.evaluate import EvaluationSettings, evaluate, load_synthetic
from aldm.generate import GenerationRequest, GenerationRuntime, generate
from aldm.pipeline import load_pipeline


def configurations(teacher: str, students: list[str]) -> list[dict]:
    """(label, run, sampler, steps) of every column of the table: the teacher's samplers, then each student."""
    rows = [{"label": "DDPM-1000", "run": teacher, "sampler": "ddpm", "steps": None},
            {"label": "DDIM-25", "run": teacher, "sampler": "ddim", "steps": 25}]
    rows += [{"label": f"DPM-Solver++ {n}", "run": teacher, "sampler": "dpmpp2m", "steps": n} for n in (20, 10, 5)]
    for path in students:
        record = Run(path).info["distill"]
        method = "" if record["method"] == "progressive" else f" ({record['method']})"
        rows.append({"label": f"student {record['steps']}{method}", "run": path, "sampler": "distilled",
                     "steps": record["steps"]})
    return rows


def interleaved_timing(pipes: dict, masks: np.ndarray, rounds: int) -> dict:
    """{label: {nfe, denoise_s, decode_s}} of one volume per configuration ``pipes`` {label: (pipeline, settings)},
    the configurations taking turns for ``rounds`` rounds after one warm-up round (the median of each), so that
    the machine's drift falls on all of them alike; decoding timed apart on the volume's latent."""
    counters = {label: EvaluationCounter(pipe.denoiser) for label, (pipe, _) in pipes.items()}
    times = {label: {"denoise": [], "decode": []} for label in pipes}
    for i in range(rounds + 1):
        for label, (pipe, settings) in pipes.items():
            counters[label].nfe = 0
            start = time.perf_counter()
            out = pipe(masks, settings, generator=[i])
            total = time.perf_counter() - start
            z = (out["latent"] - pipe.latent_mean.cpu()) / pipe.latent_std.cpu()
            start = time.perf_counter()
            pipe.decode(z, torch.from_numpy(masks))
            decode_s = time.perf_counter() - start
            if i:
                times[label]["denoise"].append(total - decode_s)
                times[label]["decode"].append(decode_s)
    return {label: {"nfe": counters[label].nfe, "denoise_s": statistics.median(t["denoise"]),
                    "decode_s": statistics.median(t["decode"])} for label, t in times.items()}


def scored(metrics: dict) -> dict:
    """The table's columns of an ``aldm evaluate`` result."""
    adherence = metrics.get("mask_adherence", {})
    contrast = metrics.get("region_contrast", {})
    sharp = metrics.get("sharpness", {})
    copies = metrics.get("memorisation", {})
    return {
        "frd_mean": metrics.get("frd_mean"), "ssim_3d": metrics["ssim_3d_patient_mean"],
        "dice": {name: r["dice_mean"] for name, r in adherence.get("regions", {}).items()},
        "real_dice": {name: r["real_dice_mean"] for name, r in adherence.get("regions", {}).items()},
        "contrast_signs": f"{contrast.get('right_signs', '-')}/{contrast.get('scored', '-')}",
        "sharpness": float(np.mean(list(sharp.values()))) if sharp else None,
        "copies": copies.get("held_out_copy_fraction"),
    }


def figure(folders: list[tuple[str, str]], path: str) -> None:
    """The first sample of each folder: its middle axial FLAIR slice, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(folders), figsize=(2.2 * len(folders), 2.6))
    for ax, (label, folder) in zip(np.atleast_1d(axes), folders):
        sample = sorted(load_synthetic(folder), key=lambda s: s["sample"])[0]
        channel = [m.lower() for m in sample["modalities"]].index("flair")
        volume = sample["image"][channel]
        ax.imshow(np.rot90(volume[:, :, volume.shape[2] // 2]), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def combined(sets: list[dict]) -> dict:
    """The figures of one configuration over its seeds: each number's mean, and its spread (max - min) in
    ``spread`` when there are several."""
    out, spread = {}, {}
    for key in ("frd_mean", "ssim_3d", "sharpness", "copies"):
        values = [s[key] for s in sets if s[key] is not None]
        out[key] = float(np.mean(values)) if values else None
        spread[key] = float(np.ptp(values)) if len(values) > 1 else None
    out["dice"] = {r: float(np.mean([s["dice"][r] for s in sets])) for r in sets[0]["dice"]}
    spread["dice"] = {r: float(np.ptp([s["dice"][r] for s in sets])) if len(sets) > 1 else None
                      for r in sets[0]["dice"]}
    out["real_dice"] = sets[0]["real_dice"]
    out["contrast_signs"] = " / ".join(s["contrast_signs"] for s in sets)
    return {**out, "spread": spread, "per_seed": sets}


def markdown(rows: list[dict]) -> str:
    """The quality-per-evaluation table (mean over the seeds, the spread over them in brackets)."""
    regions = list(rows[0]["dice"])
    head = ["configuration", "NFE", "FRD (FLAIR)", "SSIM 3D", *[f"Dice {r}" for r in regions], "contrast signs",
            "sharpness", "near-copies", "denoise s", "decode s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sp = r["spread"]
        cells = [r["label"], str(r["nfe"]), _f(r["frd_mean"], 2, sp["frd_mean"]), _f(r["ssim_3d"], 3, sp["ssim_3d"]),
                 *[_f(r["dice"][x], 3, sp["dice"][x]) for x in regions], r["contrast_signs"],
                 _f(r["sharpness"], 3, sp["sharpness"]), _f(r["copies"], 2), _f(r["denoise_s"], 2),
                 _f(r["decode_s"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    ceiling = ", ".join(f"{x} {_f(rows[0]['real_dice'][x])}" for x in regions)
    lines.append(f"\nSegmenter on the real volumes of the same patients (the ceiling): {ceiling}.")
    return "\n".join(lines) + "\n"


def _f(value, digits: int = 3, spread=None) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + ("" if spread is None else f" ({spread:.{digits}f})")


def _first_labels(out: str, config: dict) -> np.ndarray:
    """The label map (or mask) of the first sample of ``config``'s set, (1, 1, S, S, S): what one volume is timed on."""
    first = sorted(load_synthetic(_folder(out, config["label"])), key=lambda s: s["sample"])[0]
    return (first["labels"] if first["labels"] is not None else first["mask"])[None].astype(np.float32)


def _folder(out: str, label: str, seed_index: int = 0) -> str:
    name = label.replace(" ", "_").replace("+", "p").replace("(", "").replace(")", "")
    return os.path.join(out, name, f"seed{seed_index}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", action="append", default=[])
    parser.add_argument("--real", required=True, help="the prepared cache of the held-out patients")
    parser.add_argument("--segmenter", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--ddpm-n", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (the configurations take turns)")
    parser.add_argument("--frd", default="flair")
    parser.add_argument("--seeds", type=int, default=1,
                        help="generate each configuration's set this many times (seeds 0, 1000, ...): the table "
                             "gives the mean and, with 2 or more, the spread (max - min) of every figure")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    reference, rows, pipes = {}, [], {}
    held_out = Run(args.teacher).split()["test"]
    for config in configurations(args.teacher, args.student):
        n = args.ddpm_n if config["sampler"] == "ddpm" else args.n
        pipe = load_pipeline(config["run"], device="cpu", precision="fp32")
        if pipe.condition == "regions+brain":
            raise SystemExit("regions+brain runs need brain masks: not supported by this benchmark")
        sets = []
        for j in range(1 if config["sampler"] == "ddpm" else args.seeds):
            settings = pipe.validate(GenerationSettings(guidance=args.guidance, sampler=config["sampler"],
                                                        steps=config["steps"], seed=1000 * j, precision="fp32"))
            folder = _folder(args.out, config["label"], j)
            generate(GenerationRequest(config["run"], folder, n, subjects=held_out[:n], settings=settings,
                                       native=False, runtime=GenerationRuntime(batch_size=1, progress=False,
                                                                               pipeline=pipe)))
            saved = os.path.join(folder, "eval", "metrics.json")
            if os.path.exists(saved):  # a re-run of the benchmark scores each set once
                with open(saved, encoding="utf-8") as fh:
                    metrics = json.load(fh)
            else:
                metrics = evaluate(args.real, folder, os.path.join(folder, "eval"),
                                   EvaluationSettings(frd_modalities=(args.frd,) if n >= 3 else (),
                                                      segmenter=args.segmenter), reference=reference).to_dict()
            sets.append(scored(metrics))
        if config["sampler"] == "ddpm":  # minutes a volume: timed once, alone
            timing = interleaved_timing({config["label"]: (pipe, settings)}, _first_labels(args.out, config), 1)
        else:
            pipes[config["label"]] = (pipe, settings)
            timing = {}
        rows.append({**config, "n": n, **timing.get(config["label"], {}), **combined(sets)})
    timings = interleaved_timing(pipes, _first_labels(args.out, rows[0]), args.repeats)
    for row in rows:
        row.update(timings.get(row["label"], {}))
        print(json.dumps({k: row.get(k) for k in ("label", "nfe", "frd_mean", "ssim_3d", "dice", "denoise_s",
                                                  "decode_s")}), flush=True)
    with open(os.path.join(args.out, "few_step.json"), "w", encoding="utf-8") as fh:
        json.dump(rows, fh, indent=2)
    table = markdown(rows)
    with open(os.path.join(args.out, "few_step.md"), "w", encoding="utf-8") as fh:
        fh.write(table)
    figure([(r["label"], _folder(args.out, r["label"])) for r in rows], os.path.join(args.out, "few_step.png"))
    print(table)


if __name__ == "__main__":
    main()
