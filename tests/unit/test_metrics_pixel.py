"""Pixel scores and the sorted-member CRPS against independent values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import xarray as xr
import xskillscore as xs

from downscale.evaluation.metrics import pixel
from tests.unit._evaldata import fields, mask_like


def _crps_brute(x: np.ndarray, y: np.ndarray, fair: bool = False) -> float:
    """Energy form with an explicit double sum over members (O(M^2))."""
    m = x.shape[0]
    skill = np.abs(x - y[None]).mean(0)
    pairs = np.abs(x[:, None] - x[None, :]).sum((0, 1))
    return float((skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)).mean())


def test_one_member_crps_equals_mae():
    samples, obs = fields(members=1)
    assert float(pixel.crps_ensemble(samples, obs)) == pytest.approx(float(pixel.mae(samples, obs)))


def test_crps_matches_xskillscore_and_brute_force():
    samples, obs = fields(members=7)
    ours = float(pixel.crps_ensemble(samples, obs))
    ref = float(xs.crps_ensemble(obs, samples, member_dim="member").mean())
    assert ours == pytest.approx(ref, abs=1e-10)
    assert ours == pytest.approx(_crps_brute(samples.values, obs.values), abs=1e-10)
    fair = float(pixel.crps_fair(samples, obs))
    assert fair == pytest.approx(_crps_brute(samples.values, obs.values, fair=True), abs=1e-10)
    assert fair < ours


def test_crps_dask_equals_numpy_with_mask():
    samples, obs = fields(members=5, days=8)
    mask = mask_like(obs)
    eager = float(pixel.crps_ensemble(samples, obs, mask))
    lazy = pixel.crps_ensemble(samples.chunk(time=3), obs.chunk(time=3), mask)
    assert lazy.chunks is not None or hasattr(lazy.data, "dask")
    assert float(lazy.compute()) == pytest.approx(eager, abs=1e-12)
    valid = mask.values[None]
    x, y = samples.values[:, :, valid[0]], obs.values[:, valid[0]]
    assert eager == pytest.approx(_crps_brute(x, y), abs=1e-10)


def test_crps_gaussian_closed_form():
    """Quantile ensemble of N(mu, sigma): CRPS -> sigma (z(2Phi(z)-1) + 2phi(z) - 1/sqrt(pi))."""
    mu, sigma, m = 1.0, 2.0, 4000
    members = mu + sigma * scipy.stats.norm.ppf((np.arange(m) + 0.5) / m)
    y = np.array([-2.0, 0.0, 1.0, 3.5])
    samples = xr.DataArray(np.repeat(members[:, None], y.size, 1), dims=("member", "time"))
    samples = samples.expand_dims(lat=1, lon=1).transpose("member", "time", "lat", "lon")
    obs = xr.DataArray(y, dims="time").expand_dims(lat=1, lon=1).transpose("time", "lat", "lon")
    z = (y - mu) / sigma
    closed = sigma * (
        z * (2 * scipy.stats.norm.cdf(z) - 1) + 2 * scipy.stats.norm.pdf(z) - 1 / np.sqrt(np.pi)
    )
    got = pixel.crps_map(samples, obs).values.ravel()
    np.testing.assert_allclose(got, closed, atol=2e-3)


def test_error_scores_match_numpy():
    samples, obs = fields(members=3)
    mask = mask_like(obs)
    v = mask.values
    err = (samples.values - obs.values[None])[:, :, v]
    assert float(pixel.mse(samples, obs, mask)) == pytest.approx((err**2).mean())
    assert float(pixel.rmse(samples, obs, mask)) == pytest.approx(np.sqrt((err**2).mean()))
    assert float(pixel.mae(samples, obs, mask)) == pytest.approx(np.abs(err).mean())
    assert float(pixel.bias(samples, obs, mask)) == pytest.approx(err.mean())
    assert float(pixel.abs_bias(samples, obs, mask)) == pytest.approx(
        np.abs(err.mean((0, 1))).mean()
    )
    rel = 100 * err.mean() / obs.values[:, v].mean()
    assert float(pixel.rel_bias(samples, obs, mask)) == pytest.approx(rel)
    ens_err = samples.values.mean(0)[:, v] - obs.values[:, v]
    assert float(pixel.mae(samples, obs, mask, ensemble_mean=True)) == pytest.approx(
        np.abs(ens_err).mean()
    )
