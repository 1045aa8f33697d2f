"""Downstream classification (§4.3(2)): an AlexNet-style 2D CNN on axial slices (T1/T2/FLAIR channels).

Tasks (labels per slice):

* ``tumour-slice`` — does the slice contain tumour (by the slice's own mask; what the paper's
  reference code did);
* ``idh`` — IDH-mutant vs wildtype, the patient's label on its tumour-bearing slices;
* ``grade`` — WHO grade 4 vs grades 2-3, likewise.

Protocols, each over patient-grouped repeated k-fold CV (3 x 5 in the paper's Table 1):

* ``trtr`` — train on real, test on real held-out patients (the reference point);
* ``trts`` — train on real, test on the synthetic volumes generated from the held-out patients'
  masks (the paper's protocol), each labelled with its own mask and its mask subject's metadata;
  the classifier is TRTR's (trained on the fold's real training patients, not on the K shots), so
  TRTR and TRTS differ only in what they are tested on;
* ``augment`` — train on the real few-shot subjects + synthetic volumes, test on real held-out
  patients, compared with the few-shot subjects alone (the use case the paper motivates).

Metrics: balanced accuracy, F1 and ROC AUC (scikit-learn), mean +/- std over folds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

TASKS = ("tumour-slice", "idh", "grade")


@dataclass
class ClassifierConfig:
    """The downstream classifier: task, epochs, batch, learning rate, width, seed, device."""
    task: str = "tumour-slice"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    width: int = 16  # channels of the first conv (AlexNet: 64)
    seed: int = 0
    device: str = "cpu"


class AlexNet2D(nn.Module):
    """Five convolutions (widths w, 3w, 6w, 4w, 4w with w = ``width``), three max-pools, two dropout FC
    layers — AlexNet's shape (Krizhevsky et al. 2012) scaled to small single-site MRI datasets."""

    def __init__(self, width: int = 16, in_channels: int = 3):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 5, stride=2, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(w, 3 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(3 * w, 6 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(6 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveMaxPool2d(3),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * w * 9, 8 * w), nn.ReLU(inplace=True),
                                  nn.Dropout(0.5), nn.Linear(8 * w, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N,) logits."""
        return self.head(self.features(x))[:, 0]


def volume_slices(image: np.ndarray, mask: np.ndarray, task: str, idh: str | None = None,
                  grade: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Axial slices (n, 3, X, Y) of a volume (3, X, Y, Z) and their labels (n,) for ``task``.

    Background-only slices are dropped; for ``idh`` / ``grade`` only tumour-bearing slices of a
    subject with that label are kept (none when the label is missing).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    m = mask[0] if mask.ndim == 4 else mask
    tumour = m.sum((0, 1)) > 0
    anatomy = (image > -0.999).any(0).sum((0, 1)) > 0
    if task == "tumour-slice":
        keep = anatomy
        labels = tumour[keep].astype(np.int64)
    else:
        value = ({"mutant": 1, "wildtype": 0}.get(idh or "") if task == "idh"
                 else (None if grade in (None, "") else int(int(grade) == 4)))
        if value is None:
            return np.zeros((0, *image.shape[:3]), np.float32), np.zeros(0, np.int64)
        keep = anatomy & tumour
        labels = np.full(int(keep.sum()), value, np.int64)
    slices = np.moveaxis(image[..., keep], -1, 0).astype(np.float32)
    return slices, labels


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Balanced accuracy, F1 (positive class 1) and ROC AUC (None if only one class is present)."""
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    auc = roc_auc_score(y_true, prob) if len(np.unique(y_true)) == 2 else None
    return {"bacc": float(balanced_accuracy_score(y_true, pred)), "f1": float(f1_score(y_true, pred, zero_division=0)),
            "auc": None if auc is None else float(auc)}


class ClassifierTask(nn.Module):
    """The trainer's task: class-balanced BCE (``pos_weight``) of the classifier on a batch {'x', 'y'}."""

    def __init__(self, network: AlexNet2D, pos_weight: torch.Tensor):
        super().__init__()
        self.network = network
        self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def forward(self, batch: dict, step: int, total_steps: int):
        """(loss, logs) of a batch {'x' (B, C, H, W), 'y' (B,)}."""
        device = next(self.network.parameters()).device
        return self.loss(self.network(batch["x"].to(device)), batch["y"].to(device)), {}


def epoch_plan(n: int, config: ClassifierConfig) -> list[tuple[torch.Tensor, bool]]:
    """The classifier's batches, drawn up front from one generator seeded by ``config.seed``: per epoch a
    permutation of the ``n`` slices cut into batches, and for each batch whether it is flipped. Step i of
    training is entry i, so the training is a pure function of the step (as every aldm training)."""
    g = torch.Generator().manual_seed(config.seed)
    plan = []
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, config.batch_size):
            plan.append((order[i:i + config.batch_size], bool(torch.rand(1, generator=g) < 0.5)))
    return plan


def train_classifier(x: np.ndarray, y: np.ndarray, config: ClassifierConfig) -> AlexNet2D:
    """Train on slices x (N, C, H, W) with labels y (N,) through the one trainer, in memory: class-balanced
    BCE, AdamW (weight decay 1e-4, no warm-up, clipping or averaging), light flips (:func:`epoch_plan`)."""
    from ..config import TrainConfig
    from ..distributed import DistInfo
    from ..train.trainer import Trainer

    torch.manual_seed(config.seed)
    network = AlexNet2D(config.width, in_channels=x.shape[1] if x.ndim == 4 else 3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    pos = float(yt.mean()) if len(yt) else 0.5
    pos_weight = torch.tensor((1 - pos) / max(pos, 1e-3)).clamp(0.1, 10.0)
    plan = epoch_plan(len(xt), config)
    if not plan:
        return network.eval()
    train = TrainConfig(steps=len(plan), batch_size=config.batch_size, lr=config.lr, weight_decay=1e-4,
                        warmup_steps=0, grad_clip=0.0, ema_decay=0.0, precision="fp32", seed=config.seed,
                        checkpoint_every=len(plan), log_every=len(plan))

    def sampler(step: int, rank: int) -> dict:
        idx, flip = plan[step]
        xb = xt[idx]
        return {"x": xb.flip(-1) if flip else xb, "y": yt[idx]}

    task = ClassifierTask(network, pos_weight.to(config.device))
    Trainer(task, sampler, train, None, DistInfo(device=torch.device(config.device)), progress=False,
            name="classifier").run()
    return task.network.eval()


@torch.inference_mode()
def predict(model: AlexNet2D, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Tumour probabilities (N,) of slices x (N, 3, H, W), in batches."""
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(torch.from_numpy(x[i:i + batch_size]).to(device))).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def stack_slices(items: list, task: str, subjects=None) -> tuple[np.ndarray, np.ndarray]:
    """Slices and labels of all ``items`` (or those whose subject is in ``subjects``) for ``task``."""
    xs, ys = [], []
    for item in items:
        if subjects is None or item["subject"] in subjects:
            x, y = volume_slices(item["image"], item["mask"], task, item.get("idh"), item.get("grade"))
            xs.append(x)
            ys.append(y)
    if not xs:
        return np.zeros((0, 3, 1, 1), np.float32), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def cross_validate(real: list[dict], synthetic: list[dict], folds: list[dict], protocol: str,
                   config: ClassifierConfig, few_shot: list[str] | None = None, models: dict | None = None) -> dict:
    """Run one protocol over ``folds`` ([{"repeat", "fold", "train": [subjects], "test": [subjects]}]).

    ``real`` items: {"subject", "image" (3,S,S,S), "mask" (1,S,S,S) or (S,S,S), "idh", "grade"}; ``synthetic``
    items the same with "subject" = the mask's subject. TRTR and TRTS train the same classifier, on the
    fold's training patients only (real); augment trains on the ``few_shot`` subjects + the synthetic
    volumes whose mask subject is outside the fold's test set; few-shot-only on the ``few_shot``
    subjects alone. ``models``: a cache of trained classifiers shared between calls (keyed by what
    they were trained on), so TRTR and the TRTS of every generator reuse one classifier per fold.
    Returns per-fold metrics and mean/std. Raises if a fold's train and test subjects overlap, or the
    few-shot subjects fall in a test fold (a leak).
    """
    models = {} if models is None else models
    results = []
    all_synth = {s["subject"] for s in synthetic}
    shots = set(few_shot or [])
    for fold in folds:
        train, test = set(fold["train"]), set(fold["test"])
        if train & test:
            raise ValueError(f"fold {fold.get('repeat')}/{fold.get('fold')}: train and test subjects overlap")
        if protocol in ("trtr", "trts"):
            key = ("real", config.task, fold.get("repeat"), fold.get("fold"))
            x, y = stack_slices(real, config.task, train)
            xt, yt = stack_slices(real if protocol == "trtr" else synthetic, config.task, test)
        elif protocol in ("augment", "few-shot-only"):
            if shots & test:
                raise ValueError("few-shot subjects inside a test fold")
            key = ("shots", config.task, tuple(sorted(shots))) if protocol == "few-shot-only" else None
            x, y = stack_slices(real, config.task, shots)
            if protocol == "augment":
                xs, ys = stack_slices(synthetic, config.task, all_synth - test)
                x, y = np.concatenate([x, xs]), np.concatenate([y, ys])
            xt, yt = stack_slices(real, config.task, test)
        else:
            raise ValueError(f"unknown protocol {protocol!r}")
        if len(np.unique(y)) < 2 or len(yt) == 0:
            continue  # a fold without both classes to learn from, or nothing to test on
        if key is None:
            model = train_classifier(x, y, config)
        else:
            if key not in models:
                models[key] = train_classifier(x, y, config)
            model = models[key]
        metrics = binary_metrics(yt, predict(model, xt))
        metrics.update({"repeat": fold.get("repeat"), "fold": fold.get("fold"), "n_train": int(len(y)),
                        "n_test": int(len(yt))})
        results.append(metrics)
    summary = {"protocol": protocol, "task": config.task, "folds_scored": len(results), "folds": results}
    for key in ("bacc", "f1", "auc"):
        values = [r[key] for r in results if r[key] is not None]
        summary[f"{key}_mean"] = float(np.mean(values)) if values else None
        summary[f"{key}_std"] = float(np.std(values)) if values else None
    return summary
