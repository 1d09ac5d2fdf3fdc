"""Tiny source files in the MSWEP / MSWX / ERA5 layouts, for tests and examples.

The fields are simple known functions so that a built store can be checked against them:

- MSWEP ``precipitation`` (mm/d): gamma noise (seeded), 0.1 deg, latitude descending, daily files;
- MSWX ``air_temperature`` in degC (converted to K by the recipe) = ``10 + 0.5 * day``, spatially
  constant; ``relative_humidity`` (%) = 60; ``surface_pressure`` (Pa) = ``80000 + 10 * lat``;
- ERA5 ``t``, ``q``, ``vo`` with a ``level`` dim (hPa), 0.25 deg, longitude 0..360, latitude
  descending, monthly files whose last day is repeated in the next file (duplicate times); ``t``
  at level L is ``200 + L / 10 + day`` (K); ``q`` uses the ``noleap`` calendar (no 29 February);
- ``static/elevation.nc``: ``elevation`` (m) = ``1000 + 100 * (lon + 108)``, 0.05 deg.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

LEVELS = (200, 500, 700, 850)


def _axis(lo: float, hi: float, d: float) -> np.ndarray:
    n = int(round((hi - lo) / d))
    return np.round(lo + d / 2 + d * np.arange(n), 6)


def _doy_name(day: pd.Timestamp) -> str:
    return f"{day.year}{day.dayofyear:03d}.nc"


def write_mswep_era5_layout(
    root: str | Path,
    start: str = "2000-02-25",
    end: str = "2000-03-03",
    lon: tuple[float, float] = (-112.0, -104.0),
    lat: tuple[float, float] = (34.0, 42.0),
    seed: int = 0,
) -> Path:
    """Write the tiny layout under ``root``; returns ``root``."""
    root = Path(root)
    days = pd.date_range(start, end, freq="D")
    rng = np.random.default_rng(seed)
    flat, flon = _axis(*lat, 0.1)[::-1], _axis(*lon, 0.1)  # MSWEP/MSWX: lat descending

    # MSWEP
    (root / "MSWEP").mkdir(parents=True, exist_ok=True)
    for day in days:
        pr = rng.gamma(0.5, 4.0, size=(1, flat.size, flon.size)).astype(np.float32)
        ds = xr.Dataset(
            {"precipitation": (("time", "lat", "lon"), pr, {"units": "mm/d"})},
            coords={"time": [day], "lat": flat, "lon": flon},
        )
        ds.to_netcdf(root / "MSWEP" / _doy_name(day))

    # MSWX
    for folder, name, units, fn in (
        ("Temp", "air_temperature", "degC", lambda d, la, lo: 10.0 + 0.5 * d + 0 * la * lo),
        ("RelHum", "relative_humidity", "%", lambda d, la, lo: 60.0 + 0 * la * lo),
        ("Pres", "surface_pressure", "Pa", lambda d, la, lo: 80000.0 + 10.0 * la + 0 * lo),
    ):
        out = root / "MSWX" / folder / "Daily"
        out.mkdir(parents=True, exist_ok=True)
        la, lo = np.meshgrid(flat, flon, indexing="ij")
        for i, day in enumerate(days):
            v = fn(float(i), la, lo)[None].astype(np.float32)
            ds = xr.Dataset(
                {name: (("time", "lat", "lon"), v, {"units": units})},
                coords={"time": [day], "lat": flat, "lon": flon},
            )
            ds.to_netcdf(out / _doy_name(day))

    # ERA5: monthly files, 0.25 deg, lon 0..360, lat descending, level dim
    elat = _axis(lat[0] - 2, lat[1] + 2, 0.25)[::-1]
    elon = _axis(lon[0] - 2 + 360, lon[1] + 2 + 360, 0.25)
    months = sorted({(d.year, d.month) for d in days})
    for var in ("t", "q", "vo"):
        out = root / "ERA5" / var
        out.mkdir(parents=True, exist_ok=True)
        for k, (y, m) in enumerate(months):
            mdays = [d for d in days if (d.year, d.month) == (y, m)]
            if k > 0:  # overlap: repeat the previous month's last day (a duplicate time)
                mdays = [d for d in days if d < mdays[0]][-1:] + mdays
            idx = np.array([days.get_loc(d) for d in mdays], dtype=float)
            lev = np.array(LEVELS, dtype=float)
            base = np.ones((idx.size, lev.size, elat.size, elon.size))
            if var == "t":
                v = (200.0 + lev[None, :, None, None] / 10 + idx[:, None, None, None]) * base
                attrs = {"units": "K"}
            elif var == "q":
                v = 1e-3 * (1 + idx[:, None, None, None]) * base
                attrs = {"units": "kg kg**-1"}
            else:
                v = 1e-5 * base * np.cos(np.radians(elon))[None, None, None, :]
                attrs = {"units": "s**-1"}
            times: object = mdays
            if var == "q":  # noleap calendar: 29 February does not exist
                import cftime

                keep = [not (d.month == 2 and d.day == 29) for d in mdays]
                v = v[np.array(keep)]
                times = [
                    cftime.DatetimeNoLeap(d.year, d.month, d.day)
                    for d, k2 in zip(mdays, keep, strict=True)
                    if k2
                ]
            ds = xr.Dataset(
                {var: (("time", "level", "latitude", "longitude"), v.astype(np.float32), attrs)},
                coords={
                    "time": times,
                    "level": ("level", lev, {"units": "hPa"}),
                    "latitude": elat,
                    "longitude": elon,
                },
            )
            ds.to_netcdf(out / f"era5_{var}_{y}_{m:02d}.nc")

    # static terrain
    (root / "static").mkdir(parents=True, exist_ok=True)
    slat, slon = _axis(lat[0] - 1, lat[1] + 1, 0.05), _axis(lon[0] - 1, lon[1] + 1, 0.05)
    elev = 1000.0 + 100.0 * (slon[None, :] + 108.0) + 0 * slat[:, None]
    xr.Dataset(
        {"elevation": (("lat", "lon"), elev.astype(np.float32), {"units": "m"})},
        coords={"lat": slat, "lon": slon},
    ).to_netcdf(root / "static" / "elevation.nc")
    return root


def day_files(root: str | Path, day: dt.date) -> str:
    """The ``<YYYYDDD>.nc`` name of a day."""
    return _doy_name(pd.Timestamp(day))
