"""Climate-change signal: the change between two periods in the downscaled samples against the
change in the reference (observations or a reference simulation).

For each statistic (mean, quantiles) the relative change is 100 (S_future - S_past) / S_past, in
percent; the error is downscaled change minus reference change (percentage points).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from downscale.evaluation.metrics._common import TIME, apply_mask, as_tuple, nan_scalar

DEFAULT_QUANTILES = (0.5, 0.9, 0.99)


def _stats(da: xr.DataArray, mask, quantiles: tuple[float, ...]) -> np.ndarray:
    values = np.asarray(apply_mask(da, mask).values, dtype=np.float64)
    return np.concatenate([[np.nanmean(values)], np.nanquantile(values, quantiles)])


def climate_change_signal(
    samples_past: xr.DataArray,
    obs_past: xr.DataArray,
    samples_future: xr.DataArray,
    obs_future: xr.DataArray,
    mask: xr.DataArray | None = None,
    *,
    quantiles=DEFAULT_QUANTILES,
) -> xr.DataArray:
    """Relative change (%) of the mean and quantiles: dims ``(quantity, stat)`` with quantity
    ``downscaled``, ``reference`` and ``error`` (downscaled - reference)."""
    qs = tuple(float(q) for q in as_tuple(quantiles))
    changes = []
    for past, future in ((samples_past, samples_future), (obs_past, obs_future)):
        a, b = _stats(past, mask, qs), _stats(future, mask, qs)
        with np.errstate(invalid="ignore", divide="ignore"):
            changes.append(100.0 * (b - a) / np.where(a != 0, a, np.nan))
    changes.append(changes[0] - changes[1])
    return xr.DataArray(
        np.stack(changes),
        dims=("quantity", "stat"),
        coords={
            "quantity": ["downscaled", "reference", "error"],
            "stat": ["mean", *[f"q{_pct(q)}" for q in qs]],
        },
        name="climate_change",
    )


def _pct(q: float) -> str:
    p = 100 * q
    return str(int(p)) if p.is_integer() else str(p)


def climate_change_periods(
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    *,
    periods=None,
    quantiles=DEFAULT_QUANTILES,
) -> xr.DataArray:
    """:func:`climate_change_signal` between two time slices of one evaluation, ``periods`` =
    ``[[start, end], [start, end]]`` (dates); skipped (NaN, attrs ``skipped``) when not given or
    when a period holds no data."""
    if not periods:
        return nan_scalar("no periods given (climate_change.periods)", "climate_change")
    (a0, a1), (b0, b1) = (tuple(p) for p in as_tuple(periods))
    past = {TIME: slice(str(a0), str(a1))}
    future = {TIME: slice(str(b0), str(b1))}
    sp, op, sf, of = samples.sel(past), obs.sel(past), samples.sel(future), obs.sel(future)
    if min(op.sizes[TIME], of.sizes[TIME]) == 0:
        return nan_scalar(f"a period of {periods} holds no days", "climate_change")
    return climate_change_signal(sp, op, sf, of, mask, quantiles=quantiles)
