"""Pixel-wise scores: MSE/RMSE, MAE, bias, absolute and relative bias, and the ensemble CRPS.

All scores average over members, time and valid pixels (``mask``). With ``ensemble_mean=True`` the
ensemble mean is scored instead of each member (the "ensemble-mean scores").

CRPS: we implement the sorted-member form instead of calling ``xskillscore.crps_ensemble`` because
it gives the same number about 70x faster on large arrays and works on dask arrays chunked in time
(xskillscore fails when ``member`` is chunked; see bench/evaluate.py). For an ensemble
x_1 <= ... <= x_M and observation y (Gneiting & Raftery 2007, eq. 21; Ferro 2014 for the fair form):

    CRPS      = 1/M sum_i |x_i - y| - 1/(2 M^2)     sum_{i,j} |x_i - x_j|
    CRPS_fair = 1/M sum_i |x_i - y| - 1/(2 M(M-1)) sum_{i,j} |x_i - x_j|

with sum_{i,j} |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i), O(M log M) per pixel. The standard form
equals ``xskillscore.crps_ensemble`` (properscoring's estimator); a one-member CRPS equals the MAE.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xarray as xr

from downscale.evaluation.metrics._common import MEMBER, apply_mask, check_samples, spatial_dims


def _crps_kernel(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS over the last axis of ``x`` (members) against ``y``; NaN where any input is NaN."""
    m = x.shape[-1]
    x = np.sort(x, axis=-1)
    skill = np.abs(x - y[..., None]).mean(axis=-1, dtype=np.float64)
    weights = (2.0 * np.arange(1, m + 1) - m - 1).astype(np.float64)
    pair_sum = 2.0 * (x @ weights)
    if fair:
        if m < 2:
            return np.full(skill.shape, np.nan)
        return skill - pair_sum / (2.0 * m * (m - 1))
    return skill - pair_sum / (2.0 * m * m)


def _single_member_chunk(samples: xr.DataArray) -> xr.DataArray:
    if samples.chunks is not None:
        return samples.chunk({MEMBER: -1})
    return samples


def crps_map(samples: xr.DataArray, obs: xr.DataArray, *, fair: bool = False) -> xr.DataArray:
    """CRPS per time and pixel (dims of ``obs``), lazily over dask chunks."""
    check_samples(samples, obs)
    return xr.apply_ufunc(
        _crps_kernel,
        _single_member_chunk(samples),
        obs,
        input_core_dims=[[MEMBER], []],
        kwargs={"fair": fair},
        dask="parallelized",
        output_dtypes=[np.float64],
    ).rename("crps_fair" if fair else "crps")


def crps_ensemble(
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    *,
    fair: bool = False,
    ensemble_mean: bool = False,
) -> xr.DataArray:
    """Mean ensemble CRPS over time and valid pixels (``fair=True``: Ferro 2014)."""
    if ensemble_mean:
        samples = samples.mean(MEMBER).expand_dims(MEMBER)
    return apply_mask(crps_map(samples, obs, fair=fair), mask).mean().rename("crps")


def crps_fair(
    samples: xr.DataArray, obs: xr.DataArray, mask: xr.DataArray | None = None
) -> xr.DataArray:
    """Mean fair (unbiased for finite ensembles) CRPS, Ferro (2014) eq. 5."""
    return crps_ensemble(samples, obs, mask, fair=True).rename("crps_fair")


def _error(samples: xr.DataArray, obs: xr.DataArray, ensemble_mean: bool) -> xr.DataArray:
    check_samples(samples, obs)
    if ensemble_mean:
        samples = samples.mean(MEMBER)
    return samples - obs


def mse(samples, obs, mask=None, *, ensemble_mean: bool = False) -> xr.DataArray:
    """Mean squared error over members, time and valid pixels."""
    return (apply_mask(_error(samples, obs, ensemble_mean), mask) ** 2).mean().rename("mse")


def rmse(samples, obs, mask=None, *, ensemble_mean: bool = False) -> xr.DataArray:
    """Root of :func:`mse`."""
    return np.sqrt(mse(samples, obs, mask, ensemble_mean=ensemble_mean)).rename("rmse")


def mae(samples, obs, mask=None, *, ensemble_mean: bool = False) -> xr.DataArray:
    """Mean absolute error over members, time and valid pixels."""
    return abs(apply_mask(_error(samples, obs, ensemble_mean), mask)).mean().rename("mae")


def bias(samples, obs, mask=None, *, ensemble_mean: bool = False) -> xr.DataArray:
    """Mean error (samples - obs) over members, time and valid pixels."""
    return apply_mask(_error(samples, obs, ensemble_mean), mask).mean().rename("bias")


def abs_bias(samples, obs, mask=None, *, ensemble_mean: bool = False) -> xr.DataArray:
    """Spatial mean of the absolute time-mean bias map |mean_t,m(x) - mean_t(y)|."""
    err = apply_mask(_error(samples, obs, ensemble_mean), mask)
    keep = spatial_dims(err)
    per_pixel = err.mean([d for d in err.dims if d not in keep])
    return abs(per_pixel).mean().rename("abs_bias")


def rel_bias(samples, obs, mask=None, *, ensemble_mean: bool = False) -> xr.DataArray:
    """Relative bias in percent: 100 * mean(x - y) / mean(y) over valid pixels."""
    err = apply_mask(_error(samples, obs, ensemble_mean), mask)
    ref = apply_mask(obs, mask)
    return (100.0 * err.mean() / ref.mean()).rename("rel_bias")


SCORES: dict[str, Callable[..., xr.DataArray]] = {
    "mse": mse,
    "rmse": rmse,
    "mae": mae,
    "bias": bias,
    "abs_bias": abs_bias,
    "rel_bias": rel_bias,
    "crps": crps_ensemble,
    "crps_fair": crps_fair,
}
"""Pixel scores by name, used by :mod:`pooling` to score several views with one list."""
