"""Calibration: rank histograms, flatness, calibration error, spread-skill, reliability, Brier.

Rank of the observation among the M members (Anderson 1996; Hamill 2001): the number of members
below it plus a uniform draw over ties (0..#equal), so dry pixels with many tied zeros do not pile
up in one rank. Ranks are counted per observed-intensity bin [lo, hi) (defaults from the reference
system, data units).
"""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import xarray as xr

from downscale.evaluation.metrics._common import (
    MEMBER,
    apply_mask,
    as_tuple,
    bin_index,
    bin_labels,
    bincount,
    check_samples,
)

DEFAULT_BINS = ((0, 1), (1, 10), (10, 25), (25, 50), (50, 200))
DEFAULT_THRESHOLDS = (0.5, 1.0, 2.0, 5.0, 10.0)


def _rank_kernel(x: np.ndarray, y: np.ndarray, u: np.ndarray) -> np.ndarray:
    below = (x < y[..., None]).sum(-1)
    equal = (x == y[..., None]).sum(-1)
    rank = below + np.floor(u * (equal + 1)).astype(np.int64)
    invalid = np.isnan(y) | np.isnan(x).any(-1)
    return np.where(invalid, -1, rank)


def _uniform_like(obs: xr.DataArray, seed: int) -> xr.DataArray:
    if obs.chunks is not None:
        u = dsa.random.default_rng(seed).random(obs.shape, chunks=obs.data.chunks)
    else:
        u = np.random.default_rng(seed).random(obs.shape)
    return obs.copy(data=u)


def ranks(samples: xr.DataArray, obs: xr.DataArray, mask=None, *, seed: int = 0) -> xr.DataArray:
    """Rank of each observation among the members (0..M), ties randomised; -1 where invalid."""
    check_samples(samples, obs)
    obs = apply_mask(obs, mask)
    if samples.chunks is not None:
        samples = samples.chunk({MEMBER: -1})
    return xr.apply_ufunc(
        _rank_kernel,
        samples,
        obs,
        _uniform_like(obs, seed),
        input_core_dims=[[MEMBER], [], []],
        dask="parallelized",
        output_dtypes=[np.int64],
    )


def rank_histogram(
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    *,
    bins=DEFAULT_BINS,
    seed: int = 0,
) -> xr.DataArray:
    """Rank counts per intensity bin, dims ``(bin, rank)``, plus bin ``all`` (every valid pixel)."""
    n_ranks = samples.sizes[MEMBER] + 1
    r = ranks(samples, obs, mask, seed=seed)
    b = bin_index(apply_mask(obs, mask), bins)
    n_bins = len(as_tuple(bins))
    code = xr.where((r >= 0) & (b >= 0), b * n_ranks + r, -1)
    per_bin = bincount(code, n_bins * n_ranks).reshape(n_bins, n_ranks)
    total = bincount(r, n_ranks)[None, :]
    lib = dsa if isinstance(total, dsa.Array) else np
    counts = lib.concatenate([per_bin, total], axis=0)
    return xr.DataArray(
        counts,
        dims=("bin", "rank"),
        coords={"bin": [*bin_labels(bins), "all"], "rank": np.arange(n_ranks)},
        name="rank_histogram",
        attrs={"flatten": 0},
    )


def _flatness(counts: xr.DataArray) -> xr.DataArray:
    """Candille & Talagrand (2005) delta: sum (s_k - N/K)^2 / (N (K-1)/K); ~1 when flat."""
    k = counts.sizes["rank"]
    n = counts.sum("rank")
    delta = ((counts - n / k) ** 2).sum("rank") / (n * (k - 1) / k)
    return delta.where(n > 0).drop_attrs()


def rank_flatness(samples, obs, mask=None, *, bins=None, seed: int = 0) -> xr.DataArray:
    """Flatness delta of the rank histogram over all valid pixels (per bin when ``bins`` given)."""
    counts = rank_histogram(samples, obs, mask, bins=bins or DEFAULT_BINS, seed=seed)
    out = _flatness(counts)
    return (out if bins else out.sel(bin="all", drop=True)).rename("rank_flatness")


def calibration_error(
    samples, obs, mask=None, *, squared: bool = False, seed: int = 0
) -> xr.DataArray:
    """Mean |F_k - k/K| (``squared``: mean square) of the rank histogram's empirical CDF F_k against
    the diagonal, k = 1..K ranks (the reference system's calibration error)."""
    counts = rank_histogram(samples, obs, mask, bins=DEFAULT_BINS, seed=seed).sel(bin="all")
    k = counts.sizes["rank"]
    cdf = counts.cumsum("rank") / counts.sum("rank")
    diff = cdf - np.arange(1, k + 1) / k
    err = (diff**2).mean("rank") if squared else abs(diff).mean("rank")
    return err.drop_vars("bin").drop_attrs().rename("ece_ms" if squared else "ece")


def spread_skill(samples, obs, mask=None) -> xr.DataArray:
    """Spread-skill ratio sqrt((M+1)/M) * sqrt(mean ensemble variance) / RMSE(ensemble mean)
    (Fortin et al. 2014); 1 for an exchangeable ensemble."""
    check_samples(samples, obs)
    m = samples.sizes[MEMBER]
    if m < 2:  # one member has no spread (a deterministic baseline)
        return xr.DataArray(np.nan, name="spread_skill")
    # skipna=False: masked cells (NaN in every member) give NaN without a 0/0 warning from dask
    var = apply_mask(samples.var(MEMBER, ddof=1, skipna=False), mask)
    err2 = apply_mask((samples.mean(MEMBER) - obs) ** 2, mask).where(var.notnull())
    return (np.sqrt((m + 1) / m) * np.sqrt(var.mean() / err2.mean())).rename("spread_skill")


def _probabilities(samples, obs, mask, thresholds):
    thr = xr.DataArray(list(as_tuple(thresholds)), dims="threshold", name="threshold")
    valid = apply_mask(obs, mask).notnull() & samples.notnull().all(MEMBER)
    p = (samples > thr).mean(MEMBER).where(valid)
    o = (obs > thr).astype(float).where(valid)
    return p, o, thr


def brier_score(samples, obs, mask=None, *, thresholds=DEFAULT_THRESHOLDS) -> xr.DataArray:
    """Brier score per threshold: mean (p - o)^2, p = fraction of members above the threshold."""
    check_samples(samples, obs)
    p, o, thr = _probabilities(samples, obs, mask, thresholds)
    dims = [d for d in p.dims if d != "threshold"]
    return ((p - o) ** 2).mean(dims).assign_coords(threshold=thr.values).rename("brier")


def reliability(
    samples, obs, mask=None, *, thresholds=DEFAULT_THRESHOLDS, n_bins: int = 10
) -> xr.DataArray:
    """Reliability diagram per threshold: dims ``(threshold, prob_bin, quantity)`` with quantity
    ``forecast`` (mean forecast probability), ``observed`` (observed frequency) and ``count``."""
    check_samples(samples, obs)
    p, o, thr = _probabilities(samples, obs, mask, thresholds)
    n_thr = thr.size
    pbin = xr.where(p.notnull(), np.minimum((p.fillna(0) * n_bins).astype(int), n_bins - 1), -1)
    code = xr.where(pbin >= 0, thr.copy(data=np.arange(n_thr)) * n_bins + pbin, -1)
    size = n_thr * n_bins
    count = bincount(code, size)
    psum = bincount(code, size, weights=p)
    osum = bincount(code, size, weights=o)
    lib = dsa if isinstance(count, dsa.Array) else np
    # empty bins: x / NaN is NaN without the 0/0 warning (np.errstate does not reach dask's workers)
    per_bin = lib.where(count > 0, count, np.nan)
    stacked = lib.stack([psum / per_bin, osum / per_bin, count * 1.0], axis=-1)
    return xr.DataArray(
        stacked.reshape(n_thr, n_bins, 3),
        dims=("threshold", "prob_bin", "quantity"),
        coords={
            "threshold": thr.values,
            "prob_bin": (np.arange(n_bins) + 0.5) / n_bins,
            "quantity": ["forecast", "observed", "count"],
        },
        name="reliability",
        attrs={"flatten": 0},
    )
