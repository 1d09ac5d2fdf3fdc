"""Pooled pixel scores."""

from __future__ import annotations

import numpy as np
import pytest

from downscale.evaluation.metrics import pixel, pooling
from tests.unit._evaldata import fields, mask_like


@pytest.mark.parametrize("kind", ["mean", "max"])
def test_scale_one_equals_unpooled(kind):
    samples, obs = fields()
    mask = mask_like(obs)
    pooled = pooling.pooled_scores(samples, obs, mask, kind=kind, scales=(1, 4))
    for name in ("mse", "mae", "bias", "abs_bias", "rel_bias", "crps"):
        ref = float(pixel.SCORES[name](samples, obs, mask))
        assert float(pooled.sel(scale=1, score=name)) == pytest.approx(ref)


def test_pooled_values_match_numpy_blocks():
    samples, obs = fields(members=2, days=3, size=16)
    out = pooling.pooled_scores(samples, obs, kind="max", scales=(4,), scores=("mae",))
    s = samples.values.reshape(2, 3, 4, 4, 4, 4).max((3, 5))
    o = obs.values.reshape(3, 4, 4, 4, 4).max((2, 4))
    assert float(out.sel(scale=4, score="mae")) == pytest.approx(np.abs(s - o[None]).mean())
    mean = pooling.pooled_scores(samples, obs, kind="mean", scales=(4,), scores=("mse",))
    s = samples.values.reshape(2, 3, 4, 4, 4, 4).mean((3, 5))
    o = obs.values.reshape(3, 4, 4, 4, 4).mean((2, 4))
    assert float(mean.sel(scale=4, score="mse")) == pytest.approx(((s - o[None]) ** 2).mean())


def test_ensemble_pooling_crps_is_mae_of_mean_and_big_scales_are_nan():
    samples, obs = fields(size=16)
    out = pooling.pooled_scores(samples, obs, kind="ensemble", scales=(1, 64))
    assert float(out.sel(scale=1, score="crps")) == pytest.approx(
        float(pixel.mae(samples, obs, ensemble_mean=True))
    )
    assert np.isnan(out.sel(scale=64)).all()
