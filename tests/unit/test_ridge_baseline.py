"""The statistical baseline: GCV ridge on power-transformed precipitation with a heteroscedastic,
censored Gaussian error."""

from __future__ import annotations

import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from downscale.evaluation import baselines
from downscale.utils.errors import UserError


def regression_store(days: int, noise, seed: int = 0, offset: float = 5.0) -> xr.Dataset:
    """sqrt(precip) = offset + X w + noise(mean) per fine pixel (4 x 5), X = two coarse fields (2 x 2)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(days, 2, 2, 2))  # (time, variable, lat_c, lon_c)
    w = rng.normal(scale=0.3, size=(8, 20))
    mean = offset + x.reshape(days, 8) @ w
    z = mean + noise(mean) * rng.standard_normal(mean.shape)
    fine = (np.maximum(z, 0.0) ** 2).reshape(days, 4, 5)
    fine[:, 0, 0] = np.nan  # a pixel never observed (sea)
    return xr.Dataset(
        {
            "precip": (("time", "lat", "lon"), fine, {"units": "mm/day"}),
            "coarse_a": (("time", "lat_coarse", "lon_coarse"), x[:, 0]),
            "coarse_b": (("time", "lat_coarse", "lon_coarse"), x[:, 1]),
        },
        coords={
            "time": pd.date_range("2001-01-01", periods=days),
            "lat": np.arange(4.0),
            "lon": np.arange(5.0),
            "lat_coarse": [0.5, 2.5],
            "lon_coarse": [1.0, 3.5],
        },
    ), mean


def split(ds, n_train):
    return ds.time.values[n_train:], ds.time.values[:n_train]


def test_gcv_ridge_equals_the_closed_form_for_its_penalty():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 6))
    y = x @ rng.normal(size=(6, 3)) + rng.normal(size=(50, 3))
    x, y = x - x.mean(0), y - y.mean(0)
    basis, coef, alpha = baselines._gcv_ridge(x, y, [5.0])
    assert alpha == 5.0
    np.testing.assert_allclose(basis @ coef, np.linalg.solve(x.T @ x + 5.0 * np.eye(6), x.T @ y))


def test_gcv_penalises_more_when_the_data_are_noisier():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 20))
    signal = x @ rng.normal(scale=0.2, size=(20, 1))
    alphas = [0.1, 1.0, 10.0, 100.0, 1000.0]
    *_, quiet = baselines._gcv_ridge(x, signal + 0.01 * rng.normal(size=(60, 1)), alphas)
    *_, noisy = baselines._gcv_ridge(x, signal + 3.0 * rng.normal(size=(60, 1)), alphas)
    assert quiet < noisy


def test_noiseless_relation_is_recovered_exactly():
    ds, mean = regression_store(200, lambda m: 0.0 * m)
    test, train = split(ds, 150)
    out = baselines.ridge_baseline(ds, test, train, n_members=4, alphas=[1e-6])
    truth = ds.precip.sel(time=test).values
    assert np.isnan(out.values[..., 0, 0]).all()
    np.testing.assert_allclose(
        out.values[:, :, 1:, :], np.broadcast_to(truth, out.shape)[:, :, 1:, :], rtol=1e-4
    )


def test_heteroscedastic_spread_follows_the_prediction():
    """Error std 0.1 + 0.2 mean in sqrt space: the members' std in sqrt space follows it."""
    ds, mean = regression_store(3000, lambda m: 0.1 + 0.2 * m)
    test, train = split(ds, 2500)
    out = baselines.ridge_baseline(ds, test, train, n_members=400, seed=1)
    z = np.sqrt(out.values.reshape(400, len(test), -1)[..., 1:])
    expected = 0.1 + 0.2 * mean[2500:, 1:]
    wet = mean[2500:, 1:] > 1.0  # censoring at 0 is negligible there
    ratio = z.std(0)[wet] / expected[wet]
    assert abs(np.median(ratio) - 1.0) < 0.05
    slope = np.polyfit(expected[wet], z.std(0)[wet], 1)[0]  # a constant std would give 0
    assert 0.8 < slope < 1.2
    # the ensemble mean follows the true mean: ~0.06 from the fit, ~0.05 from 400 members
    assert np.sqrt(((z.mean(0) - mean[2500:, 1:]) ** 2).mean()) < 0.12
    assert (out.values[np.isfinite(out.values)] >= 0).all()


def test_seeded_and_named_inputs_checked():
    ds, _ = regression_store(60, lambda m: 0.3 + 0.0 * m)
    test, train = split(ds, 40)
    a = baselines.ridge_baseline(ds, test, train, seed=2)
    b = baselines.ridge_baseline(ds, test, train, seed=2)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.dims == ("member", "time", "lat", "lon") and a.attrs["ridge_alpha"] > 0
    with pytest.raises(UserError, match="coarse_pr"):
        baselines.ridge_baseline(ds, test, train, powered=["coarse_pr"])
    with pytest.raises(UserError, match="power"):
        baselines.ridge_baseline(ds, test, train, power=2.0)


def test_the_coarse_predictand_is_powered_by_default():
    """With no ``powered``, coarse_<variable> (here coarse_a renamed) gets the target's power."""
    ds, _ = regression_store(80, lambda m: 0.3 + 0.0 * m)
    ds = ds.rename({"coarse_a": "coarse_precip"})
    test, train = split(ds, 60)
    default = baselines.ridge_baseline(ds, test, train)
    named = baselines.ridge_baseline(ds, test, train, powered=["coarse_precip"])
    raw = baselines.ridge_baseline(ds, test, train, powered=[])
    np.testing.assert_array_equal(default.values, named.values)
    assert not np.allclose(default.values, raw.values, equal_nan=True)


def test_lazy_and_chunking_does_not_change_the_draws():
    ds, _ = regression_store(60, lambda m: 0.3 + 0.0 * m)
    test, train = split(ds, 40)
    one = baselines.ridge_baseline(ds, test, train, n_members=5)  # default 16-day blocks
    assert isinstance(
        one.data, dask.array.Array
    )  # lazy: members drawn block by block when computed
    train_fields, test_fields = baselines._shifted_predictors(ds, train, test, None, [0], "ridge")
    daily = baselines.ridge_ensemble(
        train_fields, ds.precip.sel(time=train), test_fields, n_members=5, time_chunk=1
    )
    np.testing.assert_array_equal(one.values, daily.values)
