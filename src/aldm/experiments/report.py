"""Table 1 (Markdown + CSV), Figures 2-5 (PNG) and the HTML report of ``aldm experiment table1``.

Every number in the report comes from the CSV written here; nothing is typed in by hand.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..artifacts.cache import PreparedCache  # noqa: E402
from ..artifacts.samples import SampleSet  # noqa: E402
from ..errors import AldmError  # noqa: E402
from ..evaluators.segmentation_protocols import PAIRED_CAPTION, paired_rows  # noqa: E402
from ..fidelity import Fidelity  # noqa: E402
from ..io.atomic import atomic_write_text  # noqa: E402

# "Mask Dice" is the whole tumour's (WT); "Dice TC" / "Dice ET" the BraTS sub-regions' (a BraTS segmenter and
# labelled samples); "Contrast signs": region-contrast checks of the right sign (aldm.metrics.region_contrast);
# "Sharpness": mean 3D gradient magnitude in the head, synthetic over real, lowest modality (aldm.metrics.sharpness);
# "copies % (held-out)": samples nearer a training volume than any held-out patient is (aldm.metrics.similarity);
# "Train s": seconds of optimisation of the row's model, all its stages; "Params M": millions of parameters of the
# networks sampling uses; "Sample s/vol": seconds of aldm generate per volume (aldm.experiments.table1.cell_cost)
COLUMNS = ["model", "K", "s", "FRD", "FID (patient mean)", "FID (pooled)", "SSIM 2D", "SSIM 3D", "MS-SSIM synth",
           "MS-SSIM real", "near-copy %", "copies % (held-out)", "Mask Dice", "Mask Dice floor", "Dice TC", "Dice ET",
           "Contrast signs", "Sharpness", "Swap locality", "TRTS BAcc", "TRTS F1", "TRTS AUC", "TRTS AUC std",
           "Aug AUC", "Aug AUC std", "Train s", "Params M", "Sample s/vol", "n test"]


def _fmt(value, digits=3):
    return "" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def _lowest_sharpness(figures: dict) -> float | None:
    """The lowest per-modality sharpness ratio of the VAE bound's figures (None when not measured)."""
    sharp = {k: v for k, v in (figures.get("sharpness") or {}).items() if k != "mean"}
    return min(sharp.values()) if sharp else None


def table_rows(results: list[dict], reference: dict) -> list[dict]:
    """Table 1's rows: one per cell, then the real-data reference row."""
    rows = []
    scored = [(r, Fidelity.from_dict(r["fidelity"])) for r in results]
    for r, f in scored:
        c, adherence = r["classifier"], f.mask_adherence
        cost = r.get("cost") or {}
        rows.append({
            "model": r["name"], "K": r["k"], "s": "" if r["s"] is None else r["s"],
            "FRD": f.frd_mean, "FID (patient mean)": f.fid_patient_mean, "FID (pooled)": f.fid_pooled,
            "SSIM 2D": f.ssim_2d_patient_mean, "SSIM 3D": f.ssim_3d_patient_mean,
            "MS-SSIM synth": f.ms_ssim_diversity_synthetic, "MS-SSIM real": f.ms_ssim_diversity_real,
            "near-copy %": f.near_copy_percent(), "copies % (held-out)": f.held_out_copy_percent(),
            "Mask Dice": adherence and adherence.mask_dice_mean,
            "Mask Dice floor": adherence and adherence.shuffled_dice_mean,
            "Dice TC": adherence and adherence.region_dice("TC"), "Dice ET": adherence and adherence.region_dice("ET"),
            "Contrast signs": f.contrast_signs(), "Sharpness": f.lowest_sharpness(),
            "Swap locality": (r.get("mask_swap") or {}).get("locality"),
            "TRTS BAcc": c["trts"]["bacc_mean"], "TRTS F1": c["trts"]["f1_mean"], "TRTS AUC": c["trts"]["auc_mean"],
            "TRTS AUC std": c["trts"]["auc_std"], "Aug AUC": c["augment"]["auc_mean"],
            "Aug AUC std": c["augment"]["auc_std"], "n test": f.n_patients,
            "Train s": cost.get("train_s"), "Params M": None if cost.get("params") is None else cost["params"] / 1e6,
            "Sample s/vol": cost.get("sample_s"),
        })
    adherence = next((f.mask_adherence for _, f in scored if f.mask_adherence), None)
    ceilings = {name: region.real_dice_mean for name, region in (adherence.regions if adherence else {}).items()}
    contrast = next((f.region_contrast for _, f in scored if f.region_contrast), {})
    real_signs = [np.sign(c["real"]) == c["expected_sign"] for c in contrast.get("checks", []) if c["real"] is not None]
    chance = next((r["mask_swap"]["chance"] for r in results if (r.get("mask_swap") or {}).get("pairs")), None)
    bound = reference.get("vae_bound")
    if bound:  # the real test volumes through the VAE: what no latent model on it can exceed
        regions, signs = bound["regions"], bound["region_contrast"]
        rows.append({"model": "VAE reconstruction (ALDM's bound)", "K": "", "s": "",
                     "SSIM 3D": bound["ssim_3d_mean"], "Mask Dice": bound["mask_dice_mean"],
                     "Dice TC": (regions.get("TC") or {}).get("dice_mean"),
                     "Dice ET": (regions.get("ET") or {}).get("dice_mean"),
                     "Contrast signs": f"{signs['right_signs']}/{signs['scored']}" if signs.get("scored") else None,
                     "Sharpness": _lowest_sharpness(bound)})
    rows.append({"model": "Real (TRTR reference)", "K": "", "s": "",
                 "Mask Dice": adherence and adherence.real_dice_mean,
                 "Dice TC": ceilings.get("TC"), "Dice ET": ceilings.get("ET"),
                 "Contrast signs": f"{sum(real_signs)}/{len(real_signs)}" if real_signs else None,
                 "Swap locality": chance,
                 "TRTS BAcc": reference["trtr"]["bacc_mean"],
                 "TRTS F1": reference["trtr"]["f1_mean"], "TRTS AUC": reference["trtr"]["auc_mean"],
                 "TRTS AUC std": reference["trtr"]["auc_std"], "Aug AUC": reference["few_shot_only"]["auc_mean"],
                 "Aug AUC std": reference["few_shot_only"]["auc_std"]})
    return rows


def write_table(rows: list[dict], out: str) -> tuple[str, str]:
    """Write ``table1.csv`` and ``table1.md`` into ``out``; returns their paths."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k), 6) for k in COLUMNS})
    csv_path, md_path = os.path.join(out, "table1.csv"), os.path.join(out, "table1.md")
    atomic_write_text(csv_path, buf.getvalue())
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k)) for k in COLUMNS) + " |")
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def figure2(rows: list[dict], path: str) -> None:
    """Multi-metric comparison; FID normalised (1 - FID / max FID) as in the paper's Figure 2."""
    models = [r for r in rows if r["K"] != ""]
    metrics = ["SSIM 2D", "TRTS BAcc", "TRTS F1", "TRTS AUC"]
    distances = {}
    for name in ("FID (patient mean)", "FRD"):
        values = [r.get(name) for r in models]
        if values and all(v is not None for v in values):
            distances[name.split(" ")[0] + "*"] = values
    metrics = list(distances) + metrics
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(models)), 4))
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        if m in distances:
            top = max(distances[m])
            vals = [1 - v / top if top > 0 else 0 for v in distances[m]]
        else:
            vals = [r.get(m) or 0.0 for r in models]
        ax.bar(np.arange(len(models)) + j * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2)
    ax.set_xticklabels([r["model"] for r in models], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Figure 2: multi-metric comparison (*distances normalised: 1 - d / max d)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure3(rows: list[dict], k_max: int, path: str) -> None:
    """Guidance sensitivity at K = max(K)."""
    # the main rows "ALDM (K=.., s=..)" only: the ablations share K and s with one of them
    aldm = sorted([r for r in rows if str(r["model"]).startswith("ALDM (K=") and r["K"] == k_max], key=lambda r: r["s"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    s = [r["s"] for r in aldm]
    for m in ("SSIM 2D", "TRTS AUC", "TRTS BAcc"):
        ax.plot(s, [r.get(m) for r in aldm], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("guidance scale s")
    ax.set_title(f"Figure 3: sensitivity to s (K={k_max})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _axial(volume: np.ndarray, mask: np.ndarray) -> int:
    idx = np.argwhere(mask > 0)
    return int(idx[:, 2].mean()) if len(idx) else volume.shape[-1] // 2


def _load_sample(folder: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(image (C, S, S, S), mask (S, S, S), modalities) of one sample folder."""
    samples = SampleSet(os.path.dirname(folder))
    record = samples.read_record(os.path.basename(folder))
    if record is None:
        raise AldmError(f"{folder}: not a finished sample (no sample.json)")
    vol, mask = samples.load_volumes(record)
    return vol, mask[0], record.channels


def figure4(figure4_dir: str, path: str) -> bool:
    """Samples (same mask, same seed) after successive chunks of few-shot training."""
    if not os.path.isdir(figure4_dir):
        return False
    snaps = sorted(os.listdir(figure4_dir), key=lambda n: int(n.rsplit("step", 1)[1]))
    if not snaps:
        return False
    fig, axes = plt.subplots(3, len(snaps), figsize=(2.4 * len(snaps), 7), squeeze=False)
    for j, snap in enumerate(snaps):
        sample = [d for d in os.listdir(os.path.join(figure4_dir, snap)) if d.startswith("sample-")][0]
        vol, mask, channels = _load_sample(os.path.join(figure4_dir, snap, sample))
        z = _axial(vol, mask)
        for i, name in enumerate(channels[:3]):
            axes[i, j].imshow(vol[i, :, :, z].T, cmap="gray", origin="lower", vmin=-1, vmax=1)
            axes[i, j].axis("off")
            if j == 0:
                axes[i, j].set_title(name, fontsize=8, loc="left")
        axes[0, j].set_title(f"step {snap.rsplit('step', 1)[1]}", fontsize=9)
    fig.suptitle("Figure 4: ALDM samples over few-shot training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


#: how Figure 5 outlines the BraTS regions of the label map every row was generated from
REGION_CONTOURS = (("WT", "yellow"), ("TC", "red"), ("ET", "cyan"))


def figure5(results: list[dict], target_cache: str, path: str) -> None:
    """Per-modality montage of one held-out patient: ground truth and every model, the label map's regions
    outlined (WT yellow, TC red, ET cyan; the whole tumour alone when the labels have no sub-regions)."""
    from ..conditions import REGIONS

    first = results[0]
    sample = sorted(d for d in os.listdir(first["samples"]) if d.startswith("sample-"))[0]
    subject = sample.split("_", 1)[1]
    cache = PreparedCache(target_cache)
    real = cache.load(subject)
    channels = cache.modalities
    shown = [m for m in ("FLAIR", "T1", "T1c", "T2") if m in channels]
    rows = [("Ground truth", real["image"], real["mask"][0])]
    for r in results:
        match = [d for d in os.listdir(r["samples"]) if d.endswith(subject)]
        if match:
            vol, mask, _ = _load_sample(os.path.join(r["samples"], match[0]))
            rows.append((r["name"], vol, mask))
    z = _axial(real["image"], real["mask"][0])
    labels = real["labels"][0][:, :, z]
    outlines = [(np.isin(labels, REGIONS[name]), colour) for name, colour in REGION_CONTOURS]
    outlines = [(m, c) for m, c in outlines if m.any()]
    fig, axes = plt.subplots(len(rows), len(shown), figsize=(2.17 * len(shown), 2.1 * len(rows)), squeeze=False)
    for i, (name, vol, _mask) in enumerate(rows):
        for j, mod in enumerate(shown):
            slice_panel(axes[i, j], vol[channels.index(mod), :, :, z], outlines, mod if i == 0 else None,
                        name if j == 0 else None)
    fig.suptitle(f"Figure 5: {subject}, axial slice {z} (WT yellow, TC red, ET cyan)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def slice_panel(ax, plane: np.ndarray, outlines: list, title: str | None = None, ylabel: str | None = None) -> None:
    """One axial plane (X, Y) in [-1, 1] on ``ax``, grey, with the (mask (X, Y), colour) ``outlines`` drawn over
    it (empty ones skipped), no ticks; ``title`` above, ``ylabel`` beside."""
    ax.imshow(plane.T, cmap="gray", origin="lower", vmin=-1, vmax=1)
    for mask, colour in outlines:
        if mask is not None and mask.any():
            ax.contour(mask.T.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.6, origin="lower")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=7)


def mask_swap_figure(npz_path: str, title: str, path: str) -> bool:
    """FLAIR of the two same-seed samples of the first mask-swap pair and |difference| (mean over
    modalities) on the axial slice through mask A, both masks outlined; False without the data."""
    if not os.path.exists(npz_path):
        return False
    data = np.load(npz_path)
    x_a, x_b = data["x_a"].astype(np.float32), data["x_b"].astype(np.float32)
    a, b = data["mask_a"][0], data["mask_b"][0]
    modalities = [str(m) for m in data["modalities"]] if "modalities" in data else ["T1", "T2", "FLAIR"]
    flair = modalities.index("FLAIR") if "FLAIR" in modalities else len(modalities) - 1
    shown = modalities[flair]
    z = _axial(x_a, a)
    delta = np.abs(x_a - x_b).mean(0)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    panels = [(x_a[flair, :, :, z], "gray", (-1, 1), f"{shown}, mask A"),
              (x_b[flair, :, :, z], "gray", (-1, 1), f"{shown}, mask B"),
              (delta[:, :, z], "magma", (0, max(float(delta.max()), 1e-6)), "|A - B| (all modalities)")]
    for ax, (img, cmap, (lo, hi), name) in zip(axes, panels):
        ax.imshow(img.T, cmap=cmap, origin="lower", vmin=lo, vmax=hi)
        for mask, colour in ((a, "cyan"), (b, "lime")):
            if mask[:, :, z].any():
                ax.contour(mask[:, :, z].T, levels=[0.5], colors=colour, linewidths=0.8, origin="lower")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Mask swap, same seed: {title} (cyan: mask A, green: mask B)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def spectrum_figure(results: list[dict], reference: dict, path: str) -> bool:
    """Radially averaged power spectra (log power against spatial frequency) per modality: the real test
    volumes, each generator's largest-s cell and the VAE's reconstructions; blur shows as a tail below the
    real one, noise or over-sharpening above it. False when no cell has a spectrum."""
    aldm = [r for r in results if r["s"] is not None]
    top = (max(r["k"] for r in aldm), max(r["s"] for r in aldm)) if aldm else None
    curves = {r["name"]: spectrum for r in results if (spectrum := Fidelity.from_dict(r["fidelity"]).spectrum)
              and (r["s"] is None or (r["k"], r["s"]) == top)}
    bound = (reference.get("vae_bound") or {}).get("spectrum")
    if bound:
        curves["VAE reconstruction"] = bound
    if not curves:
        return False
    first = next(iter(curves.values()))
    modalities = list(first["real"])
    fig, axes = plt.subplots(1, len(modalities), figsize=(4 * len(modalities), 3.4), squeeze=False)
    for ax, m in zip(axes[0], modalities):
        ax.semilogy(first["frequency"], first["real"][m], "k-", lw=2, label="real")
        for name, spectrum in curves.items():
            ax.semilogy(spectrum["frequency"], spectrum["synthetic"][m], lw=1, label=name)
        ax.set_title(m)
        ax.set_xlabel("spatial frequency (cycles / voxel)")
    axes[0][0].set_ylabel("power")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def learning_figure(runs_dir: str, path: str) -> bool:
    """Held-out learning probes of the ALDM stages (runs/vae, runs/ldm and the few-shot runs) side by side
    (:func:`aldm.io.curves.plot_probe_curves`); False when no run has probes."""
    from ..io.curves import plot_probe_curves

    names = ["vae", "ldm"] + sorted(d for d in os.listdir(runs_dir) if d.startswith("aldm_k"))
    return plot_probe_curves([(n, os.path.join(runs_dir, n)) for n in names], path)


def _paired_section(paired: list[dict]) -> list[str]:
    """HTML of the segmentation's paired differences against K real (summary.json's ``paired``)."""
    header, rows = paired_rows(paired)
    if not rows:
        return []
    def cells(tag: str, row: list[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row) + "</tr>"

    return [f"<p>{html.escape(PAIRED_CAPTION)}.</p><table>", cells("th", header), *(cells("td", r) for r in rows),
            "</table>"]


def _segmentation_section(out: str) -> list[str]:
    """HTML of ``aldm experiment segmentation``'s table and figure, when that experiment has run."""
    summary_path = os.path.join(out, "segmentation", "summary.json")
    if not os.path.exists(summary_path):
        return []
    with open(os.path.join(out, "segmentation", "segmentation.csv"), newline="", encoding="utf-8") as fh:
        lines = list(csv.reader(fh))
    with open(summary_path, encoding="utf-8") as fh:
        summary = json.load(fh)
    parts = ["<h2>Downstream segmentation</h2>",
             f"<p>A 3D whole-tumour segmenter (SegResNet) trained on the K = {summary['k']} few-shot patients, on "
             "them plus N synthetic volumes of each generator (made from the few-shot patients' masks only), on "
             "synthetic volumes alone, and on every real target patient outside the fold (ceiling); tested on "
             f"real patients no generator saw, over {summary['folds']} patient-grouped folds and the seeds. "
             "Mean &plusmn; std over (seed, fold); HD95 in voxels over non-empty predictions.</p><table>"]
    for i, cells_ in enumerate(lines):
        tag = "th" if i == 0 else "td"
        parts.append("<tr>" + "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in cells_) + "</tr>")
    parts.append("</table><p><a href='segmentation/segmentation.csv'>segmentation.csv</a></p>")
    parts += _paired_section(summary.get("paired") or [])
    parts.append("<a href='figures/segmentation_augmentation.png'><img src='figures/segmentation_augmentation.png' "
                 "style='max-width:100%'></a>")
    return parts


def _edit_section(out: str) -> list[str]:
    """HTML of ``aldm experiment edit``'s tables and figure, when that experiment has run into ``out/edit``."""
    folder = os.path.join(out, "edit")
    if not os.path.exists(os.path.join(folder, "edit.json")):
        return []
    with open(os.path.join(folder, "edit.md"), encoding="utf-8") as fh:
        tables = fh.read()
    return ["<h2>Editing real scans by their label maps</h2>",
            "<p>One held-out patient edited several ways: its own voxels outside the yellow region, the edit "
            "inside it (aldm edit). The tables: healthy fill and removal against simple fills (BraTS inpainting "
            "metrics inside the region), and each edit's seam, sharpness, contrasts and Dice.</p>",
            "<a href='edit/edit-figure.png'><img src='edit/edit-figure.png' style='max-width:100%'></a>",
            f"<pre>{html.escape(tables)}</pre>"]


def write_report(cfg, results: list[dict], reference: dict, splits: dict) -> str:
    """Table 1, Figures 2-5 and ``report.html`` in the experiment folder; returns the HTML's path."""
    out = cfg.out
    rows = table_rows(results, reference)
    csv_path, md_path = write_table(rows, out)
    fig_dir = os.path.join(out, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    figure2(rows, os.path.join(fig_dir, "figure2_metrics.png"))
    figure3(rows, max(cfg.k), os.path.join(fig_dir, "figure3_guidance.png"))
    has4 = figure4(os.path.join(out, "figure4"), os.path.join(fig_dir, "figure4_training.png"))
    figure5(results, cfg.target_cache, os.path.join(fig_dir, "figure5_montage.png"))
    best = next((r for r in results if r["model"] == "aldm" and r["k"] == max(cfg.k) and r["s"] == max(cfg.guidance)),
                None)
    has_swap = best is not None and mask_swap_figure(os.path.join(out, "eval", best["id"], "mask_swap.npz"),
                                                     best["name"], os.path.join(fig_dir, "mask_swap.png"))
    has_spectrum = spectrum_figure(results, reference, os.path.join(fig_dir, "spectrum.png"))
    has_learning = os.path.isdir(os.path.join(out, "runs")) and learning_figure(
        os.path.join(out, "runs"), os.path.join(fig_dir, "learning_curves.png"))
    k_max = max(cfg.k)
    fid_note = next((note for r in results if (note := Fidelity.from_dict(r["fidelity"]).fid_unavailable)), None)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>aldm Table 1</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>",
        "<h1>ALDM: Table 1 and Figures 2-5</h1>",
        f"<p>Target cache <code>{html.escape(cfg.target_cache)}</code>; profile <b>{html.escape(cfg.profile)}</b>; "
        f"{len(splits[k_max]['test'])} held-out test patients (never the few-shot subjects); classifier task "
        f"<b>{html.escape(cfg.classifier_task)}</b> over {cfg.repeats}x{cfg.folds}-fold patient-grouped CV. "
        "FRD: Fréchet radiomics distance inside the brain (mean over the modalities evaluated). "
        "FID (patient mean) is the paper's definition, FID (pooled) the reference code's. TRTS: classifier "
        "trained on real target data, tested on synthetic volumes from held-out patients' own masks; Aug: "
        "trained on the K real subjects + synthetic volumes, tested on real held-out patients (the reference "
        "row's Aug column is the K real subjects alone). Mask Dice: a 3D tumour segmenter trained once on real "
        "volumes of training subjects segments each synthetic volume, scored against the mask it was generated "
        "from; the reference row is the same segmenter on the held-out patients' real volumes (ceiling), the "
        "floor column scores each volume against another patient's mask (a generator that ignores its mask).</p>",
    ]
    if fid_note:
        parts.append(f"<p><b>FID not computed:</b> {html.escape(fid_note)}</p>")
    parts.append("<p><a href='table1.csv'>table1.csv</a> · <a href='table1.md'>table1.md</a></p><table><tr>")
    parts += [f"<th>{html.escape(c)}</th>" for c in COLUMNS] + ["</tr>"]
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in COLUMNS) + "</tr>")
    parts.append("</table>")
    figures = [("figure2_metrics.png", "Figure 2"), ("figure3_guidance.png", "Figure 3")]
    if has4:
        figures.append(("figure4_training.png", "Figure 4"))
    figures.append(("figure5_montage.png", "Figure 5"))
    if has_swap:
        figures.append(("mask_swap.png", "Mask swap (Swap locality: share of the difference within 2 voxels of "
                                         "either mask; the reference row gives the share of volume there)"))
    if has_spectrum:
        figures.append(("spectrum.png", "Radially averaged power spectra (blur: a tail below the real one)"))
    if has_learning:
        figures.append(("learning_curves.png", "Learning curves (held-out probes during training)"))
    for name, title in figures:
        parts.append(f"<h2>{title}</h2><a href='figures/{name}'><img src='figures/{name}' style='max-width:100%'></a>")
    parts += _segmentation_section(out)
    parts += _edit_section(out)
    parts.append("</body></html>")
    report = os.path.join(out, "report.html")
    atomic_write_text(report, "\n".join(parts) + "\n")
    return report
