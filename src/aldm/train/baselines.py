"""Training of the baselines (CGAN, 3M-CGAN, VAE-GAN) with the one trainer and the one data path.

Like ALDM: source training on the source cache, then few-shot adaptation on the K target subjects
of a saved patient-level split (``init_run`` + ``k``), run directories of the same form. The
trainer alternates a discriminator phase and a generator phase per step (hinge loss, spectral
norm, EMA of the generator, DiffAugment in the few-shot stage).

* ``cgan``: G(c, domain, z) and one conditional D(x, m) on all three modalities.
* ``cgan3m``: the same G, three discriminators (T1, T2, FLAIR), each on its modality and the mask,
  plus a tumour-consistency term: L1 between G's volume and the paired real one inside the dilated
  tumour.
* ``vaegan``: a VAE whose decoder is conditioned on the latent-resolution control maps and the
  domain, trained with L1 + KL + a conditional adversarial loss on reconstructions and on prior
  samples. Its samples come from the prior z ~ N(0, I) given a mask — never reconstructions of
  real subjects.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conditions import condition_masks
from ..config import Profile
from ..distributed import barrier
from ..errors import AldmError
from ..io.lock import writes_folder
from ..models.baselines.generator import BaselineGenerator
from ..models.baselines.networks import PatchDiscriminator3D, diff_augment, hinge_d_loss, hinge_g_loss
from ..models.families import comparison_models, family
from ..models.vae import kl_divergence
from .comparison import load_condition_volumes, open_comparison_run
from .requests import StageRequest
from .stages import run_stage
from .trainer import step_generator


class GANTask(nn.Module):
    """Discriminator phase ``"d"`` then generator phase ``"g"`` of one baseline."""

    phases = ("d", "g")

    def __init__(self, kind: str, profile: Profile, augment: bool):
        super().__init__()
        cfg = profile.baseline
        self.kind, self.cfg, self.augment = kind, cfg, augment
        self.adam_betas = tuple(cfg.adam_betas)
        self.generator = BaselineGenerator(kind, profile)
        masks = len(condition_masks(profile.condition))  # D sees the condition's masks beside the volume
        if kind == "cgan3m":
            # 3M-CGAN: one single-channel discriminator per modality
            self.discriminators = nn.ModuleList(PatchDiscriminator3D(1, cfg.disc_channels, masks)
                                                for _ in range(profile.vae.in_channels))
        else:
            self.discriminators = nn.ModuleList([PatchDiscriminator3D(profile.vae.in_channels, cfg.disc_channels,
                                                                      masks)])
        self.vae_cfg = profile.vae

    def parameter_groups(self) -> dict:
        """The parameters of each phase's optimiser: discriminators (``d``) and generator (``g``)."""
        return {"d": list(self.discriminators.parameters()), "g": list(self.generator.parameters())}

    def _d_logits(self, volumes: list[torch.Tensor], mask: torch.Tensor,
                  aug_seed: int | None) -> list[list[torch.Tensor]]:
        """Logits of each discriminator for each of ``volumes`` (each (B, 3, S, S, S)), as
        ``[per volume set][per discriminator]``. All sets go through each discriminator in one
        batch (one spectral-norm evaluation and one larger convolution per layer instead of one per
        set). DiffAugment draws the same parameters for every set."""
        masks = []
        if aug_seed is not None:
            augmented = [diff_augment(x, mask, torch.Generator().manual_seed(aug_seed)) for x in volumes]
            volumes, masks = [a[0] for a in augmented], [a[1] for a in augmented]
        else:
            masks = [mask] * len(volumes)
        x, m, n = torch.cat(volumes), torch.cat(masks), len(volumes)
        if self.kind == "cgan3m":
            per_d = [d(x[:, i:i + 1], m).chunk(n) for i, d in enumerate(self.discriminators)]
        else:
            per_d = [self.discriminators[0](x, m).chunk(n)]
        return [[logits[k] for logits in per_d] for k in range(n)]

    def _fake(self, b: dict) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
        """Generated volumes; for the VAE-GAN also the reconstruction and its loss terms."""
        if self.kind != "vaegan":
            return self.generator(b["control"], b["domain"], b["noise"]), {}, None
        vae = self.generator.net
        mu, logvar = vae.encode(b["image"])
        z = mu + torch.exp(0.5 * logvar) * b["eps_posterior"]
        cond = self.generator.condition(b["control"], b["domain"])
        recon = vae.decode(z, cond)
        prior = vae.decode(b["noise"], cond)
        terms = {"rec": torch.mean(torch.abs(recon - b["image"])), "kl": kl_divergence(mu, logvar)}
        return prior, terms, recon

    def forward(self, batch: dict, step: int, total_steps: int, phase: str):
        """The loss of ``phase`` (``d``: hinge loss of real vs generated; ``g``: adversarial + the baseline's
        own terms) on a batch {'image', 'mask', 'control', 'domain', 'noise', 'eps_posterior', 'aug_seed'};
        returns (loss, logs)."""
        dev = next(self.parameters()).device
        b = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        seed = int(b["aug_seed"][0]) if self.augment else None
        mask = b["mask"]
        if phase == "d":
            with torch.no_grad():
                fake, _, recon = self._fake(b)
            sets = self._d_logits([b["image"], fake] + ([recon] if recon is not None else []), mask, seed)
            loss = sum(hinge_d_loss(r, f) for r, f in zip(sets[0], sets[1]))
            if recon is not None:
                loss = loss + sum(F.relu(1.0 + f).mean() for f in sets[2])
            return loss, {"d_loss": loss.detach()}
        for p in self.discriminators.parameters():
            p.requires_grad_(False)
        try:
            fake, terms, recon = self._fake(b)
            sets = self._d_logits([fake] + ([recon] if recon is not None else []), mask, seed)
            adv = sum(hinge_g_loss(f) for logits in sets for f in logits)
            loss = self.cfg.adv_weight * adv
            logs = {"g_adv": adv.detach()}
            if self.kind == "vaegan":
                loss = loss + self.cfg.vaegan_rec * terms["rec"] + self.cfg.vaegan_kl * terms["kl"]
                logs.update({k: v.detach() for k, v in terms.items()})
            if self.cfg.l1_weight:
                loss = loss + self.cfg.l1_weight * torch.mean(torch.abs(fake - b["image"]))
            if self.kind == "cgan3m":
                region = F.max_pool3d(mask[:, :1], 5, stride=1, padding=2)  # channel 0: the whole tumour
                voxels = (fake.shape[1] * region.sum()).clamp(min=1.0)  # tumour voxels over every channel
                consistency = (torch.abs(fake - b["image"]) * region).sum() / voxels
                loss = loss + self.cfg.tumour_consistency * consistency
                logs["tumour_l1"] = consistency.detach()
        finally:
            for p in self.discriminators.parameters():
                p.requires_grad_(True)
        return loss, logs


def train_comparison(kind: str, request: StageRequest) -> dict:
    """One stage of the comparison model ``kind`` (a GAN: :func:`train_gan`; the pixel DDPM:
    :func:`aldm.train.pixel_diffusion.train_pixel_ddpm`; any registered family's trainer); ``request.condition``
    (source training; None: the profile's): what it is conditioned on (:mod:`aldm.conditions`), few-shot keeps
    its source run's. Returns the last step's figures."""
    chosen = family(kind)
    if not chosen.comparison:
        raise AldmError(f"{kind!r} is not a comparison model; choose one of {', '.join(comparison_models())}")
    return chosen.trainer_function()(kind, request)


@writes_folder("request", "run")
def train_gan(kind: str, request: StageRequest) -> dict:
    """One stage of the GAN ``kind`` (cgan, cgan3m, vaegan): source training, or few-shot adaptation of a
    finished run of the same kind."""
    dist_info = request.runtime.dist
    fewshot = request.fewshot is not None
    profile, stage_config, run, rows, parent = open_comparison_run(kind, request)
    cfg = getattr(profile, stage_config)

    data = load_condition_volumes(request.cache, rows, profile.condition)
    torch.manual_seed(cfg.seed)  # the initial weights (and spectral-norm vectors) depend on the seed only
    task = GANTask(kind, profile, augment=fewshot and profile.baseline.diffaugment)
    if parent is not None:
        task.load_state_dict(parent["task"])
    n, flag = len(rows), 1.0 if fewshot else 0.0
    noise_shape = task.generator.noise_shape
    latent_shape = (profile.vae.latent_channels,) + (profile.latent_size,) * 3

    def sampler(step: int, rank: int) -> dict:
        g = step_generator(cfg.seed, step, rank)
        idx = torch.randint(n, (cfg.batch_size,), generator=g)
        batch = {key: data[key][idx].float() for key in ("image", "mask", "control")}
        batch["domain"] = torch.full((cfg.batch_size,), flag)
        batch["noise"] = torch.randn((cfg.batch_size, *noise_shape), generator=g)
        batch["eps_posterior"] = torch.randn((cfg.batch_size, *latent_shape), generator=g)
        batch["aug_seed"] = torch.randint(2**31 - 1, (1,), generator=g)
        return batch

    torch.manual_seed(cfg.seed)
    trainer, last = run_stage(task, sampler, profile, stage_config, run, request.runtime,
                              name=f"{kind}{'-fewshot' if fewshot else ''}")
    if dist_info.is_main:
        # raw weights of G and D to start a few-shot stage from; EMA weights of G to sample with
        run.save_weights({"task": trainer.task.state_dict(), "generator": trainer.ema.shadow.generator.state_dict()})
    barrier(dist_info)
    return last

