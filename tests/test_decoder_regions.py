"""The label-conditioned VAE decoder (``VAEConfig.decoder_regions``, issue 26): the decoder sees the tumour's BraTS
regions at every resolution, every decode passes the label map, and what cannot work is refused in one line."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from aldm.config import Profile, tiny, with_decoder_regions
from aldm.errors import AldmError
from aldm.models.vae import VAE3D, decoder_region_maps, with_regions


def _labels(size: int = 32, batch: int = 2) -> torch.Tensor:
    """Label maps (B, 1, S, S, S): a cube of oedema (2) holding enhancing tumour (4) around necrosis (1)."""
    labels = torch.zeros(batch, 1, size, size, size)
    q = size // 4
    labels[:, :, q:3 * q, q:3 * q, q:3 * q] = 2
    labels[:, :, q + 2:3 * q - 2, q + 2:3 * q - 2, q + 2:3 * q - 2] = 4
    labels[:, :, q + 4:3 * q - 4, q + 4:3 * q - 4, q + 4:3 * q - 4] = 1
    return labels


def _regions_vae() -> VAE3D:
    return VAE3D(dataclasses.replace(tiny().vae, decoder_regions=True)).eval()


def test_region_maps_are_the_nested_brats_regions_and_pool_to_fractions():
    labels = torch.tensor([0, 2, 1, 4], dtype=torch.float32).view(1, 1, 4, 1, 1)
    maps = decoder_region_maps(labels)
    assert maps.shape == (1, 3, 4, 1, 1)
    assert maps[0, :, :, 0, 0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]  # WT, TC, ET
    h = torch.zeros(1, 5, 2, 1, 1)
    pooled = with_regions(h, maps)  # two coarse voxels, each the mean of two fine ones
    assert pooled.shape == (1, 8, 2, 1, 1)
    assert pooled[0, 5:, :, 0, 0].tolist() == [[0.5, 1.0], [0.0, 1.0], [0.0, 0.5]]
    assert with_regions(h, None) is h


def test_the_decoder_takes_three_region_channels_at_every_stage_and_the_papers_keys_are_unchanged():
    plain, regions = VAE3D(tiny().vae), _regions_vae()
    assert set(plain.state_dict()) == set(regions.state_dict())
    c = tiny().vae
    assert regions.decoder_in[0].conv.in_channels == c.latent_channels + 3
    assert regions.up1.conv.in_channels == c.channels[2] + 3
    assert regions.up2.conv.in_channels == c.channels[1] + 3
    assert regions.out.in_channels == c.channels[0] + 3
    assert plain.out.in_channels == c.channels[0]


@torch.no_grad()
def test_decoding_needs_the_label_map_and_draws_what_it_says():
    torch.manual_seed(0)
    vae = _regions_vae()
    z = torch.randn(2, tiny().vae.latent_channels, 8, 8, 8)
    with pytest.raises(AldmError, match="decoding needs the label map"):
        vae.decode(z)
    with pytest.raises(AldmError, match=r"must be \(2, 1, 32, 32, 32\)"):
        vae.decode(z, labels=torch.zeros(2, 1, 16, 16, 16))
    labels = _labels()
    with_et = vae.decode(z, labels=labels)
    no_et = labels.clone()
    no_et[no_et == 4] = 2  # the enhancing tumour becomes oedema
    changed = (vae.decode(z, labels=no_et) - with_et).abs().sum(dim=1)[0]
    enhancing = labels[0, 0] == 4
    assert changed[enhancing].mean() > 5 * changed[labels[0, 0] == 0].mean()  # the change is where ET was
    # the paper's decoder ignores a label map
    plain = VAE3D(tiny().vae).eval()
    assert torch.equal(plain.decode(z), plain.decode(z, labels=labels))


@torch.no_grad()
def test_split_decode_of_a_regions_decoder_equals_the_whole_volume_decode():
    torch.manual_seed(0)
    vae = _regions_vae()
    for p in vae.parameters():  # random norms and biases too
        p.normal_(0.0, 0.3)
    z = torch.randn(2, tiny().vae.latent_channels, 8, 8, 8)
    labels = _labels()
    truth = vae.double().decode(z.double(), labels=labels)
    vae = vae.float()
    whole = (vae.decode(z, labels=labels).double() - truth).abs().max()
    for slab in (1, 5, 64):
        split = (vae.decode(z, labels=labels, slab=slab).double() - truth).abs().max()
        assert split <= max(2 * whole, 1e-5), (slab, split, whole)


def test_config_refuses_a_non_boolean_and_old_configs_read_as_the_papers_decoder():
    with pytest.raises(AldmError, match="decoder_regions must be true or false"):
        dataclasses.replace(tiny().vae, decoder_regions="yes")
    data = tiny().to_dict()
    del data["vae"]["decoder_regions"]  # a run written before the option
    assert Profile.from_dict(data).vae.decoder_regions is False
    assert with_decoder_regions(tiny()).vae.decoder_regions is True
    assert with_decoder_regions(tiny(), False).vae == tiny().vae


def test_a_vaegan_built_from_a_regions_profile_keeps_the_papers_decoder():
    from aldm.models.baselines.generator import BaselineGenerator

    net = BaselineGenerator("vaegan", with_decoder_regions(tiny())).net
    assert net.region_channels == 0 and net.out.in_channels == tiny().vae.channels[0]


@pytest.mark.slow  # a tiny VAE, LDM and few-shot stage with the regions decoder (~30 s)
def test_a_regions_decoder_trains_and_its_ldm_samples_with_the_label_map(prepared_cache, tmp_path, monkeypatch):
    """The VAE trains with the label maps (cropped with the images), the held-out probe decodes with them, a
    ``mask`` LDM on it is refused, a ``regions`` LDM trains and its pipeline decodes with the condition's
    label maps; ``aldm train vae --decoder-regions`` records the option in the run."""
    from aldm.artifacts.cache import PreparedCache
    from aldm.artifacts.run import Run
    from aldm.cli import main
    from aldm.diffusion.settings import GenerationSettings
    from aldm.pipeline import ALDMPipeline
    from aldm.train.stages import ProbeSubjects, with_probe_every
    from tests.training import train_ldm, train_vae

    cache = str(prepared_cache)
    vae_run = str(tmp_path / "vae")
    held = [r["subject"] for r in PreparedCache(cache).rows("target")][:1]
    profile = with_probe_every(with_decoder_regions(tiny()), 2)
    train_vae(cache, vae_run, profile, steps=2, progress=False, domain="source",
              probe=ProbeSubjects(cache, held))
    assert Run(vae_run).profile.vae.decoder_regions
    assert os.path.exists(os.path.join(vae_run, "probe.csv"))
    with pytest.raises(AldmError, match="--condition regions"):
        train_ldm(cache, str(tmp_path / "ldm-mask"), vae_run=vae_run, steps=1, progress=False)
    ldm = str(tmp_path / "ldm")
    train_ldm(cache, ldm, vae_run=vae_run, steps=2, progress=False, condition="regions")
    pipe = ALDMPipeline.from_pretrained(ldm, device="cpu")
    seen = []
    decode = pipe.vae.decode

    def spy(z, *args, labels=None, **kw):
        seen.append(labels.clone())
        return decode(z, *args, labels=labels, **kw)

    monkeypatch.setattr(pipe.vae, "decode", spy)
    labels = _labels(32, 1)
    out = pipe(labels, GenerationSettings(guidance=1.0, steps=2, sampler="ddim"), generator=[0])
    assert out["image"].shape == (1, tiny().vae.in_channels, 32, 32, 32)
    assert torch.equal(seen[0], labels)
    # the command line's flag
    assert main(["train", "vae", "--data", cache, "--out", str(tmp_path / "cli"), "--profile", "tiny",
                 "--steps", "1", "--decoder-regions", "--quiet"]) == 0
    assert Run(str(tmp_path / "cli")).profile.vae.decoder_regions


def test_experiment_turns_the_regions_decoder_on_with_a_regions_condition_only(tmp_path):
    from aldm.experiments.common import ExperimentConfig

    base = {"source_cache": "s", "target_cache": "t", "out": str(tmp_path)}
    assert ExperimentConfig(**base, condition="regions").decoder_regions() is True
    assert ExperimentConfig(**base).decoder_regions() is False
    assert ExperimentConfig(**base, condition="regions", vae_decoder_regions=False).decoder_regions() is False
    with pytest.raises(AldmError, match="needs a regions condition"):
        ExperimentConfig(**base, vae_decoder_regions=True)
    with pytest.raises(AldmError, match="expected true, false or null"):
        ExperimentConfig(**base, condition="regions", vae_decoder_regions="on")
