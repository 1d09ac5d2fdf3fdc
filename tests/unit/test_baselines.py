"""Baselines: interpolation, nearest upsampling, analogs, RainFARM, and the store adapters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from omegaconf import OmegaConf

from downscale.evaluation import baselines
from downscale.evaluation.metrics.spectral import radial_psd

CONF = Path(__file__).resolve().parents[2] / "conf" / "evaluation"


def make_store(days: int = 20, seed: int = 0) -> xr.Dataset:
    """Fine 32 x 32 at 0.1 deg; coarse 8 x 8 = 4 x 4 block means; one extra coarse predictor."""
    rng = np.random.default_rng(seed)
    lat = 40 + 0.1 * np.arange(32) + 0.05
    lon = -5 + 0.1 * np.arange(32) + 0.05
    fine = rng.gamma(0.6, 3.0, (days, 32, 32))
    coarse = fine.reshape(days, 8, 4, 8, 4).mean((2, 4))
    time = pd.date_range("2001-01-01", periods=days)
    return xr.Dataset(
        {
            "precip": (("time", "lat", "lon"), fine, {"units": "mm/day"}),
            "coarse_precip": (("time", "lat_coarse", "lon_coarse"), coarse),
            "coarse_t": (("time", "lat_coarse", "lon_coarse"), rng.normal(size=(days, 8, 8))),
            "valid_mask": (("lat", "lon"), np.ones((32, 32), np.uint8)),
        },
        coords={
            "time": time,
            "lat": lat,
            "lon": lon,
            "lat_coarse": lat.reshape(8, 4).mean(1),
            "lon_coarse": lon.reshape(8, 4).mean(1),
        },
    )


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_interpolation_reproduces_a_linear_field(method):
    store = make_store(days=2)
    plane = 3.0 + 2.0 * (store.lat_coarse - 40) + 0.5 * (store.lon_coarse + 5)
    coarse = plane.expand_dims(time=store.time[:2]).transpose("time", "lat_coarse", "lon_coarse")
    out = baselines.interpolate(coarse, store, method)
    expect = 3.0 + 2.0 * (store.lat - 40) + 0.5 * (store.lon + 5)
    assert out.dims == ("member", "time", "lat", "lon") and out.sizes["member"] == 1
    np.testing.assert_allclose(
        out.isel(member=0, time=1).values, expect.transpose("lat", "lon").values, atol=1e-8
    )


def test_nearest_upsampling_fills_blocks():
    store = make_store(days=2)
    out = baselines.nearest_baseline(store, store.time.values)
    blocks = out.isel(member=0).values.reshape(2, 8, 4, 8, 4)
    np.testing.assert_allclose(
        blocks, np.broadcast_to(store.coarse_precip.values[:, :, None, :, None], blocks.shape)
    )
    assert out.attrs["units"] == "mm/day"


def test_analogs_find_the_identical_day_first():
    store = make_store(days=30)
    train, test = store.time.values[:25], store.time.values[[3, 10]]
    out = baselines.analog_baseline(store, test, train, k=5)
    assert out.sizes["member"] == 5
    np.testing.assert_allclose(out.isel(member=0).values, store.precip.sel(time=test).values)
    first = out.isel(member=0, time=0).values
    assert not np.allclose(out.isel(member=1, time=0).values, first)


def test_analogs_with_the_next_day_break_a_same_day_tie():
    store = make_store(days=10)
    coarse = store[["coarse_precip", "coarse_t"]]
    # test day 7 has the same-day predictors of training days 2 and 5; only day 5's next day (6)
    # also matches day 7's next day (8)
    for name in coarse.data_vars:
        values = store[name].values
        values[2] = values[5] = values[7]
        values[6] = values[8]
        store[name] = (store[name].dims, values)
    train, test = store.time.values[:6], store.time.values[[7]]
    same_day = baselines.analog_baseline(store, test, train, k=2)
    assert {float(v) for v in same_day.isel(time=0).mean(("lat", "lon")).values} == {
        float(store.precip.isel(time=d).mean()) for d in (2, 5)
    }  # a tie at distance 0
    both = baselines.analog_baseline(store, test, train, k=1, coarse_offsets=[0, 1])
    np.testing.assert_allclose(both.isel(member=0, time=0).values, store.precip.isel(time=5).values)


def test_rainfarm_conserves_coarse_means_and_is_seeded():
    store = make_store(days=3)
    out = baselines.rainfarm_baseline(store, store.time.values, n_members=4, seed=1)
    assert out.dims == ("member", "time", "lat", "lon") and (out >= 0).all()
    cell = out.values.reshape(4, 3, 8, 4, 8, 4).mean((3, 5))
    np.testing.assert_allclose(
        cell, np.broadcast_to(store.coarse_precip.values, cell.shape), rtol=1e-5
    )
    again = baselines.rainfarm_baseline(store, store.time.values, n_members=4, seed=1)
    other = baselines.rainfarm_baseline(store, store.time.values, n_members=4, seed=2)
    np.testing.assert_array_equal(out.values, again.values)
    assert not np.allclose(out.values, other.values)
    assert np.isfinite(out.attrs["rainfarm_slope"])


def test_rainfarm_gaussian_field_has_the_requested_slope():
    g = baselines._gaussian_fields(np.random.default_rng(0), (8, 64, 64), alpha=3.0)
    np.testing.assert_allclose(g.std(axis=(-2, -1)), 1.0, rtol=1e-6)
    psd = radial_psd(xr.DataArray(g, dims=("time", "y", "x"))).mean("time")
    k = psd.wavenumber.values
    slope = -np.polyfit(np.log(k), np.log(psd.values), 1)[0]
    assert slope == pytest.approx(3.0, abs=0.2)


def test_compute_baselines_from_the_default_config():
    store = make_store(days=24)
    cfg = OmegaConf.load(CONF / "default.yaml")
    cfg.baselines.analogs.k = 4
    cfg.baselines.rainfarm.n_members = 3
    cfg.baselines.ridge.n_members = 3
    out = baselines.compute_baselines(store, store.time.values[20:], store.time.values[:20], cfg)
    assert set(out) == {"bilinear", "bicubic", "nearest", "analogs", "rainfarm", "ridge"}
    for name, da in out.items():
        assert da.dims == ("member", "time", "lat", "lon"), name
        assert da.sizes["time"] == 4 and np.isfinite(da.values).all(), name


def test_adapters_take_a_differently_named_coarse_field():
    """coarse=<name> uses coarse_<name> (Iberia: NCEP pr for the E-OBS precip predictand)."""
    store = make_store(days=6).rename({"coarse_precip": "coarse_pr"})
    times = store.time.values[3:]
    with pytest.raises(baselines.UserError, match="coarse_precip"):
        baselines.nearest_baseline(store, times)
    near = baselines.nearest_baseline(store, times, coarse="pr")
    expected = np.repeat(np.repeat(store.coarse_pr.values[3:], 4, axis=1), 4, axis=2)
    np.testing.assert_allclose(near.values[0], expected)
    lin = baselines.interpolation_baseline(store, times, method="linear", coarse="pr")
    farm = baselines.rainfarm_baseline(store, times, n_members=2, coarse="pr")
    assert lin.sizes["time"] == farm.sizes["time"] == 3
    block = farm.values.reshape(2, 3, 8, 4, 8, 4).mean((3, 5))
    np.testing.assert_allclose(
        block, np.broadcast_to(store.coarse_pr.values[3:], block.shape), rtol=1e-4
    )


def test_rainfarm_and_interpolation_are_lazy_and_chunking_does_not_change_them():
    store = make_store(days=5)
    times = store.time.values
    whole = baselines.rainfarm_baseline(store, times, n_members=2, seed=3)
    assert whole.chunks is not None  # dask: computed block by block when scored
    split = baselines.rainfarm(
        store.coarse_precip.assign_attrs(units="mm/day"), store, n_members=2, seed=3, time_chunk=2
    )
    np.testing.assert_array_equal(whole.values, split.values)
    assert whole.attrs["rainfarm_slope"] == split.attrs["rainfarm_slope"]
    linear = baselines.interpolation_baseline(store, times)
    assert linear.chunks is not None
    per_day = baselines.interpolate(store.coarse_precip, store, time_chunk=1)
    np.testing.assert_allclose(linear.values, per_day.values, rtol=1e-12)
