"""A 3D tumour segmenter trained once on real volumes: the mask-adherence probe of synthetic volumes.

A generator conditioned on a mask should put its tumour where the mask is. We measure that the way a
user of the volumes would: a segmenter trained on *real* cached volumes of training subjects only
(never the held-out test patients) segments each synthetic volume, and the Dice between its
prediction and the mask the volume was generated from is the volume's **mask Dice**. Two reference
points make the number readable:

* ceiling — the same segmenter on the real held-out volumes of the same mask subjects;
* floor — the Dice of each synthetic volume's prediction against the mask of *another* subject
  (shuffled masks): what a generator that ignores its mask would score by chance overlap.

With BraTS label maps the segmenter predicts the three nested BraTS regions — whole tumour WT, tumour
core TC, enhancing tumour ET — as sigmoid channels (the convention of MONAI's
``ConvertToMultiChannelBasedOnBratsClasses``, here in the order WT, TC, ET) and the Dice is reported per
region; an empty region predicted empty scores 1, predicted non-empty 0 (BraTS).

The network is MONAI's SegResNet (Myronenko 2018) with one sigmoid output per region, trained with
MONAI's DiceLoss and a per-region cross-entropy (:class:`SegmenterTask`) on whole volumes or on random
crops (half of them centred on a tumour voxel, as MONAI's RandCropByPosNegLabel) through the one trainer
(:class:`aldm.train.trainer.Trainer`: its seeded per-step streams, progress bar, and — in a folder —
checkpoints, resume and SIGTERM); a crop-trained segmenter predicts by MONAI's sliding-window inference.
Dice and HD95 come from MONAI's metrics. The saved segmenter is a run
(:class:`aldm.artifacts.segmenter.SegmenterRun`). The downstream segmentation experiment
(:mod:`aldm.experiments.segmentation`) trains the same network.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..artifacts.cache import PreparedCache
from ..artifacts.run import Run, code_version
from ..artifacts.segmenter import SegmenterRun
from ..conditions import REGION_NAMES
from ..config import TrainConfig
from ..data.control import region_masks
from ..errors import AldmError

BRATS = REGION_NAMES  # the three regions a BraTS segmenter predicts: WT, TC, ET
WHOLE_TUMOUR = ("WT",)


@dataclass
class SegmenterConfig:
    """SegResNet width (``init_filters``), training length and optimiser, training crop (``crop``^3
    patches, 0: whole volumes; a multiple of 8), inference threshold, seed, and the BraTS regions it predicts
    (``("WT",)``: the whole tumour, one output; :data:`BRATS`: WT, TC, ET)."""

    init_filters: int = 8
    steps: int = 300
    batch_size: int = 2
    crop: int = 0
    lr: float = 2e-3
    threshold: float = 0.5
    seed: int = 0
    device: str = "cpu"
    in_channels: int = 3  # the modalities of the volumes it segments
    regions: tuple = WHOLE_TUMOUR

    def __post_init__(self):
        """Regions as a tuple of known names (a JSON description gives a list)."""
        self.regions = tuple(self.regions)
        if not self.regions or any(r not in BRATS for r in self.regions) or len(set(self.regions)) < len(self.regions):
            raise AldmError(f"segmenter regions must be some of {', '.join(BRATS)}, got {self.regions!r}")

    def training(self) -> TrainConfig:
        """The trainer's settings: AdamW (weight decay 1e-4), no warm-up, no clipping, no averaging, fp32."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, weight_decay=1e-4,
                           warmup_steps=0, grad_clip=0.0, ema_decay=0.0, precision="fp32",
                           checkpoint_every=max(1, self.steps // 4), log_every=10, seed=self.seed)


def build_segmenter(config: SegmenterConfig) -> torch.nn.Module:
    """SegResNet: (B, C, S, S, S) in [-1, 1] -> (B, R, S, S, S) logits of the R regions (S divisible by 8)."""
    from monai.networks.nets import SegResNet

    groups = math.gcd(8, config.init_filters)  # GroupNorm(8) as MONAI's default, narrower widths allowed
    return SegResNet(spatial_dims=3, in_channels=config.in_channels, out_channels=len(config.regions),
                     init_filters=config.init_filters,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), norm=("GROUP", {"num_groups": groups}))


def random_crops(x: torch.Tensor, y: torch.Tensor, size: int,
                 g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``size``^3 crop per volume of x (B, C, S, S, S) and y (B, R, S, S, S; channel 0 the whole tumour):
    centred on a random tumour voxel with probability 1/2 (when the volume has one), else anywhere; clipped to
    the volume."""
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


class SegmenterTask(torch.nn.Module):
    """The trainer's task: MONAI's DiceLoss (sigmoid per region) + binary cross-entropy of the segmenter on a
    batch {'image', 'mask'}.

    That is MONAI's DiceCELoss(sigmoid=True) for one region; for several, DiceCELoss would take a softmax
    cross-entropy across the channels (MONAI 1.x), which treats the nested WT / TC / ET as exclusive classes
    (measured: a 3-region segmenter then over-segments the whole tumour, WT Dice 0.21 vs 0.71 at 200 steps on
    the tiny cache), so the cross-entropy here is per channel, as the sigmoid outputs are."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        from monai.losses import DiceLoss

        self.network = network
        self.dice = DiceLoss(sigmoid=True)
        self.bce = torch.nn.BCEWithLogitsLoss()

    def forward(self, batch: dict, step: int, total_steps: int):
        """(loss, logs) of a batch {'image' (B, C, s, s, s), 'mask' (B, R, s, s, s) region targets}."""
        device = next(self.network.parameters()).device
        logits, target = self.network(batch["image"].to(device)), batch["mask"].to(device)
        return self.dice(logits, target) + self.bce(logits, target), {}


def region_targets(labels: np.ndarray, regions) -> np.ndarray:
    """Binary targets (N, R, S, S, S) uint8 of the BraTS ``regions`` of label maps (N, 1, S, S, S) {0, 1, 2, 4};
    for the whole tumour alone any label > 0 (so a binary mask is a valid input)."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    if tuple(regions) == WHOLE_TUMOUR:
        return (labels > 0).to(torch.uint8).numpy()
    return region_masks(labels, regions).to(torch.uint8).numpy()


def train_segmenter(images: np.ndarray, masks: np.ndarray, config: SegmenterConfig, progress: bool = False,
                    run_dir: str | None = None, resume: bool = False) -> torch.nn.Module:
    """Train on volumes (N, C, S, S, S) and their label maps or masks (N, 1, S, S, S; targets the regions of
    ``config``, :func:`region_targets`) through the one trainer (AdamW,
    :meth:`SegmenterConfig.training`) with random crops (``config.crop``, :func:`random_crops`) and random
    flips along each axis, all drawn from the trainer's stream of each step. ``run_dir``: the folder whose
    checkpoints it writes and, with ``resume``, continues from (None: in memory)."""
    from ..distributed import DistInfo
    from ..train.trainer import Trainer, step_generator

    if len(images) == 0 or len(images) != len(masks):
        raise AldmError(f"segmenter training needs volumes and masks in equal numbers, got {len(images)} and "
                        f"{len(masks)}")
    torch.manual_seed(config.seed)
    task = SegmenterTask(build_segmenter(config))
    x_all = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    y_all = torch.as_tensor(region_targets(masks, config.regions), dtype=torch.float32)
    train = config.training()

    def sampler(step: int, rank: int) -> dict:
        g = step_generator(train.seed, step, rank)
        idx = torch.randint(len(x_all), (train.batch_size,), generator=g)
        x, y = random_crops(x_all[idx], y_all[idx], config.crop, g)
        for axis in (2, 3, 4):
            if torch.rand(1, generator=g) < 0.5:
                x, y = x.flip(axis), y.flip(axis)
        return {"image": x, "mask": y}

    trainer = Trainer(task, sampler, train, run_dir, DistInfo(device=torch.device(config.device)), progress=progress,
                      name="segmenter")
    if resume:
        trainer.resume()
    trainer.run()
    return task.network.eval()


@torch.inference_mode()
def segment(model: torch.nn.Module, images: np.ndarray, config: SegmenterConfig, batch_size: int = 2) -> np.ndarray:
    """Binary region masks (N, R, S, S, S) uint8 of volumes (N, C, S, S, S); a crop-trained segmenter
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
    """Per-volume Dice (N,) of binary masks (N, 1, S, S, S) (MONAI DiceMetric); 1.0 where both are empty,
    0.0 where only the target is (the BraTS convention for a missing region)."""
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


def mask_adherence(model: torch.nn.Module, config: SegmenterConfig, volumes: np.ndarray, labels: np.ndarray,
                   seed: int = 0, regions=None) -> dict:
    """Mask Dice of volumes (N, C, S, S, S) against the label maps or masks (N, 1, S, S, S) they were made
    from, and the shuffled-mask floor: means, stds and per-volume values of the whole tumour (``mask_dice_*``,
    the paper's mask adherence) and, under ``regions`` (default the segmenter's; only ``("WT",)`` when
    ``labels`` are binary masks), per region (``regions``: {name: {dice_mean, dice_std, dice, shuffled_dice_mean}})."""
    regions = tuple(regions or config.regions)
    missing = [r for r in regions if r not in config.regions]
    if missing:
        raise AldmError(f"the segmenter predicts {', '.join(config.regions)}, not {', '.join(missing)}")
    pred = segment(model, volumes, config)
    targets = region_targets(labels, regions)
    shuffled = shuffled_masks(targets, seed) if len(targets) >= 2 else None
    per_region = {}
    for i, name in enumerate(regions):
        channel = config.regions.index(name)
        own = dice(pred[:, channel:channel + 1], targets[:, i:i + 1])
        per_region[name] = {"dice_mean": float(own.mean()), "dice_std": float(own.std()), "dice": own.tolist()}
        if shuffled is not None:
            per_region[name]["shuffled_dice_mean"] = float(dice(pred[:, channel:channel + 1],
                                                                shuffled[:, i:i + 1]).mean())
    whole = per_region["WT"] if "WT" in per_region else next(iter(per_region.values()))
    out = {"n": int(len(targets)), "mask_dice_mean": whole["dice_mean"], "mask_dice_std": whole["dice_std"],
           "mask_dice": whole["dice"], "predicted_voxels": [int(p[0].sum()) for p in pred], "regions": per_region}
    if "shuffled_dice_mean" in whole:
        out["shuffled_dice_mean"] = whole["shuffled_dice_mean"]
    return out


def load_segmenter(folder: str, device: str = "cpu") -> tuple[torch.nn.Module, SegmenterConfig, dict]:
    """(model, config, description) of a finished segmenter folder (:class:`SegmenterRun`)."""
    run = SegmenterRun(folder)
    info = run.description()
    try:
        config = SegmenterConfig(**{**info["config"], "device": device})
    except TypeError as exc:
        raise AldmError(f"{folder}: damaged segmenter description ({exc})") from exc
    model = build_segmenter(config)
    try:
        model.load_state_dict(run.state_dict())
    except RuntimeError as exc:
        raise AldmError(f"{folder}: weights do not fit its description ({str(exc).splitlines()[0]})") from exc
    return model.to(device).eval(), config, info


def held_out_subjects(sources: list[str]) -> set[str]:
    """The held-out test subjects named by run folders (their ``split.json``) or split JSON files."""
    from ..artifacts.run import Run
    from ..artifacts.split import load_split

    held = set()
    for source in sources:
        split = Run(source).split() if os.path.isdir(source) else load_split(source)
        if split is None:
            raise AldmError(f"{source}: a run without a split; give a few-shot run or a split JSON")
        held |= set(split["test"])
    return held


def has_subregions(label_maps) -> bool:
    """Whether label maps (each (1, S, S, S)) tell the BraTS sub-regions apart: some map holds a tumour label
    other than the rest's (binary masks, or one label everywhere, do not)."""
    found = set()
    for labels in label_maps:
        found |= {int(v) for v in np.unique(labels)} - {0}
    return len(found) > 1


def fit_on_caches(caches: list[str], out: str, config: SegmenterConfig, held_out: set[str],
                  progress: bool = True, resume: bool = False, regions: str = "auto") -> dict:
    """Train a segmenter on every subject of ``caches`` except ``held_out`` into the run folder ``out``
    (``resume``: continue the one there); ``regions``: "wt" (whole tumour), "brats" (WT, TC, ET) or "auto"
    (BraTS when the caches' label maps hold sub-regions, :func:`has_subregions`); returns
    {subjects, held_out, out, regions}."""
    from ..io.lock import exclusive_writer

    images, masks, subjects, modalities = [], [], [], set()
    for path in caches:
        cache = PreparedCache(path).require()
        modalities.add(cache.modalities)
        for row in cache.rows():
            if row["subject"] not in held_out:
                data = cache.load(row)
                images.append(data["image"])
                masks.append(data["labels"].astype(np.uint8))
                subjects.append(row["subject"])
    if len(modalities) > 1:
        raise AldmError(f"{', '.join(caches)}: caches of different modalities ({sorted(modalities)}); give one kind")
    if len({m.shape for m in masks}) > 1:
        raise AldmError(f"{', '.join(caches)}: volumes of different sizes; prepare the caches with one --size")
    if not images:
        raise AldmError(f"{', '.join(caches)}: no subjects left to train on after the held-out ones")
    if regions not in ("auto", "wt", "brats"):
        raise AldmError(f"segmenter regions must be auto, wt or brats, got {regions!r}")
    if regions == "brats" and not has_subregions(masks):
        raise AldmError(f"{', '.join(caches)}: the label maps hold no tumour sub-regions; train a whole-tumour "
                        "segmenter (--regions wt)")
    chosen = BRATS if regions == "brats" or (regions == "auto" and has_subregions(masks)) else WHOLE_TUMOUR
    config = SegmenterConfig(**{**asdict(config), "in_channels": images[0].shape[0], "regions": chosen})
    info = {"stage": "segmenter", "seed": config.seed, "modalities": list(modalities.pop()),
            "segmenter": {k: v for k, v in asdict(config).items() if k != "device"}, "subjects": sorted(subjects),
            "caches": [os.path.abspath(c) for c in caches], "code_version": code_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with exclusive_writer(out, "segmenter"):
        run = SegmenterRun(Run.create(out, info, None, resume).path)
        if run.stage != "segmenter":
            raise AldmError(f"{out}: holds a {run.stage} run, not a segmenter")
        model = train_segmenter(np.stack(images), np.stack(masks), config, progress=progress, run_dir=out,
                                resume=resume)
        run.save_weights({"segmenter": model.state_dict()})
    return {"subjects": len(subjects), "held_out": len(held_out), "out": os.path.abspath(out),
            "regions": list(chosen)}
