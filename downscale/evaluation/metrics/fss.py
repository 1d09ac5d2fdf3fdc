"""Fractions skill score (Roberts & Lean 2008) at thresholds and neighbourhood scales.

For threshold t and an n x n window, the event fractions P = (window sum of 1[x > t] over valid
pixels) / (window count of valid pixels) are computed for the observation and every member (valid:
the observation is finite and the mask is True; a NaN member pixel counts as no event);
    FSS = 1 - sum (P_f - P_o)^2 / sum (P_f^2 + P_o^2),
sums over valid pixels, days and members (aggregated FSS). NaN when no events occur at all.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import xarray as xr

from downscale.evaluation.metrics._common import (
    MEMBER,
    apply_mask,
    as_tuple,
    check_samples,
    check_threshold_units,
    spatial_dims,
)

DEFAULT_THRESHOLDS = (0.5, 1.0, 2.0, 5.0)
DEFAULT_SCALES = (2, 4, 8, 16, 32, 64)


def _fss_kernel(x, y, thresholds, scales):
    """Sums of (P_f - P_o)^2 and P_f^2 + P_o^2 over the two last axes: (..., M, T, S, 2).

    ``x`` is (..., M, Y, X), ``y`` is (..., Y, X). Valid pixels are those where ``y`` is finite;
    the observed fractions and window counts are computed once per field, not once per member.
    """
    y = y[..., None, :, :]
    valid = np.isfinite(y)
    out = np.zeros(x.shape[:-2] + (len(thresholds), len(scales), 2))
    for j, n in enumerate(scales):
        size = (1,) * (x.ndim - 2) + (n, n)
        count = scipy.ndimage.uniform_filter(valid.astype(np.float64), size=size, mode="constant")
        inv = np.where(count > 1e-12, 1.0 / np.maximum(count, 1e-12), 0.0)
        for i, t in enumerate(thresholds):
            events_o = ((y > t) & valid).astype(np.float64)
            events_f = ((x > t) & valid).astype(np.float64)  # NaN members: no event
            po = scipy.ndimage.uniform_filter(events_o, size=size, mode="constant") * inv
            pf = scipy.ndimage.uniform_filter(events_f, size=size, mode="constant") * inv
            out[..., i, j, 0] = ((pf - po) ** 2 * valid).sum((-2, -1))
            out[..., i, j, 1] = ((pf**2 + po**2) * valid).sum((-2, -1))
    return out


def fss(
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    *,
    thresholds=DEFAULT_THRESHOLDS,
    scales=DEFAULT_SCALES,
    threshold_units: str | None = None,
) -> xr.DataArray:
    """Aggregated FSS with dims ``(threshold, scale)``; 1 for identical fields."""
    check_samples(samples, obs)
    check_threshold_units(obs, threshold_units)
    thresholds = tuple(float(t) for t in as_tuple(thresholds))
    scales = tuple(int(s) for s in as_tuple(scales))
    ydim, xdim = spatial_dims(obs)
    samples, obs = apply_mask(samples, mask), apply_mask(obs, mask)
    if samples.chunks is not None:
        samples = samples.chunk({MEMBER: -1, ydim: -1, xdim: -1})
        obs = obs.chunk({ydim: -1, xdim: -1})
    parts = xr.apply_ufunc(
        _fss_kernel,
        samples.transpose(..., MEMBER, ydim, xdim),
        obs,
        input_core_dims=[[MEMBER, ydim, xdim], [ydim, xdim]],
        output_core_dims=[[MEMBER, "threshold", "scale", "part"]],
        kwargs={"thresholds": thresholds, "scales": scales},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={
            "output_sizes": {"threshold": len(thresholds), "scale": len(scales), "part": 2}
        },
    )
    sums = parts.sum([d for d in parts.dims if d not in ("threshold", "scale", "part")])
    den = sums.isel(part=1)
    out = 1.0 - sums.isel(part=0) / den.where(den > 0)
    return out.assign_coords(threshold=list(thresholds), scale=list(scales)).rename("fss")
