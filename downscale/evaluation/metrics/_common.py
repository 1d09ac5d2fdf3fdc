"""Shared helpers for metric functions: dims, masks and input checks."""

from __future__ import annotations

import numpy as np
import xarray as xr

from downscale.utils.errors import UserError

MEMBER = "member"
TIME = "time"
_SPATIAL_PAIRS = (("lat", "lon"), ("y", "x"), ("latitude", "longitude"), ("rlat", "rlon"))


def spatial_dims(da: xr.DataArray) -> tuple[str, str]:
    """The (row, column) spatial dims: ``lat``/``lon``, ``y``/``x`` or the two other dims."""
    for pair in _SPATIAL_PAIRS:
        if all(d in da.dims for d in pair):
            return pair
    rest = [d for d in da.dims if d not in (MEMBER, TIME)]
    if len(rest) != 2:
        raise UserError(
            f"cannot tell the spatial dims of an array with dims {da.dims}; "
            "name them lat/lon or y/x"
        )
    return rest[0], rest[1]


def apply_mask(da: xr.DataArray, mask: xr.DataArray | None) -> xr.DataArray:
    """Set invalid pixels (``mask`` False) to NaN; ``None`` keeps everything."""
    if mask is None:
        return da
    return da.where(mask.astype(bool))


def check_samples(samples: xr.DataArray, obs: xr.DataArray) -> None:
    """Raise :class:`UserError` unless ``samples`` and ``obs`` have the documented dims."""
    if MEMBER not in samples.dims:
        raise UserError(
            f"samples have dims {samples.dims} without a 'member' dim; "
            "add one (samples.expand_dims(member=1)) or rename the ensemble dim to 'member'"
        )
    if MEMBER in obs.dims:
        raise UserError(
            f"observations have a 'member' dim {obs.dims}; drop it (obs.isel(member=0))"
        )
    sdims = [d for d in samples.dims if d != MEMBER]
    if set(sdims) != set(obs.dims):
        raise UserError(
            f"samples dims {samples.dims} do not match observation dims {obs.dims}; "
            "give both the same time and spatial dims"
        )


def spatial_size(da: xr.DataArray) -> tuple[int, int]:
    """Number of rows and columns."""
    ydim, xdim = spatial_dims(da)
    return int(da.sizes[ydim]), int(da.sizes[xdim])


def as_tuple(values: object) -> tuple:
    """A config list (ListConfig, list, tuple or scalar) as a plain tuple of Python values."""
    if values is None:
        return ()
    if isinstance(values, str | int | float):
        return (values,)
    return tuple(v if not hasattr(v, "__len__") or isinstance(v, str) else tuple(v) for v in values)


def check_threshold_units(da: xr.DataArray, threshold_units: str | None) -> None:
    """Raise when a threshold's declared units differ from the data's ``units`` attribute."""
    units = da.attrs.get("units")
    if threshold_units is None or units is None:
        return
    if _norm_units(units) != _norm_units(threshold_units):
        raise UserError(
            f"thresholds are in '{threshold_units}' but the data are in '{units}'; "
            "give thresholds in the data's units (threshold_units=...)"
        )


_UNIT_ALIASES = {
    "mm/day": "mm/day",
    "mmday-1": "mm/day",
    "mmd-1": "mm/day",
    "mm/d": "mm/day",
    "kgm-2day-1": "mm/day",
    "kgm-2d-1": "mm/day",
    "mm/h": "mm/h",
    "mmh-1": "mm/h",
    "mm/hr": "mm/h",
    "kgm-2h-1": "mm/h",
}


def _norm_units(units: str) -> str:
    key = units.replace(" ", "").replace("**", "").replace("^", "").lower()
    return _UNIT_ALIASES.get(key, key)


def nan_scalar(reason: str, name: str | None = None) -> xr.DataArray:
    """A NaN result that records why the metric was skipped (shown in the report)."""
    return xr.DataArray(np.nan, name=name, attrs={"skipped": reason})


def bincount(codes: xr.DataArray, n: int, weights: xr.DataArray | None = None) -> np.ndarray:
    """Counts of the integer ``codes`` in 0..n-1 (negative codes ignored), lazily for dask.

    Returns a numpy or dask array of length ``n`` (weights summed per code when given).
    """
    import dask.array as dsa

    if TIME in codes.dims:  # keep the (only) chunked dim first so that ravel needs no rechunk
        codes = codes.transpose(TIME, ...)
    if weights is not None:
        weights = weights.broadcast_like(codes).transpose(*codes.dims)
    code = codes.data
    lib = dsa if isinstance(code, dsa.Array) else np
    code = lib.where(code < 0, n, code).ravel()  # invalid -> overflow bin, dropped below
    w = None
    if weights is not None:
        w = weights.data
        if isinstance(code, dsa.Array):
            w = dsa.asarray(w).rechunk(codes.data.chunks)
        w = lib.where(codes.data < 0, 0, w).ravel()
        w = lib.nan_to_num(w)
    if lib is dsa:
        code = code.astype(np.int64)
        return dsa.bincount(code, weights=w, minlength=n + 1)[:n]
    return np.bincount(code.astype(np.int64), weights=w, minlength=n + 1)[:n]


def bin_index(values: xr.DataArray, bins: object) -> xr.DataArray:
    """Index of the intensity bin [lo, hi) holding each value (-1: in no bin or NaN)."""
    idx = xr.zeros_like(values, dtype=np.int64) - 1
    for i, (lo, hi) in enumerate(as_tuple(bins)):
        idx = xr.where((values >= lo) & (values < hi), i, idx)
    return idx


def bin_labels(bins: object) -> list[str]:
    """Readable labels ``lo-hi`` for intensity bins."""
    return [f"{_num(lo)}-{_num(hi)}" for lo, hi in as_tuple(bins)]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)
