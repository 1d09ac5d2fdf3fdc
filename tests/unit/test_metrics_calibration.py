"""Rank histograms, flatness, calibration error, spread-skill, reliability and Brier scores."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
import xarray as xr

from downscale.evaluation.metrics import calibration


def exchangeable(members: int = 9, days: int = 20, size: int = 24, seed: int = 0):
    """Members and observation drawn i.i.d. around a shared per-pixel signal."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(days, size, size))
    dims = ("time", "lat", "lon")
    obs = xr.DataArray(z + rng.normal(size=z.shape), dims=dims)
    samples = xr.DataArray(z + rng.normal(size=(members, *z.shape)), dims=("member", *dims))
    return samples, obs


def test_exchangeable_ensemble_is_flat_and_spread_matches_skill():
    samples, obs = exchangeable()
    counts = calibration.rank_histogram(samples, obs, bins=((-99, 0), (0, 99))).sel(bin="all")
    assert int(counts.sum()) == obs.size
    assert scipy.stats.chisquare(counts.values).pvalue > 0.01
    assert float(calibration.rank_flatness(samples, obs)) < 2.0
    assert float(calibration.spread_skill(samples, obs)) == pytest.approx(1.0, abs=0.03)
    assert float(calibration.calibration_error(samples, obs)) < 0.01


def test_underdispersed_ensemble_is_detected():
    samples, obs = exchangeable()
    narrow = samples.mean("member") + 0.3 * (samples - samples.mean("member"))
    counts = calibration.rank_histogram(narrow, obs).sel(bin="all")
    assert scipy.stats.chisquare(counts.values).pvalue < 1e-6
    assert counts.values[0] > 2 * counts.values[counts.size // 2]  # U shape
    assert float(calibration.rank_flatness(narrow, obs)) > 10
    assert float(calibration.spread_skill(narrow, obs)) < 0.5


def test_ties_are_randomised_and_bins_split_counts():
    dims = ("time", "lat", "lon")
    obs = xr.DataArray(np.zeros((4, 10, 10)), dims=dims)
    samples = xr.DataArray(np.zeros((3, 4, 10, 10)), dims=("member", *dims))
    counts = calibration.rank_histogram(samples, obs, seed=3)
    all_ties = counts.sel(bin="all").values
    assert all_ties.sum() == 400 and all_ties.min() > 60  # spread over the 4 ranks
    assert counts.sel(bin="0-1").sum() == 400 and counts.sel(bin="1-10").sum() == 0


def test_lazy_rank_histogram_matches_eager_for_continuous_values():
    samples, obs = exchangeable(days=6)
    eager = calibration.rank_histogram(samples, obs)
    lazy = calibration.rank_histogram(samples.chunk(time=2), obs.chunk(time=2)).compute()
    np.testing.assert_array_equal(eager.values, lazy.values)


def test_reliability_of_a_calibrated_forecast_is_diagonal():
    """Observation = a random member: P(obs > t | members) = fraction of members above t."""
    rng = np.random.default_rng(1)
    m, days, size = 20, 30, 32
    scale = rng.gamma(1.0, 2.0, (days, size, size))
    x = rng.gamma(0.8, 1.0, (m, days, size, size)) * scale
    pick = rng.integers(0, m, (days, size, size))
    y = np.take_along_axis(x, pick[None], 0)[0]
    dims = ("time", "lat", "lon")
    samples, obs = xr.DataArray(x, dims=("member", *dims)), xr.DataArray(y, dims=dims)
    rel = calibration.reliability(samples, obs, thresholds=(1.0, 5.0), n_bins=10).compute()
    for t in (1.0, 5.0):
        r = rel.sel(threshold=t)
        ok = r.sel(quantity="count") > 500
        f, o = r.sel(quantity="forecast")[ok], r.sel(quantity="observed")[ok]
        np.testing.assert_allclose(o.values, f.values, atol=0.03)
    # Brier score of this forecast against the brute-force definition
    p = (x > 1.0).mean(0)
    brier = float(calibration.brier_score(samples, obs, thresholds=(1.0,)).sel(threshold=1.0))
    assert brier == pytest.approx(((p - (y > 1.0)) ** 2).mean())


def test_masked_cells_and_one_member_give_nan_without_warnings():
    """Sea cells (NaN in every member) and a one-member baseline are expected NaNs: computed
    lazily, as the evaluation does, they must not fill the log with numpy warnings."""
    samples, obs = exchangeable(members=5, days=8)
    sea = xr.zeros_like(obs.isel(time=0), dtype=bool)
    sea[:4] = True
    samples, obs = samples.where(~sea).chunk(time=4), obs.where(~sea).chunk(time=4)
    mask = ~sea
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ratio = float(calibration.spread_skill(samples, obs, mask))
        one = calibration.spread_skill(samples.isel(member=[0]), obs, mask)
        rel = calibration.reliability(samples, obs, mask, thresholds=(0.5,), n_bins=10).compute()
    land = exchangeable(members=5, days=8)
    expected = calibration.spread_skill(land[0][:, :, 4:], land[1][:, 4:])
    assert ratio == pytest.approx(float(expected))
    assert np.isnan(float(one))
    counts = rel.sel(quantity="count").values
    assert counts.sum() == 8 * 20 * 24  # the land cells only
    empty = counts == 0
    assert empty.any() and np.isnan(rel.sel(quantity="forecast").values[0][empty[0]]).all()
