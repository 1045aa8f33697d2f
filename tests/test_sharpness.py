"""The sharpness measure (aldm.metrics.sharpness) on hand-made volumes: a blurred copy scores below 1,
the volume itself 1.0, a noisier one above; the power spectrum's tail falls with blur and rises with noise."""

import numpy as np
from scipy.ndimage import gaussian_filter

from aldm.metrics.sharpness import head_mask, radial_power_spectrum, sharpness_ratio


def _head(seed: int = 0, size: int = 32) -> np.ndarray:
    """(2, S, S, S): a textured ball in [-1, 1] on a -1 background."""
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3) - size / 2
    ball = np.sqrt((grid ** 2).sum(0)) < size * 0.4
    texture = gaussian_filter(rng.standard_normal((2, size, size, size)), sigma=(0, 1.5, 1.5, 1.5))
    volume = np.clip(0.2 + 2.0 * texture, -0.95, 1.0)
    return np.where(ball[None], volume, -1.0).astype(np.float32)


def test_sharpness_ratio_of_the_volume_itself_is_one_blur_lowers_noise_raises():
    real = [_head(0), _head(1)]
    blurred = [np.where(v > -1, gaussian_filter(v, sigma=(0, 2.0, 2.0, 2.0)), -1.0) for v in real]
    rng = np.random.default_rng(5)
    noisy = [np.where(v > -1, v + 0.2 * rng.standard_normal(v.shape), -1.0).astype(np.float32) for v in real]
    heads = [head_mask(v) for v in real]
    same = sharpness_ratio(real, real, ["T1", "FLAIR"], heads, heads)
    assert same == {"T1": 1.0, "FLAIR": 1.0, "mean": 1.0}
    soft = sharpness_ratio(blurred, real, ["T1", "FLAIR"], heads, heads)
    assert soft["T1"] < 0.8 and soft["FLAIR"] < 0.8
    sharp = sharpness_ratio(noisy, real, ["T1", "FLAIR"], heads, heads)
    assert sharp["T1"] > 1.2 and sharp["FLAIR"] > 1.2


def test_head_mask_leaves_the_background_out_and_takes_the_brain():
    volume = _head(0)
    head = head_mask(volume)
    assert head.any() and not head[0, 0, 0]
    brain = np.zeros(volume.shape[1:], bool)
    brain[0, 0, 0] = True
    assert head_mask(volume, brain)[0, 0, 0]


def test_radial_power_spectrum_tail_falls_with_blur_and_rises_with_noise():
    volume = _head(0)
    freq, power = radial_power_spectrum(volume)
    assert power.shape == (2, 16) and freq[0] > 0 and freq[-1] < 0.5
    _, blurred = radial_power_spectrum(gaussian_filter(volume, sigma=(0, 1.5, 1.5, 1.5)))
    _, noisy = radial_power_spectrum(volume + 0.3 * np.random.default_rng(1).standard_normal(volume.shape))
    tail = slice(10, None)
    assert (blurred[:, tail] < power[:, tail]).all()
    assert (noisy[:, tail] > power[:, tail]).all()
    np.testing.assert_allclose(blurred[:, 0], power[:, 0], rtol=0.5)  # low frequencies kept
