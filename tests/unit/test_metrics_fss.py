"""Fractions skill score."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import xarray as xr

from downscale.evaluation.metrics import fss
from tests.unit._evaldata import fields


def test_identical_fields_score_one():
    _, obs = fields(size=32)
    out = fss.fss(obs.expand_dims(member=2), obs, thresholds=(0.5, 5.0), scales=(2, 8))
    np.testing.assert_allclose(out.values, 1.0)


def test_matches_a_direct_computation_and_grows_with_scale():
    samples, obs = fields(members=1, days=2, size=32)
    out = fss.fss(samples, obs, thresholds=(2.0,), scales=(1, 4, 16))
    for n in (1, 4, 16):
        pf = scipy.ndimage.uniform_filter(
            (samples.values[0] > 2.0).astype(float), (1, n, n), mode="constant"
        )
        po = scipy.ndimage.uniform_filter(
            (obs.values > 2.0).astype(float), (1, n, n), mode="constant"
        )
        ones = scipy.ndimage.uniform_filter(np.ones(obs.shape), (1, n, n), mode="constant")
        pf, po = pf / ones, po / ones
        expect = 1 - ((pf - po) ** 2).sum() / (pf**2 + po**2).sum()
        assert float(out.sel(threshold=2.0, scale=n)) == pytest.approx(expect)
    values = out.sel(threshold=2.0).values
    assert values[0] < values[1] < values[2]


def test_lazy_and_masked():
    samples, obs = fields(days=4)
    mask = xr.ones_like(obs.isel(time=0, drop=True), dtype=bool)
    mask[:, :8] = False
    eager = fss.fss(samples, obs, mask, scales=(4,))
    lazy = fss.fss(samples.chunk(time=1), obs.chunk(time=1), mask, scales=(4,)).compute()
    np.testing.assert_allclose(lazy.values, eager.values)
    garbage = samples.copy()
    garbage[..., :8] = 1e3  # invalid pixels do not count
    np.testing.assert_allclose(fss.fss(garbage, obs, mask, scales=(4,)).values, eager.values)
