"""Pixel scores on pooled views of the fields (mean-pool, max-pool, "ensemble" pooling).

A pooled view coarsens both samples and observations by ``scale`` x ``scale`` pixel blocks
(incomplete edge blocks are dropped) before scoring. Invalid pixels are NaN and ignored inside a
block; a block with no valid pixel is invalid. Kinds:

- ``mean``: block average; ``max``: block maximum;
- ``ensemble``: block average, then the ensemble mean (so CRPS reduces to the MAE of the mean).

Scale 1 is the unpooled field, so the pooled scores at scale 1 equal the pixel scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from downscale.evaluation.metrics._common import (
    MEMBER,
    apply_mask,
    as_tuple,
    check_samples,
    spatial_dims,
    spatial_size,
)
from downscale.evaluation.metrics.pixel import SCORES
from downscale.utils.errors import UserError

# block reduction per pooling kind (NaN-skipping)
_BLOCK_REDUCTION = {"mean": "mean", "max": "max", "ensemble": "mean"}
_KINDS = tuple(_BLOCK_REDUCTION)


def pool(da: xr.DataArray, scale: int, kind: str = "mean") -> xr.DataArray:
    """Coarsen the spatial dims of ``da`` by ``scale`` with a NaN-skipping mean or max."""
    if scale == 1:
        return da
    ydim, xdim = spatial_dims(da)
    coarse = da.coarsen({ydim: scale, xdim: scale}, boundary="trim")
    return getattr(coarse, _BLOCK_REDUCTION[kind])()  # NaN-skipping for float data


def pooled_scores(
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    *,
    kind: str = "mean",
    scales: Sequence[int] = (1, 4, 16, 64),
    scores: Sequence[str] = ("mse", "mae", "bias", "abs_bias", "rel_bias", "crps"),
) -> xr.DataArray:
    """Scores (dim ``score``) per pooling scale (dim ``scale``); NaN where a scale is too big."""
    check_samples(samples, obs)
    if kind not in _KINDS:
        raise UserError(f"unknown pooling kind '{kind}'; use one of {_KINDS}")
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise UserError(f"unknown pooled scores {unknown}; choose from {sorted(SCORES)}")
    samples, obs = apply_mask(samples, mask), apply_mask(obs, mask)
    size = min(spatial_size(obs))
    per_scale = []
    for scale in (int(s) for s in as_tuple(scales)):
        if scale > size:
            per_scale.append(xr.DataArray(np.full(len(scores), np.nan), dims="score"))
            continue
        ps, po = pool(samples, scale, kind), pool(obs, scale, kind)
        if kind == "ensemble":
            ps = ps.mean(MEMBER).expand_dims(MEMBER)
        values = [SCORES[name](ps, po).drop_vars(MEMBER, errors="ignore") for name in scores]
        per_scale.append(xr.concat(values, dim="score", coords="minimal", compat="override"))
    out = xr.concat(per_scale, dim="scale", coords="minimal", compat="override")
    return out.assign_coords(score=list(scores), scale=[int(s) for s in as_tuple(scales)]).rename(
        f"pooled_{kind}"
    )
