"""Climatology: time-mean bias maps (absolute and relative) and their domain means."""

from __future__ import annotations

import xarray as xr

from downscale.evaluation.metrics._common import MEMBER, TIME, apply_mask, check_samples


def bias_map(samples, obs, mask=None, *, relative: bool = False) -> xr.DataArray:
    """Time-mean bias of the ensemble mean per pixel, in data units or (``relative``) percent of the
    observed time mean (NaN where that mean is 0)."""
    check_samples(samples, obs)
    model = apply_mask(samples.mean([MEMBER, TIME]), mask)
    ref = apply_mask(obs.mean(TIME), mask)
    out = model - ref
    if relative:
        out = 100.0 * out / ref.where(ref != 0)
    return out.rename("bias_map_rel" if relative else "bias_map").assign_attrs(flatten=0)


def mean_bias(samples, obs, mask=None, *, relative: bool = False) -> xr.DataArray:
    """Domain mean of :func:`bias_map` (relative: mean of the percent map over pixels with rain)."""
    out = bias_map(samples, obs, mask, relative=relative).mean().drop_attrs()
    return out.rename("mean_bias")
