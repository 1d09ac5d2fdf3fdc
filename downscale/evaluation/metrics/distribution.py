"""Distribution of values: log-density histograms, their difference, quantile bias, histogram CRPS.

Histograms use logarithmic bins over ``value_range`` (data units; default 0.5..200 mm/day as the
reference system) and pool all valid pixels of all days (and members for the samples).
"""

from __future__ import annotations

import dask
import dask.array as dsa
import numpy as np
import xarray as xr

from downscale.evaluation.metrics._common import (
    TIME,
    apply_mask,
    as_tuple,
    bincount,
    check_samples,
    spatial_dims,
)
from downscale.evaluation.metrics.pixel import crps_map

DEFAULT_RANGE = (0.5, 200.0)
DEFAULT_QUANTILES = (0.5, 0.9, 0.99, 0.999)
_EXACT_LIMIT = 50_000_000  # values per source below which quantiles are exact (np.nanquantile)
_HIST_BINS = 2**17  # linear bins of the approximate quantile path


def log_edges(bins: int, value_range=DEFAULT_RANGE) -> np.ndarray:
    """``bins + 1`` logarithmically spaced edges over ``value_range``."""
    lo, hi = as_tuple(value_range)
    return np.logspace(np.log10(lo), np.log10(hi), int(bins) + 1)


def _codes(da: xr.DataArray, edges: np.ndarray) -> xr.DataArray:
    idx = (
        xr.apply_ufunc(
            np.digitize, da, kwargs={"bins": edges}, dask="parallelized", output_dtypes=[np.int64]
        )
        - 1
    )
    return xr.where(da.notnull() & (idx >= 0) & (idx < len(edges) - 1), idx, -1)


def _density(da: xr.DataArray, edges: np.ndarray):
    counts = bincount(_codes(da, edges), len(edges) - 1)
    lib = dsa if isinstance(counts, dsa.Array) else np
    total = lib.sum(counts)
    return counts / (total * np.diff(edges))


def log_density(
    samples, obs, mask=None, *, bins: int = 50, value_range=DEFAULT_RANGE
) -> xr.DataArray:
    """log10 density per bin (dims ``source``: obs/samples, ``bin``); empty bins are NaN."""
    check_samples(samples, obs)
    edges = log_edges(bins, value_range)
    dens = [_density(apply_mask(d, mask), edges) for d in (obs, samples)]
    lib = dsa if isinstance(dens[0], dsa.Array) else np
    stacked = lib.stack(dens)
    logd = lib.log10(lib.where(stacked > 0, stacked, np.nan))
    return xr.DataArray(
        logd,
        dims=("source", "bin"),
        coords={"source": ["obs", "samples"], "bin": np.sqrt(edges[1:] * edges[:-1])},
        name="log_density",
        attrs={"flatten": 0},
    )


def log_density_difference(
    samples, obs, mask=None, *, bins: int = 25, value_range=DEFAULT_RANGE
) -> xr.DataArray:
    """Distribution bias: mean over bins of |log10 density(samples) - log10 density(obs)|, bins
    where both are non-empty (the reference system's 25-bin distribution bias)."""
    d = log_density(samples, obs, mask, bins=bins, value_range=value_range)
    diff = abs(d.sel(source="samples") - d.sel(source="obs")).mean().drop_attrs()
    return diff.rename("log_density_diff")


def _quantiles(values: xr.DataArray, qs: np.ndarray) -> np.ndarray:
    """Quantiles of all finite values; exact below 5e7 values, else from a 2^17-bin histogram
    (bounded memory; error below one bin width (max-min)/2^17, linear within the bin)."""
    if values.size <= _EXACT_LIMIT or values.chunks is None:
        return np.nanquantile(np.asarray(values.values, dtype=np.float64), qs)
    lo, hi = dask.compute(values.min(), values.max())
    lo, hi = float(lo), float(hi)
    edges = np.linspace(lo, hi * (1 + 1e-12) + 1e-300, _HIST_BINS + 1)
    counts = np.asarray(dask.compute(bincount(_codes(values, edges), _HIST_BINS))[0], float)
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
    return np.interp(qs, cdf, edges)


def quantile_bias(
    samples, obs, mask=None, *, quantiles=DEFAULT_QUANTILES, relative: bool = False
) -> xr.DataArray:
    """Quantile of all valid sample values minus that of the observations (dim ``quantile``);
    ``relative``: in percent of the observed quantile. Computed eagerly (two passes when large)."""
    check_samples(samples, obs)
    qs = np.asarray(as_tuple(quantiles), dtype=float)
    q_obs = _quantiles(apply_mask(obs, mask), qs)
    q_smp = _quantiles(apply_mask(samples, mask), qs)
    diff = q_smp - q_obs
    if relative:
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = 100.0 * diff / np.where(q_obs != 0, q_obs, np.nan)
    name = "quantile_rel_bias" if relative else "quantile_bias"
    return xr.DataArray(diff, dims="quantile", coords={"quantile": qs * 100}, name=name)


def _daily_hist_kernel(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Density histogram over the last two axes for every leading index."""
    flat = x.reshape(-1, x.shape[-2] * x.shape[-1])
    out = np.empty((flat.shape[0], len(edges) - 1))
    for i, row in enumerate(flat):
        h, _ = np.histogram(row[np.isfinite(row)], bins=edges)
        n = np.isfinite(row).sum()
        out[i] = h / max(n, 1) / np.diff(edges)
    return out.reshape(*x.shape[:-2], len(edges) - 1)


def daily_histograms(da: xr.DataArray, mask=None, *, bins=25, value_range=DEFAULT_RANGE):
    """Density histogram of each 2-D field (valid-pixel fraction per unit value), dim ``bin``."""
    edges = log_edges(bins, value_range)
    ydim, xdim = spatial_dims(da)
    da = apply_mask(da, mask)
    out = xr.apply_ufunc(
        _daily_hist_kernel,
        da.chunk({ydim: -1, xdim: -1}) if da.chunks is not None else da,
        input_core_dims=[[ydim, xdim]],
        output_core_dims=[["bin"]],
        kwargs={"edges": edges},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"bin": len(edges) - 1}},
    )
    return out.assign_coords(bin=np.sqrt(edges[1:] * edges[:-1]))


def histogram_crps(
    samples, obs, mask=None, *, bins: int = 25, value_range=DEFAULT_RANGE
) -> xr.DataArray:
    """CRPS of the members' daily density histograms against the observed one, mean over days and
    bins (each bin's density is a scalar forecast by the ensemble)."""
    check_samples(samples, obs)
    hs = daily_histograms(samples, mask, bins=bins, value_range=value_range)
    ho = daily_histograms(obs, mask, bins=bins, value_range=value_range)
    return crps_map(hs, ho).mean([TIME, "bin"]).rename("histogram_crps")
