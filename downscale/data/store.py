"""Open and check dataset stores (schema in docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from downscale.utils.errors import UserError, require

COARSE_PREFIX = "coarse_"
STATIC_PREFIX = "static_"
MASK = "valid_mask"


def open_store(path: str | Path, recipe: str | None = None) -> xr.Dataset:
    """Open a zarr (or netCDF) dataset store lazily, with a clear error when it is missing or broken.

    ``recipe`` (the build recipe that makes this store, ``conf/build/<recipe>.yaml``) is named in the
    error so that the user can run the build.
    """
    path = Path(path)
    if not path.exists():
        how = (
            f"'python -m downscale.build build={recipe} out={path}'"
            if recipe
            else "'python -m downscale.build build=<recipe>'"
        )
        raise UserError(
            f"dataset store not found: {path}; build it first with {how} or set data.store=<path>"
        )
    try:
        if path.suffix == ".nc":
            return xr.open_dataset(path, chunks={})
        return xr.open_zarr(path, consolidated=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the store is unusable
        raise UserError(
            f"cannot read dataset store {path} ({type(exc).__name__}: {exc}); rebuild it"
        ) from exc


def require_variables(ds: xr.Dataset, names: list[str], where: str) -> None:
    """Every name must be a variable of ``ds``."""
    missing = [n for n in names if n not in ds.variables]
    require(
        not missing,
        f"{where}: variable(s) {missing} not in the store; available: {sorted(map(str, ds.data_vars))}",
    )


def valid_mask(ds: xr.Dataset, target: str) -> np.ndarray:
    """Boolean (lat, lon) mask of valid predictand pixels (the store's ``valid_mask`` if present)."""
    if MASK in ds:
        return ds[MASK].values.astype(bool)
    return np.isfinite(ds[target].isel(time=0).values)


def nearest_index(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """For each fine coordinate, the index of the nearest coarse coordinate (1-D, any order)."""
    return np.abs(fine[:, None] - coarse[None, :]).argmin(axis=1)


def time_split(times: pd.DatetimeIndex, bounds: list) -> np.ndarray:
    """Indices of ``times`` inside ``bounds``: [start, end] as fractions in [0, 1] or as dates.

    Fractions follow the reference ([0, 0.9] is the first 90 %); dates are inclusive: an end given
    as a day ("1997-11-30") includes that whole day, an end with a time of day
    ("2019-06-10T00:54") includes exactly that instant.
    """
    require(len(bounds) == 2, f"a split must be [start, end], got {bounds}")
    start, end = bounds
    n = len(times)
    if all(isinstance(b, int | float) for b in bounds):
        require(
            0.0 <= start < end <= 1.0,
            f"fractional split {bounds} must satisfy 0 <= start < end <= 1; e.g. [0.9, 1.0] for the last 10 %",
        )
        return np.arange(int(round(start * n)), int(round(end * n)))
    try:
        lo, hi = pd.Timestamp(str(start)), pd.Timestamp(str(end))
    except ValueError as exc:
        raise UserError(
            f"split {bounds}: not dates or fractions ({exc}); use [start, end] as 'YYYY-MM-DD' or 0..1"
        ) from exc
    require(lo <= hi, f"split {bounds}: start is after end")
    if _is_day(str(end)):
        hi = hi + pd.Timedelta(days=1) - pd.Timedelta(nanoseconds=1)
    return np.flatnonzero((times >= lo) & (times <= hi))


def _is_day(text: str) -> bool:
    """True for a date without a time of day (``1997-11-30``), false for ``1997-11-30T06:00``."""
    return not any(c in text for c in "T :")


def time_offset_table(times: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """``(len(offsets), T)`` store indices of the predictors ``k`` time steps from each time ``t``.

    The time step is the store's most common spacing. Where ``t + k`` steps is not in the store (its
    first and last days, gaps such as the months between winters), index ``t`` itself stands in.
    """
    times = np.asarray(times).astype("datetime64[ns]")
    n = len(times)
    index = np.arange(n)
    table = np.tile(index, (len(offsets), 1))
    if n < 2:
        return table
    gaps, counts = np.unique(np.diff(times), return_counts=True)
    step = gaps[np.argmax(counts)]
    for row, k in enumerate(offsets):
        j = index + int(k)
        inside = (j >= 0) & (j < n)
        exact = inside.copy()
        exact[inside] = times[j[inside]] - times[inside] == int(k) * step
        table[row, exact] = j[exact]
    return table


def time_offsets(offsets: Any) -> list[int]:
    """``data.coarse_offsets`` as distinct integers (time steps relative to the target's)."""
    values = list(offsets) if isinstance(offsets, Sequence) and not isinstance(offsets, str) else []
    require(
        values
        and all(isinstance(k, int | np.integer) and not isinstance(k, bool) for k in values)
        and len(set(values)) == len(values),
        f"data.coarse_offsets={offsets!r} must be a non-empty list of distinct integers (time steps "
        "of the predictors relative to the target's), e.g. [0] or [0, 1]",
    )
    return [int(k) for k in values]
