"""Events and extremes: event ratios per intensity bin, annual maxima of the domain mean, return
levels from a GEV fit (when there are enough years)."""

from __future__ import annotations

import numpy as np
import scipy.stats
import xarray as xr

from downscale.evaluation.metrics._common import (
    MEMBER,
    TIME,
    apply_mask,
    as_tuple,
    bin_index,
    bin_labels,
    bincount,
    check_samples,
    nan_scalar,
    spatial_dims,
)
from downscale.evaluation.metrics.calibration import DEFAULT_BINS
from downscale.utils.errors import UserError

DEFAULT_PERIODS = (2, 5, 10, 20)


def event_ratio(samples, obs, mask=None, *, bins=DEFAULT_BINS) -> xr.DataArray:
    """Frequency of sample values in each intensity bin over the observed frequency (1 = right)."""
    check_samples(samples, obs)
    n = len(as_tuple(bins))
    freqs = []
    for da in (apply_mask(samples, mask), apply_mask(obs, mask)):
        counts = bincount(bin_index(da, bins), n)
        freqs.append(counts / da.notnull().sum().data)
    ratio = freqs[0] / freqs[1]
    return xr.DataArray(ratio, dims="bin", coords={"bin": bin_labels(bins)}, name="event_ratio")


def _require_time(obs: xr.DataArray) -> None:
    if TIME not in obs.coords or not np.issubdtype(obs[TIME].dtype, np.datetime64):
        raise UserError("annual maxima need a datetime 'time' coordinate; add one to the inputs")


def annual_maxima(samples, obs, mask=None) -> xr.DataArray:
    """Annual maximum of the daily domain mean: dims ``(source, member, year)``; the observed
    maxima (``source='obs'``) are repeated along ``member``."""
    check_samples(samples, obs)
    _require_time(obs)
    space = list(spatial_dims(obs))
    o = apply_mask(obs, mask).mean(space).groupby(f"{TIME}.year").max()
    s = apply_mask(samples, mask).mean(space).groupby(f"{TIME}.year").max()
    o = o.expand_dims({MEMBER: samples.sizes[MEMBER]}).transpose(MEMBER, "year")
    s = s.transpose(MEMBER, "year").drop_vars(MEMBER, errors="ignore")
    out = xr.concat([o.drop_vars(MEMBER, errors="ignore"), s], dim="source")
    return (
        out.assign_coords(source=["obs", "samples"]).rename("annual_maxima").assign_attrs(flatten=0)
    )


def annual_max_bias(samples, obs, mask=None) -> xr.DataArray:
    """Mean over members and years of (member's annual max - observed annual max), in percent of
    the observed annual max."""
    am = annual_maxima(samples, obs, mask)
    o, s = am.sel(source="obs"), am.sel(source="samples")
    return (100.0 * ((s - o) / o).mean()).drop_attrs().rename("annual_max_bias")


def _gev_levels(maxima: np.ndarray, periods: tuple[float, ...]) -> np.ndarray:
    x = maxima[np.isfinite(maxima)]
    c, loc, scale = scipy.stats.genextreme.fit(x)
    return scipy.stats.genextreme.isf(1.0 / np.asarray(periods), c, loc, scale)


def return_levels(
    samples, obs, mask=None, *, periods=DEFAULT_PERIODS, min_years: int = 10
) -> xr.DataArray:
    """Return levels of the domain-mean annual maximum from a GEV fit (scipy), dims
    ``(source, return_period)``; the samples' fit pools every member's maxima. Skipped (NaN with
    attrs ``skipped``) when fewer than ``min_years`` years are available."""
    am = annual_maxima(samples, obs, mask).compute()
    n_years = am.sizes["year"]
    if n_years < min_years:
        return nan_scalar(f"{n_years} years < min_years={min_years} for a GEV fit", "return_levels")
    periods = tuple(float(p) for p in as_tuple(periods))
    levels = [
        _gev_levels(am.sel(source="obs").isel({MEMBER: 0}).values, periods),
        _gev_levels(am.sel(source="samples").values.ravel(), periods),
    ]
    return xr.DataArray(
        np.stack(levels),
        dims=("source", "return_period"),
        coords={"source": ["obs", "samples"], "return_period": list(periods)},
        name="return_levels",
    )
