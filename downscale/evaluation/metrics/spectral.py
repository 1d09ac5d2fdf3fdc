"""Power spectra and the radially averaged log-spectral distance (RALSD).

PSD (as the reference system): for an m x n field f, P = |fftshift(fft2(f))|^2 / (m n), radially
averaged over integer radii r = floor(hypot(i - m//2, j - n//2)) for r = 1 .. min(m, n)//2 (complete
circles; the r = 0 term is the squared domain mean, not a scale, and is left out). Invalid pixels
(mask False or NaN) are filled with 0 before the FFT.

RALSD (Harris et al. 2022; the reference system): over days whose domain-mean observation exceeds
``threshold`` (data units), with the members' PSDs averaged per day,
    RALSD = sqrt( mean_{days, r} (10 log10(P_obs / P_samples))^2 )   [dB].
PSDs are floored at ``floor`` (1e-12) so that a constant sample field gives a large, finite
distance.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse
import xarray as xr

from downscale.evaluation.metrics._common import (
    MEMBER,
    TIME,
    apply_mask,
    check_samples,
    spatial_dims,
)
from downscale.evaluation.metrics.pixel import crps_map

WAVENUMBER = "wavenumber"
_FLOOR = 1e-12


@functools.lru_cache(maxsize=8)
def _radial_operator(m: int, n: int) -> scipy.sparse.csr_matrix:
    """Sparse (m n, K) matrix averaging a flattened shifted spectrum over radii 1..K."""
    i, j = np.indices((m, n))
    r = np.floor(np.hypot(i - m // 2, j - n // 2)).astype(np.int64).ravel()
    k_max = min(m, n) // 2
    keep = (r >= 1) & (r <= k_max)
    rows = np.flatnonzero(keep)
    cols = r[keep] - 1
    counts = np.bincount(cols, minlength=k_max).astype(np.float64)
    vals = 1.0 / counts[cols]
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(m * n, k_max))


def _radial_psd_kernel(x: np.ndarray) -> np.ndarray:
    m, n = x.shape[-2:]
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))) ** 2 / (m * n)
    flat = spec.reshape(-1, m * n)
    out = np.asarray(flat @ _radial_operator(m, n))
    return out.reshape(*x.shape[:-2], out.shape[-1])


def radial_psd(field: xr.DataArray, mask: xr.DataArray | None = None) -> xr.DataArray:
    """Radially averaged PSD per 2-D field; spatial dims become ``wavenumber`` (1..min(m,n)//2)."""
    ydim, xdim = spatial_dims(field)
    m, n = field.sizes[ydim], field.sizes[xdim]
    k = np.arange(1, min(m, n) // 2 + 1)
    field = apply_mask(field, mask).fillna(0.0)
    if field.chunks is not None:
        field = field.chunk({ydim: -1, xdim: -1})
    out = xr.apply_ufunc(
        _radial_psd_kernel,
        field,
        input_core_dims=[[ydim, xdim]],
        output_core_dims=[[WAVENUMBER]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {WAVENUMBER: len(k)}},
    )
    return out.assign_coords({WAVENUMBER: k}).rename("psd")


def wet_days(obs: xr.DataArray, mask: xr.DataArray | None, threshold: float) -> xr.DataArray:
    """Boolean per day: domain mean of the valid observed pixels above ``threshold``."""
    return apply_mask(obs, mask).mean(list(spatial_dims(obs))) > threshold


def _spectra_db(samples, obs, mask, threshold, floor):
    check_samples(samples, obs)
    wet = wet_days(obs, mask, threshold)
    p_obs = radial_psd(obs, mask)
    p_samples = radial_psd(samples, mask)
    db = functools.partial(_to_db, floor=floor)
    return db(p_obs), p_samples, wet, db


def _to_db(p: xr.DataArray, floor: float) -> xr.DataArray:
    return 10.0 * np.log10(np.maximum(p, floor))


def ralsd(
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    *,
    threshold: float = 0.02,
    floor: float = _FLOOR,
) -> xr.DataArray:
    """RALSD in dB over wet days (module docstring); 0 for identical fields."""
    obs_db, p_samples, wet, db = _spectra_db(samples, obs, mask, threshold, floor)
    diff2 = ((obs_db - db(p_samples.mean(MEMBER))) ** 2).where(wet)
    out = np.sqrt(diff2.mean())
    return out.rename("ralsd").assign_attrs(units="dB", threshold=threshold)


def spectral_crps(
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    *,
    threshold: float = 0.02,
    floor: float = _FLOOR,
) -> xr.DataArray:
    """CRPS of the members' dB spectra against the observed one, mean over wet days and radii."""
    obs_db, p_samples, wet, db = _spectra_db(samples, obs, mask, threshold, floor)
    crps = crps_map(db(p_samples), obs_db).where(wet)
    return crps.mean().rename("spectral_crps").assign_attrs(units="dB", threshold=threshold)


def mean_spectra(
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    *,
    threshold: float = 0.02,
) -> xr.DataArray:
    """Mean PSD over wet days of the observations and of the samples (dim ``source``)."""
    check_samples(samples, obs)
    wet = wet_days(obs, mask, threshold)
    p_obs = radial_psd(obs, mask).where(wet).mean(TIME)
    p_samples = radial_psd(samples, mask).where(wet).mean([MEMBER, TIME])
    out = xr.concat([p_obs, p_samples], dim="source").assign_coords(source=["obs", "samples"])
    return out.rename("spectra").assign_attrs(flatten=0, threshold=threshold)
