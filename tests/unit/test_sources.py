"""Source readers on tiny generated files: MSWEP/MSWX/ERA5 layouts, lat order, 0..360 longitudes,
duplicate times, noleap calendar, units, periods and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from downscale.data.fake_sources import write_mswep_era5_layout
from downscale.data.sources import ERA5Source, MSWEPSource, MSWXSource, NetCDFSource, Period
from downscale.data.units import conversion, convert
from downscale.utils.errors import UserError


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mswep_era5_layout(tmp_path_factory.mktemp("src") / "mswep_era5")


def _standard(ds: xr.Dataset) -> None:
    assert np.all(np.diff(ds["lat"].values) > 0)
    assert np.all(np.diff(ds["lon"].values) > 0)
    assert ds["lon"].min() >= -180 and ds["lon"].max() < 180
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    assert ds.indexes["time"].is_unique and ds.indexes["time"].is_monotonic_increasing


def test_mswep_reader_flips_latitude_and_filters_days(layout: Path) -> None:
    src = MSWEPSource(root=str(layout / "MSWEP"))
    ds = src.open(Period("2000-02-27", "2000-03-01"))
    _standard(ds)
    assert list(ds.data_vars) == ["precip"] and ds["precip"].attrs["units"] == "mm/day"
    assert ds.sizes["time"] == 4  # 27, 28, 29 Feb, 1 Mar
    raw = xr.open_dataset(layout / "MSWEP" / "2000058.nc")  # 27 Feb = day 58
    np.testing.assert_array_equal(
        ds["precip"].isel(time=0).values, raw["precipitation"][0, ::-1].values
    )
    assert ds["precip"].dims == ("time", "lat", "lon")


def test_mswx_converts_degc_to_kelvin(layout: Path) -> None:
    src = MSWXSource(
        root=str(layout / "MSWX"),
        variables={"TEMP": {"folder": "Temp", "name": "air_temperature", "units": "K"}},
    )
    ds = src.open(Period("2000-02-25", "2000-02-26"))
    _standard(ds)
    np.testing.assert_allclose(ds["TEMP"].values[:, 0, 0], [283.15, 283.65], rtol=1e-6)
    assert ds["TEMP"].attrs["units"] == "K"
    assert ds["TEMP"].attrs["units_converted_from"] == "degC"


def test_era5_levels_lon_duplicates_noleap(layout: Path) -> None:
    src = ERA5Source(
        pattern=str(layout / "ERA5" / "{variable}" / "*.nc"),
        variables={
            "T850": {"name": "t", "level": 850, "units": "K"},
            "T200": {"name": "t", "level": 200},
        },
    )
    ds = src.open(Period("2000-02-25", "2000-03-03"))
    _standard(ds)
    # the 29 Feb of the February file is repeated in the March file: one copy kept
    assert ds.sizes["time"] == 8
    np.testing.assert_allclose(ds["T850"].values[:, 0, 0], 285.0 + np.arange(8))
    np.testing.assert_allclose(ds["T200"].values[:, 0, 0], 220.0 + np.arange(8))
    assert -114.0 < float(ds["lon"].min()) < float(ds["lon"].max()) < -100.0  # was 246..258
    q = ERA5Source(
        pattern=str(layout / "ERA5" / "{variable}" / "*.nc"),
        variables={"Q850": {"name": "q", "level": 850, "units": "g kg-1"}},
    )
    dq = q.open(Period("2000-02-25", "2000-03-03"))
    _standard(dq)
    times = pd.DatetimeIndex(dq["time"].values)
    assert pd.Timestamp("2000-02-29") not in times and times.size == 7  # noleap has no 29 Feb
    assert float(dq["Q850"][0, 0, 0]) == pytest.approx(1.0)  # 1e-3 kg/kg -> 1 g/kg


def test_era5_missing_level_is_user_error(layout: Path) -> None:
    src = ERA5Source(
        pattern=str(layout / "ERA5" / "{variable}" / "*.nc"),
        variables={"T300": {"name": "t", "level": 300}},
    )
    with pytest.raises(UserError, match="no level 300"):
        src.open()


def test_period_selection() -> None:
    t = xr.DataArray(pd.date_range("1999-11-25", "2000-03-05", freq="D"), dims="time")
    djf = Period("1999-12-01", "2000-02-29", season="DJF", drop_feb29=True)
    sel = pd.DatetimeIndex(t.values[djf.mask(t)])
    assert sel[0] == pd.Timestamp("1999-12-01") and sel[-1] == pd.Timestamp("2000-02-28")
    assert sel.size == 31 + 31 + 28
    assert Period(months=[3]).mask(t).sum() == 5
    with pytest.raises(UserError, match="season"):
        Period(season="XYZ")


def test_netcdf_source_errors(tmp_path: Path) -> None:
    ds = xr.Dataset(
        {
            "pr": (
                ("time", "lat", "lon"),
                np.ones((2, 3, 4)) * [1, 2, 3, 4],
                {"units": "kg m-2 s-1"},
            )
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=2),
            "lat": [1.0, 2.0, 3.0],
            "lon": [0.0, 90.0, 180.0, 270.0],
        },
    )
    f = tmp_path / "pr.nc"
    ds.to_netcdf(f)
    out = NetCDFSource(str(f), {"precip": {"name": "pr", "units": "mm/day"}}).open()
    # 0..360 -> -180..180, values moved with their longitudes; kg m-2 s-1 -> mm/day
    np.testing.assert_array_equal(out["lon"].values, [-180.0, -90.0, 0.0, 90.0])
    np.testing.assert_allclose(out["precip"].values[0, 0], 86400.0 * np.array([3, 4, 1, 2]))
    with pytest.raises(UserError, match="'tp' is not in .*pr.nc.*fix variables.precip.name"):
        NetCDFSource(str(f), {"precip": {"name": "tp"}}).open()
    with pytest.raises(UserError, match="cannot be converted to 'K'"):
        NetCDFSource(str(f), {"precip": {"name": "pr", "units": "K"}}).open()
    with pytest.raises(UserError, match="period"):
        NetCDFSource(str(f), {"precip": "pr"}).open(Period("2010-01-01", "2010-02-01"))
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"CDF\x01 truncated garbage")
    with pytest.raises(UserError, match="cannot read .*bad.nc.*corrupt"):
        NetCDFSource(str(bad), {"precip": "pr"}).open()
    with pytest.raises(UserError, match="no file matches"):
        NetCDFSource(str(tmp_path / "nothing*.nc"), {"precip": "pr"}).open()


def test_units_table() -> None:
    assert conversion("kg m-2 s-1", "mm/day") == (86400.0, 0.0)
    assert conversion("kg/m2/s", "mm day-1") == (86400.0, 0.0)
    assert conversion("Celsius", "K") == (1.0, 273.15)
    assert conversion("hPa", "Pa") == (100.0, 0.0)
    assert conversion("m2 s-2", "m") == pytest.approx((1 / 9.80665, 0.0))
    assert conversion("Pa", "K") is None
    da = xr.DataArray([1.0])
    with pytest.raises(UserError, match="no `units` attribute"):
        convert(da, "K", where="x")
    assert float(convert(da, "K", where="x", src="degC")[0]) == pytest.approx(274.15)


def test_zarr_source_with_360_day_calendar(tmp_path: Path) -> None:
    import cftime

    times = [cftime.Datetime360Day(2000, 2, d) for d in (28, 29, 30)] + [
        cftime.Datetime360Day(2000, 3, 1)
    ]
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), np.arange(4.0)[:, None, None] * np.ones((4, 2, 2)))},
        coords={"time": times, "lat": [10.0, 11.0], "lon": [350.0, 351.0]},
    )
    ds["tas"].attrs["units"] = "K"
    store = tmp_path / "tas.zarr"
    ds.to_zarr(store, zarr_format=3, consolidated=False)
    out = NetCDFSource(str(store), {"tas": {"units": "degC"}}).open()
    _standard(out)
    # 30 February does not exist on the standard calendar: dropped (align_on="date")
    assert [str(t)[:10] for t in out["time"].values] == ["2000-02-28", "2000-02-29", "2000-03-01"]
    np.testing.assert_allclose(out["tas"].values[:, 0, 0], np.array([0.0, 1.0, 3.0]) - 273.15)
    np.testing.assert_array_equal(out["lon"].values, [-10.0, -9.0])
