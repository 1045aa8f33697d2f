"""A 3D tumour segmenter trained once on real volumes: the mask-adherence probe of synthetic volumes.

A generator conditioned on a mask should put its tumour where the mask is. We measure that the way a
user of the volumes would: a segmenter trained on *real* cached volumes of training subjects only
(never the held-out test patients) segments each synthetic volume, and the Dice between its
prediction and the mask the volume was generated from is the volume's **mask Dice**. Two reference
points make the number readable:

* ceiling — the same segmenter on the real held-out volumes of the same mask subjects;
* floor — the Dice of each synthetic volume's prediction against the mask of *another* subject
  (shuffled masks): what a generator that ignores its mask would score by chance overlap.

The network is MONAI's SegResNet (Myronenko 2018) with one sigmoid output (whole tumour), trained
with MONAI's DiceCELoss on whole volumes or on random crops (half of them centred on a tumour voxel,
as MONAI's RandCropByPosNegLabel); a crop-trained segmenter predicts by MONAI's sliding-window
inference. Dice and HD95 come from MONAI's metrics. Every random choice is seeded. The downstream
segmentation experiment (:mod:`aldm.experiment_segmentation`) trains the same network.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import AldmError
from ..io.atomic import atomic_write_text
from ..runs import load_checkpoint, save_checkpoint

WEIGHTS = "segmenter.pt"
INFO = "segmenter.json"


@dataclass
class SegmenterConfig:
    """SegResNet width (``init_filters``), training length and optimiser, training crop (``crop``^3
    patches, 0: whole volumes; a multiple of 8), inference threshold, seed."""

    init_filters: int = 8
    steps: int = 300
    batch_size: int = 2
    crop: int = 0
    lr: float = 2e-3
    threshold: float = 0.5
    seed: int = 0
    device: str = "cpu"


def build_segmenter(config: SegmenterConfig) -> torch.nn.Module:
    """SegResNet: (B, 3, S, S, S) in [-1, 1] -> (B, 1, S, S, S) tumour logits (S divisible by 8)."""
    from monai.networks.nets import SegResNet

    groups = math.gcd(8, config.init_filters)  # GroupNorm(8) as MONAI's default, narrower widths allowed
    return SegResNet(spatial_dims=3, in_channels=3, out_channels=1, init_filters=config.init_filters,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), norm=("GROUP", {"num_groups": groups}))


def random_crops(x: torch.Tensor, y: torch.Tensor, size: int,
                 g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``size``^3 crop per volume of x (B, C, S, S, S) and y (B, 1, S, S, S): centred on a random
    tumour voxel with probability 1/2 (when the volume has one), else anywhere; clipped to the volume."""
    spatial = x.shape[2:]
    if size <= 0 or size >= min(spatial):
        return x, y
    xs, ys = [], []
    for b in range(len(x)):
        tumour = torch.nonzero(y[b, 0])
        if len(tumour) and torch.rand(1, generator=g) < 0.5:
            centre = tumour[torch.randint(len(tumour), (1,), generator=g)][0]
        else:
            centre = torch.stack([torch.randint(n, (1,), generator=g)[0] for n in spatial])
        lo = [int(min(max(int(c) - size // 2, 0), n - size)) for c, n in zip(centre, spatial)]
        box = (slice(None),) + tuple(slice(a, a + size) for a in lo)
        xs.append(x[b][box])
        ys.append(y[b][box])
    return torch.stack(xs), torch.stack(ys)


def train_segmenter(images: np.ndarray, masks: np.ndarray, config: SegmenterConfig,
                    progress: bool = False) -> torch.nn.Module:
    """Train on volumes (N, 3, S, S, S) and masks (N, 1, S, S, S) with DiceCELoss (sigmoid), AdamW,
    random crops (``config.crop``, :func:`random_crops`) and random flips along each axis; batches,
    crops and flips are drawn from generators seeded by (seed, step)."""
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    if len(images) == 0 or len(images) != len(masks):
        raise AldmError(f"segmenter training needs volumes and masks in equal numbers, got {len(images)} and "
                        f"{len(masks)}")
    torch.manual_seed(config.seed)
    model = build_segmenter(config).to(config.device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(sigmoid=True)
    x_all = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    y_all = torch.as_tensor(np.asarray(masks) > 0, dtype=torch.float32)
    model.train()
    for step in tqdm(range(config.steps), desc="segmenter", unit="step", disable=not progress):
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        idx = torch.randint(len(x_all), (config.batch_size,), generator=g)
        x, y = random_crops(x_all[idx], y_all[idx], config.crop, g)
        for axis in (2, 3, 4):
            if torch.rand(1, generator=g) < 0.5:
                x, y = x.flip(axis), y.flip(axis)
        loss = loss_fn(model(x.to(config.device)), y.to(config.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.inference_mode()
def segment(model: torch.nn.Module, images: np.ndarray, config: SegmenterConfig, batch_size: int = 2) -> np.ndarray:
    """Binary tumour masks (N, 1, S, S, S) uint8 of volumes (N, 3, S, S, S); a crop-trained segmenter
    predicts by sliding windows of its crop size (overlap 1/4, Gaussian-weighted; MONAI)."""
    from monai.inferers import sliding_window_inference

    out = []
    for i in range(0, len(images), batch_size):
        x = torch.as_tensor(np.asarray(images[i:i + batch_size]), dtype=torch.float32, device=config.device)
        if 0 < config.crop < min(x.shape[2:]):
            logits = sliding_window_inference(x, (config.crop,) * 3, sw_batch_size=4, predictor=model, overlap=0.25,
                                              mode="gaussian")
        else:
            logits = model(x)
        out.append((torch.sigmoid(logits) >= config.threshold).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1, 1, 1, 1), np.uint8)


def dice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-volume Dice (N,) of binary masks (N, 1, S, S, S) (MONAI DiceMetric); 1.0 where both are empty."""
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    values = metric(torch.as_tensor(np.asarray(pred) > 0, dtype=torch.float32),
                    torch.as_tensor(np.asarray(target) > 0, dtype=torch.float32))
    return values.reshape(-1).numpy().astype(np.float64)


def hd95(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-volume 95th-percentile Hausdorff distance (N,) in voxels (MONAI); NaN where a mask is empty."""
    from monai.metrics import HausdorffDistanceMetric

    metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    with warnings.catch_warnings():  # MONAI warns about empty masks (NaN here, by design) and its own internals
        warnings.filterwarnings("ignore", message=".*is all 0.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        values = metric(torch.as_tensor(np.asarray(pred) > 0, dtype=torch.float32),
                        torch.as_tensor(np.asarray(target) > 0, dtype=torch.float32))
    return values.reshape(-1).numpy().astype(np.float64)


def shuffled_masks(masks: np.ndarray, seed: int = 0) -> np.ndarray:
    """``masks`` permuted so that no volume keeps its own mask (a derangement; needs N >= 2)."""
    n = len(masks)
    if n < 2:
        raise AldmError("the shuffled-mask floor needs at least two masks")
    cycle = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=int)
    perm[cycle] = np.roll(cycle, 1)  # one cycle through all volumes: nobody keeps its own mask
    return np.asarray(masks)[perm]


def mask_adherence(model: torch.nn.Module, config: SegmenterConfig, volumes: np.ndarray, masks: np.ndarray,
                   seed: int = 0) -> dict:
    """Mask Dice of volumes (N, 3, S, S, S) against the masks (N, 1, S, S, S) they were made from, and the
    shuffled-mask floor; means, stds and per-volume values."""
    pred = segment(model, volumes, config)
    own = dice(pred, masks)
    out = {"n": int(len(own)), "mask_dice_mean": float(own.mean()), "mask_dice_std": float(own.std()),
           "mask_dice": own.tolist(), "predicted_voxels": [int(p.sum()) for p in pred]}
    if len(masks) >= 2:
        floor = dice(pred, shuffled_masks(masks, seed))
        out.update({"shuffled_dice_mean": float(floor.mean()), "shuffled_dice_std": float(floor.std())})
    return out


def save_segmenter(folder: str, model: torch.nn.Module, config: SegmenterConfig, subjects: list[str],
                   caches: list[str]) -> None:
    """Write the weights and ``segmenter.json`` (config, the subjects it was trained on, their caches)."""
    os.makedirs(folder, exist_ok=True)
    save_checkpoint(os.path.join(folder, WEIGHTS), model.state_dict())
    info = {"config": asdict(config), "subjects": sorted(subjects), "caches": [os.path.abspath(c) for c in caches]}
    atomic_write_text(os.path.join(folder, INFO), json.dumps(info, indent=2) + "\n")


def load_segmenter(folder: str, device: str = "cpu") -> tuple[torch.nn.Module, SegmenterConfig, dict]:
    """(model, config, info) of a folder written by :func:`save_segmenter`."""
    path = os.path.join(folder, INFO)
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
        config = SegmenterConfig(**{**info["config"], "device": device})
    except FileNotFoundError:
        raise AldmError(f"{folder}: not a segmenter folder (no {INFO}); train one with aldm segmenter train") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AldmError(f"{path}: damaged segmenter description ({exc})") from exc
    model = build_segmenter(config)
    model.load_state_dict(load_checkpoint(os.path.join(folder, WEIGHTS)))
    return model.to(device).eval(), config, info


def held_out_subjects(sources: list[str]) -> set[str]:
    """The held-out test subjects named by run folders (their ``split.json``) or split JSON files."""
    from ..data.splits import load_split
    from ..runs import Run

    held = set()
    for source in sources:
        split = Run(source).split() if os.path.isdir(source) else load_split(source)
        if split is None:
            raise AldmError(f"{source}: a run without a split; give a few-shot run or a split JSON")
        held |= set(split["test"])
    return held


def fit_on_caches(caches: list[str], out: str, config: SegmenterConfig, held_out: set[str],
                  progress: bool = True) -> dict:
    """Train a segmenter on every subject of ``caches`` except ``held_out`` and save it in ``out``;
    returns its description (subjects, caches)."""
    from ..data.cache import load_cached, read_manifest

    images, masks, subjects = [], [], []
    for cache in caches:
        rows = read_manifest(cache)
        if not rows:
            raise AldmError(f"{cache}: no manifest.csv; not a prepared cache")
        for row in rows:
            if row["subject"] not in held_out:
                data = load_cached(cache, row)
                images.append(data["image"])
                masks.append(data["mask"].astype(np.uint8))
                subjects.append(row["subject"])
    if len({m.shape for m in masks}) > 1:
        raise AldmError(f"{', '.join(caches)}: volumes of different sizes; prepare the caches with one --size")
    model = train_segmenter(np.stack(images), np.stack(masks), config, progress=progress)
    save_segmenter(out, model, config, subjects, caches)
    return {"subjects": len(subjects), "held_out": len(held_out), "out": os.path.abspath(out)}
