"""Input checks and alignment of samples, observations and mask before scoring."""

from __future__ import annotations

import numpy as np
import xarray as xr

from downscale.evaluation.metrics._common import MEMBER, TIME, check_samples, spatial_dims
from downscale.utils.errors import UserError


def check_grids(a: xr.DataArray, b: xr.DataArray, what: str = "samples and observations") -> None:
    """Raise :class:`UserError` unless ``a`` and ``b`` share spatial dims, sizes and coordinates."""
    dims_a, dims_b = spatial_dims(a), spatial_dims(b)
    if dims_a != dims_b:
        raise UserError(f"{what} use different spatial dims {dims_a} vs {dims_b}; rename them")
    for dim in dims_a:
        if a.sizes[dim] != b.sizes[dim]:
            raise UserError(
                f"{what} are on different grids ({dim}: {a.sizes[dim]} vs {b.sizes[dim]} points); "
                "regrid the samples to the observation grid"
            )
        if dim in a.coords and dim in b.coords:
            ca, cb = np.asarray(a[dim].values, float), np.asarray(b[dim].values, float)
            if not np.allclose(ca, cb, rtol=0, atol=1e-6 * max(1.0, float(np.abs(cb).max()))):
                raise UserError(
                    f"{what} are on different grids ({dim} coordinates differ, max "
                    f"{float(np.abs(ca - cb).max()):.3g}); regrid the samples to the obs grid"
                )


def align(
    samples: xr.DataArray, obs: xr.DataArray, mask: xr.DataArray | None = None
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray | None]:
    """Check dims and grids, select the samples' times from ``obs`` and order dims canonically.

    Raises :class:`UserError` when the member dim is missing, grids differ, or some sample time is
    not in the observations.
    """
    check_samples(samples, obs)
    check_grids(samples, obs)
    ydim, xdim = spatial_dims(obs)
    if mask is not None:
        mask = mask.astype(bool)
        check_grids(mask, obs, "mask and observations")
        mask = mask.assign_coords({d: obs[d] for d in (ydim, xdim) if d in obs.coords})
    if TIME in samples.coords and TIME in obs.coords:
        missing = np.setdiff1d(samples[TIME].values, obs[TIME].values)
        if missing.size:
            raise UserError(
                f"{missing.size} sample times are not in the observations (first: {missing[0]}); "
                "evaluate on times the observations cover"
            )
        obs = obs.sel({TIME: samples[TIME].values})
    elif samples.sizes[TIME] != obs.sizes[TIME]:
        raise UserError(
            f"samples have {samples.sizes[TIME]} times but observations {obs.sizes[TIME]} and "
            "no time coordinate to align on; give both a time coordinate"
        )
    obs = obs.assign_coords({d: samples[d] for d in (ydim, xdim) if d in samples.coords})
    return samples.transpose(MEMBER, TIME, ydim, xdim), obs.transpose(TIME, ydim, xdim), mask


def valid_days(samples: xr.DataArray, obs: xr.DataArray) -> xr.DataArray:
    """Boolean per time: both observations and samples have at least one finite pixel."""
    space = list(spatial_dims(obs))
    return obs.notnull().any(space) & samples.notnull().any([MEMBER, *space])
