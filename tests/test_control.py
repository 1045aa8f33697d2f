"""c = f(m): the control maps, FiLM statistics and the latent tumour weight mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aldm.data.control import control_maps, edge_map, latent_tumour_weight_mask, mask_statistics, soft_distance


def _cube_mask(size=32, lo=8, hi=16):
    m = torch.zeros(1, 1, size, size, size)
    m[..., lo:hi, lo:hi, lo:hi] = 1
    return m


def test_edge_map_is_the_boundary():
    m = _cube_mask()
    e = edge_map(m)
    assert e[0, 0, 12, 12, 12] == 0  # deep inside
    assert e[0, 0, 0, 0, 0] == 0  # far outside
    assert e[0, 0, 8, 12, 12] == 1 and e[0, 0, 7, 12, 12] == 1  # both sides of the face
    assert e[0, 0, 10, 12, 12] == 0


def test_soft_distance_profile():
    m = _cube_mask()
    d = soft_distance(m)[0, 0]
    assert d[12, 12, 12] > 0.6 and d[0, 0, 0] < 0.01
    assert abs(float(d[8, 12, 12] + d[7, 12, 12]) / 2 - 0.5) < 0.05  # 0.5 on the boundary
    line = d[:, 12, 12].numpy()
    assert np.all(np.diff(line[:12]) >= 0) and np.all(np.diff(line[12:]) <= 1e-6)  # monotone profile
    assert torch.count_nonzero(soft_distance(torch.zeros(1, 1, 8, 8, 8))) == 0


def test_control_maps_shape_and_pooling():
    m = _cube_mask(size=32, lo=0, hi=16)
    maps = control_maps(m, size=8)
    assert maps.shape == (1, 3, 8, 8, 8)
    assert maps[0, 0, 0, 0, 0] == 1 and maps[0, 0, 7, 7, 7] == 0  # area fractions
    assert torch.allclose(maps[0, 0].mean(), m.mean())
    full = control_maps(m)
    assert full.shape == (1, 3, 32, 32, 32) and torch.equal(full[:, :1], m)


def test_control_maps_are_identical_for_the_same_mask():
    m = _cube_mask()
    assert torch.equal(control_maps(m, 8), control_maps(m.clone(), 8))


def test_mask_statistics_known_values():
    m = torch.zeros(2, 1, 11, 11, 11)
    m[0, 0, 0:3, 5, 5] = 1  # three voxels on the low-D edge, centred in H and W
    s = mask_statistics(m)
    assert s.shape == (2, 8)
    assert s[0, 0] == pytest.approx(3 / 11**3)
    assert s[0, 1] == pytest.approx(-0.8, abs=1e-5)  # mean of linspace(-1, 1, 11)[0:3]
    assert s[0, 2] == pytest.approx(0.0, abs=1e-6) and s[0, 3] == pytest.approx(0.0, abs=1e-6)
    assert s[0, 4] == pytest.approx(float(np.std([-1, -0.8, -0.6])), abs=1e-5)
    assert s[0, 7] == 1
    assert torch.count_nonzero(s[1]) == 0  # empty mask -> zero vector (= the null condition)


def test_latent_weight_mask_is_dilated():
    m = torch.zeros(1, 1, 32, 32, 32)
    m[..., 13, 13, 13] = 1  # one voxel -> latent cell (3, 3, 3) at factor 4
    w = latent_tumour_weight_mask(m, 8)
    assert w.shape == (1, 1, 8, 8, 8)
    assert w.sum() == 27 and w[0, 0, 3, 3, 3] == 1 and w[0, 0, 2, 2, 2] == 1 and w[0, 0, 5, 5, 5] == 0


def test_bad_mask_shape():
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        control_maps(torch.zeros(1, 8, 8, 8))
