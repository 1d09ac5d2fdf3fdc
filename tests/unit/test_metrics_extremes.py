"""Event ratios, annual maxima, return levels, climatology maps and the climate-change signal."""

from __future__ import annotations

import numpy as np
import pytest

from downscale.evaluation.metrics import climate_change, climatology, extremes
from tests.unit._evaldata import fields


def test_event_ratio_is_one_for_identical_and_counts_bins():
    samples, obs = fields()
    same = obs.expand_dims(member=3)
    ratio = extremes.event_ratio(same, obs).values
    np.testing.assert_allclose(ratio[:3], 1.0)
    assert np.isnan(ratio[-1]) and float(obs.max()) < 50  # no observed events: undefined
    out = extremes.event_ratio(samples * 0 + 5.0, obs, bins=((0, 1), (1, 10)))
    frac = ((obs >= 1) & (obs < 10)).mean().item()
    assert float(out.sel(bin="1-10")) == pytest.approx(1.0 / frac)
    assert float(out.sel(bin="0-1")) == 0.0


def test_annual_maxima_and_bias():
    samples, obs = fields(members=2, days=800, size=4, start="2000-01-01")
    am = extremes.annual_maxima(samples, obs)
    dm = obs.mean(["lat", "lon"])
    np.testing.assert_allclose(
        am.sel(source="obs").isel(member=0).values, dm.groupby("time.year").max().values
    )
    assert am.sizes["year"] == 3
    assert float(extremes.annual_max_bias(obs.expand_dims(member=2), obs)) == pytest.approx(0.0)


def test_return_levels_skip_short_records_and_fit_long_ones():
    samples, obs = fields(members=2, days=60, size=4)
    short = extremes.return_levels(samples, obs, min_years=10)
    assert np.isnan(short) and "years" in short.attrs["skipped"]
    samples, obs = fields(members=2, days=365 * 12, size=2)
    out = extremes.return_levels(samples, obs, periods=(2, 10))
    assert (out.sel(return_period=10) > out.sel(return_period=2)).all()
    am = extremes.annual_maxima(samples, obs).sel(source="obs").isel(member=0).values
    assert float(out.sel(source="obs", return_period=2)) == pytest.approx(np.median(am), rel=0.2)


def test_bias_maps():
    samples, obs = fields()
    doubled = 2 * obs.expand_dims(member=1)
    np.testing.assert_allclose(
        climatology.bias_map(doubled, obs, relative=True).values, 100.0, rtol=1e-12
    )
    assert float(climatology.mean_bias(doubled, obs)) == pytest.approx(float(obs.mean()))


def test_climate_change_signal():
    samples, obs = fields(days=20)
    past = {"time": slice(0, 10)}
    # downscaled future doubled, reference unchanged: +100 % error in the mean
    s_f = samples.isel(past).copy(data=2 * samples.isel(past).values)
    s_f["time"] = samples.time[10:]
    out = climate_change.climate_change_signal(
        samples.isel(past), obs.isel(past), s_f, obs.isel(past), quantiles=(0.5,)
    )
    assert float(out.sel(quantity="downscaled", stat="mean")) == pytest.approx(100.0)
    assert float(out.sel(quantity="reference", stat="mean")) == pytest.approx(0.0)
    assert float(out.sel(quantity="error", stat="q50")) == pytest.approx(100.0)
    periods = [["2000-01-01", "2000-01-10"], ["2000-01-11", "2000-01-20"]]
    split = climate_change.climate_change_periods(samples, obs, periods=periods)
    assert split.sizes == {"quantity": 3, "stat": 4}
    assert "skipped" in climate_change.climate_change_periods(samples, obs).attrs
