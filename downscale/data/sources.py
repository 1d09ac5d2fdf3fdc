"""Readers for the source products of dataset building.

Every reader is a small class built from a recipe with ``_target_``; its ``open(period)`` returns
a lazy (dask-backed) :class:`xarray.Dataset` in one standard form:

- dims ``time, lat, lon`` (statics: ``lat, lon``), latitude ascending, longitude in [-180, 180)
  ascending;
- ``time`` as ``datetime64`` on the standard calendar (cftime calendars such as ``noleap`` are
  converted; ``360_day`` maps dates onto the standard calendar), sorted, duplicate times dropped
  (first kept), optionally floored to a frequency (``"D"``: E-OBS stamps days at 00:00, CMIP5 at
  12:00);
- variables renamed to their store names, pressure levels selected (``T850 = t at 850 hPa``),
  converted to the requested units (checked from the files' ``units`` attributes), optionally
  clipped.

A variable entry is ``{name: <in-file name>, units: <wanted units>, units_in: <override>, level:
<hPa>, clip: [lo, hi]}``; a plain string is the in-file name.

Layouts: MSWEP ``<root>/<YYYYDDD>.nc`` (variable ``precipitation``), MSWX ``<root>/<Folder>/Daily/
<YYYYDDD>.nc``, ERA5 per-variable files ``<pattern with {variable}>`` with a ``level`` dim, and a
generic netCDF/zarr glob. To add a source, subclass :class:`Source` and implement ``_files(period)``
(and, if the variables live in different files, ``_open_variable``); see docs/data.md.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from downscale.data.grids import normalise_lon
from downscale.data.units import convert
from downscale.utils.errors import UserError

_RENAME = {
    "latitude": "lat",
    "longitude": "lon",
    "valid_time": "time",
    "pressure_level": "level",
    "plev": "level",
    "lev": "level",
    "isobaricInhPa": "level",
}

_SEASONS = {
    "DJF": (12, 1, 2),
    "MAM": (3, 4, 5),
    "JJA": (6, 7, 8),
    "SON": (9, 10, 11),
    "ONDJFM": (10, 11, 12, 1, 2, 3),
    "AMJJAS": (4, 5, 6, 7, 8, 9),
}


class Period:
    """A time selection: ``start``..``end`` (inclusive), optional months or season, optional drop of
    29 February (as in the reference setup)."""

    def __init__(
        self,
        start: str | None = None,
        end: str | None = None,
        months: Sequence[int] | None = None,
        season: str | None = None,
        drop_feb29: bool = False,
    ) -> None:
        self.start = pd.Timestamp(str(start)) if start is not None else None
        self.end = pd.Timestamp(str(end)) if end is not None else None
        if self.end is not None and len(str(end)) <= 10:  # a date: include the whole day
            self.end = self.end + pd.Timedelta(days=1) - pd.Timedelta(nanoseconds=1)
        if season is not None:
            if str(season).upper() not in _SEASONS:
                raise UserError(f"unknown season {season!r}; use one of {list(_SEASONS)} or months")
            months = _SEASONS[str(season).upper()]
        self.months = tuple(int(m) for m in months) if months else None
        self.drop_feb29 = bool(drop_feb29)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Period:
        return cls(**dict(cfg or {}))

    def day_in(self, day: dt.date) -> bool:
        """Whether a calendar day may hold selected times (used to pick daily files)."""
        ts = pd.Timestamp(day)
        if self.start is not None and ts + pd.Timedelta(days=1) <= self.start:
            return False
        if self.end is not None and ts > self.end:
            return False
        if self.months is not None and ts.month not in self.months:
            return False
        return not (self.drop_feb29 and ts.month == 2 and ts.day == 29)

    def mask(self, times: xr.DataArray) -> np.ndarray:
        t = pd.DatetimeIndex(times.values)
        keep = np.ones(t.size, dtype=bool)
        if self.start is not None:
            keep &= t >= self.start
        if self.end is not None:
            keep &= t <= self.end
        if self.months is not None:
            keep &= np.isin(t.month, self.months)
        if self.drop_feb29:
            keep &= ~((t.month == 2) & (t.day == 29))
        return keep

    def describe(self) -> dict[str, Any]:
        return {
            "start": None if self.start is None else str(self.start),
            "end": None if self.end is None else str(self.end),
            "months": None if self.months is None else list(self.months),
            "drop_feb29": self.drop_feb29,
        }


def open_any(path: str | os.PathLike[str], **kwargs: Any) -> xr.Dataset:
    """Open a netCDF file or zarr store lazily; an unreadable file is a :class:`UserError`."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"source file {p} does not exist; check paths.data_root and the recipe")
    try:
        if p.suffix == ".zarr" or p.is_dir():
            with warnings.catch_warnings():  # stores without consolidated metadata are fine
                warnings.simplefilter("ignore", RuntimeWarning)
                return xr.open_zarr(p, chunks={}, **kwargs)
        return xr.open_dataset(p, chunks={}, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise UserError(
            f"cannot read {p} ({type(exc).__name__}: {msg}); the file is corrupt or not "
            "netCDF/zarr: re-create or re-download it, or remove it from the source"
        ) from exc


def _to_standard_calendar(ds: xr.Dataset) -> xr.Dataset:
    if "time" not in ds.coords or np.issubdtype(ds["time"].dtype, np.datetime64):
        return ds
    cal = getattr(ds["time"].dt, "calendar", "standard")
    align = "date" if cal == "360_day" else None
    return ds.convert_calendar("standard", use_cftime=False, align_on=align)


def standardise(ds: xr.Dataset, where: str, floor: str | None = None) -> xr.Dataset:
    """Bring a dataset to the standard form (see the module docstring)."""
    ds = ds.rename({k: v for k, v in _RENAME.items() if k in ds.variables or k in ds.dims})
    for name in ("lat", "lon"):
        if name not in ds.dims:
            raise UserError(
                f"{where} has no `{name}` dimension (dims: {list(ds.dims)}); projected y/x grids "
                "are "
                "not supported by the lat/lon builder: regrid the file to lat/lon first"
            )
    if ds["lat"].size > 1 and ds["lat"].values[0] > ds["lat"].values[-1]:
        ds = ds.isel(lat=slice(None, None, -1))
    lon = ds["lon"].values
    new_lon = normalise_lon(lon)
    if not np.array_equal(new_lon, lon):
        bname = ds["lon"].attrs.get("bounds")
        ds = ds.assign_coords(lon=xr.DataArray(new_lon, dims="lon", attrs=ds["lon"].attrs))
        if bname and bname in ds:
            ds[bname] = ds[bname] + (new_lon - lon)[:, None]
    if np.any(np.diff(ds["lon"].values) < 0):
        ds = ds.sortby("lon")
    if "time" in ds.dims:
        ds = _to_standard_calendar(ds)
        if floor is not None:
            ds = ds.assign_coords(time=ds["time"].dt.floor(floor))
        if not ds.indexes["time"].is_monotonic_increasing:
            ds = ds.sortby("time")
        dup = ds.indexes["time"].duplicated()
        if dup.any():
            ds = ds.isel(time=np.nonzero(~dup)[0])
    return ds


def _var_spec(store_name: str, spec: Any) -> dict[str, Any]:
    if spec is None:
        spec = {}
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    spec.setdefault("name", store_name)
    return spec


class Source:
    """Base reader. ``variables`` maps store names to variable entries (see the module doc)."""

    layout = "netcdf"

    def __init__(
        self, variables: Mapping[str, Any], engine_kwargs: Mapping[str, Any] | None = None
    ):
        if not variables:
            raise UserError(f"a {type(self).__name__} names no variables; add `variables:`")
        self.variables = {str(k): _var_spec(str(k), v) for k, v in dict(variables).items()}
        self.engine_kwargs = dict(engine_kwargs or {})

    # -- to implement -------------------------------------------------------------------------
    def _files(self, period: Period | None, spec: dict[str, Any]) -> list[Path]:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    # -- shared machinery ---------------------------------------------------------------------
    def _open_files(self, files: list[Path], floor: str | None) -> xr.Dataset:
        parts = [standardise(open_any(f, **self.engine_kwargs), str(f), floor) for f in files]
        if len(parts) == 1:
            return parts[0]
        try:
            ds = xr.concat(
                [p for p in parts if "time" in p.dims] or parts[:1],
                dim="time",
                data_vars="minimal",
                coords="minimal",
                compat="override",
                join="exact",
            )
        except ValueError as exc:
            raise UserError(
                f"the files of {self.describe()} ({files[0].parent}) do not share one grid "
                f"({exc}); "
                "give one product per source"
            ) from exc
        return standardise(ds, self.describe())

    def _open_variable(
        self, store_name: str, spec: dict[str, Any], period: Period | None, floor: str | None
    ) -> xr.DataArray:
        files = self._files(period, spec)
        ds = self._open_files(files, floor)
        where = f"{files[0] if len(files) == 1 else files[0].parent}"
        return self._extract(ds, store_name, spec, where, period)

    def _extract(
        self,
        ds: xr.Dataset,
        store_name: str,
        spec: dict[str, Any],
        where: str,
        period: Period | None,
    ) -> xr.DataArray:
        name = spec["name"]
        if name not in ds.data_vars:
            raise UserError(
                f"variable {name!r} is not in {where} (it has {sorted(map(str, ds.data_vars))}); "
                f"fix variables.{store_name}.name in the recipe"
            )
        da = ds[name]
        desc = f"variable {name!r} of {where}"
        if spec.get("level") is not None:
            da = _select_level(da, float(spec["level"]), desc)
        elif "level" in da.dims:
            if da.sizes["level"] != 1:
                raise UserError(f"{desc} has {da.sizes['level']} levels; set `level:` for it")
            da = da.isel(level=0, drop=True)
        if period is not None and "time" in da.dims:
            keep = period.mask(da["time"])
            if not keep.any():
                t = da["time"].values
                raise UserError(
                    f"the period {period.describe()} holds no time of {desc} (it covers "
                    f"{str(t[0])[:19]} .. {str(t[-1])[:19]}); fix period in the recipe"
                )
            da = da.isel(time=np.nonzero(keep)[0])
        da = da.reset_coords(drop=True)  # scalar/auxiliary coords (e.g. a selected level)
        extra = [d for d in da.dims if d not in ("time", "lat", "lon")]
        if extra:
            raise UserError(
                f"{desc} has extra dims {extra}; select them (e.g. `level:`) in the recipe"
            )
        if spec.get("units") is not None:
            da = convert(da, str(spec["units"]), where=desc, src=spec.get("units_in"))
        if spec.get("clip") is not None:
            lo, hi = spec["clip"]
            attrs = dict(da.attrs)
            da = da.clip(lo, hi)
            da.attrs = attrs | {"clipped_to": f"[{lo}, {hi}]"}
        da.attrs["source"] = where
        da.attrs["source_variable"] = name + (f"@{spec['level']}" if spec.get("level") else "")
        order = [d for d in ("time", "lat", "lon") if d in da.dims]
        return da.transpose(*order).rename(store_name)

    def open(self, period: Period | None = None, floor: str | None = None) -> xr.Dataset:
        """All variables of this source as one lazy standard dataset."""
        arrays = [self._open_variable(k, spec, period, floor) for k, spec in self.variables.items()]
        try:
            return xr.merge(arrays, join="exact", compat="override")
        except ValueError as exc:
            raise UserError(
                f"the variables of {self.describe()} are not on one grid/time axis ({exc}); "
                "split them into separate sources"
            ) from exc


def _select_level(da: xr.DataArray, level: float, desc: str) -> xr.DataArray:
    if "level" not in da.dims:
        raise UserError(
            f"{desc} has no pressure-level dim but `level: {level:g}` was asked; drop it"
        )
    levels = np.asarray(da["level"].values, dtype=np.float64)
    if str(da["level"].attrs.get("units", "")).lower() == "pa" or levels.max() > 2000:
        levels = levels / 100.0  # Pa -> hPa
    hit = np.nonzero(np.isclose(levels, level))[0]
    if hit.size == 0:
        raise UserError(
            f"{desc} has no level {level:g} hPa (it has {levels.tolist()}); fix `level:`"
        )
    return da.isel(level=int(hit[0]), drop=True)


def _expand(path: str | os.PathLike[str] | Sequence[str]) -> list[Path]:
    patterns = [str(path)] if isinstance(path, str | os.PathLike) else [str(p) for p in path]
    files: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat))) if glob.has_magic(pat) else [pat]
        files.extend(Path(h) for h in hits)
    return files


class NetCDFSource(Source):
    """Generic netCDF/zarr files matching ``path`` (a glob, or a list of paths/globs)."""

    def __init__(self, path: str | Sequence[str], variables: Mapping[str, Any], **kwargs: Any):
        super().__init__(variables, **kwargs)
        self.path = path

    def describe(self) -> str:
        return f"netcdf:{self.path}"

    def _files(self, period: Period | None, spec: dict[str, Any]) -> list[Path]:
        files = _expand(self.path)
        if not files:
            raise UserError(f"no file matches {self.path}; check paths.data_root and the recipe")
        return files

    def open(self, period: Period | None = None, floor: str | None = None) -> xr.Dataset:
        # all variables live in the same files: open them once
        files = self._files(period, {})
        ds = self._open_files(files, floor)
        where = str(files[0]) if len(files) == 1 else str(self.path)
        arrays = [self._extract(ds, k, s, where, period) for k, s in self.variables.items()]
        return xr.merge(arrays, join="exact", compat="override")


_DAILY = re.compile(r"^(\d{4})(\d{3})\.nc$")


def _daily_files(folder: Path, period: Period | None, what: str) -> list[Path]:
    """``<folder>/<YYYYDDD>.nc`` files whose day lies in ``period``."""
    if not folder.is_dir():
        raise UserError(
            f"{what} folder {folder} does not exist; check paths.data_root and the recipe"
        )
    files = []
    for f in sorted(folder.iterdir()):
        m = _DAILY.match(f.name)
        if not m:
            continue
        day = dt.date(int(m.group(1)), 1, 1) + dt.timedelta(days=int(m.group(2)) - 1)
        if period is None or period.day_in(day):
            files.append(f)
    if not files:
        desc = "" if period is None else f" in period {period.describe()}"
        raise UserError(f"no <YYYYDDD>.nc file{desc} in {folder}; fix the period or the root path")
    return files


class MSWEPSource(Source):
    """MSWEP daily files ``<root>/<YYYYDDD>.nc`` holding ``precipitation`` (mm/d, 0.1 deg, lat
    descending)."""

    layout = "mswep"

    def __init__(
        self,
        root: str,
        variables: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        variables = variables or {"precip": {"name": "precipitation", "units": "mm/day"}}
        super().__init__(variables, **kwargs)
        self.root = Path(root)

    def describe(self) -> str:
        return f"mswep:{self.root}"

    def _files(self, period: Period | None, spec: dict[str, Any]) -> list[Path]:
        return _daily_files(self.root, period, "MSWEP")


class MSWXSource(Source):
    """MSWX daily per-variable folders ``<root>/<Folder>/Daily/<YYYYDDD>.nc``; each variable entry
    names its ``folder`` (e.g. ``Temp``, ``RelHum``, ``Pres``) and in-file ``name``."""

    layout = "mswx"

    def __init__(self, root: str, variables: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(variables, **kwargs)
        self.root = Path(root)
        for k, spec in self.variables.items():
            if "folder" not in spec:
                raise UserError(
                    f"MSWX variable {k} needs `folder:` (e.g. Temp); add it to the recipe"
                )

    def describe(self) -> str:
        return f"mswx:{self.root}"

    def _files(self, period: Period | None, spec: dict[str, Any]) -> list[Path]:
        return _daily_files(self.root / spec["folder"] / "Daily", period, f"MSWX {spec['folder']}")


class ERA5Source(Source):
    """ERA5 per-variable (yearly or monthly) files: ``pattern`` contains ``{variable}`` (the entry's
    ``file_variable``, default its in-file ``name``), e.g. ``<root>/{variable}/*.nc``;
    pressure-level variables carry a ``level`` (hPa) selected per entry, e.g.
    ``T850: {name: t, level: 850}``."""

    layout = "era5"

    def __init__(self, pattern: str, variables: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(variables, **kwargs)
        self.pattern = str(pattern)

    def describe(self) -> str:
        return f"era5:{self.pattern}"

    def _files(self, period: Period | None, spec: dict[str, Any]) -> list[Path]:
        pat = self.pattern.format(variable=spec.get("file_variable", spec["name"]))
        files = _expand(pat)
        if period is not None and period.start is not None and period.end is not None:
            years = range(period.start.year, period.end.year + 1)
            dated = [f for f in files if re.search(r"(19|20)\d{2}", f.name)]
            if len(dated) == len(files):  # names carry years: skip files outside the period
                files = [f for f in files if int(re.search(r"(19|20)\d{2}", f.name)[0]) in years]
        if not files:
            raise UserError(f"no ERA5 file matches {pat} in the period; fix the pattern or period")
        return files
