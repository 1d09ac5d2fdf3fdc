"""Histograms, quantile bias and histogram CRPS."""

from __future__ import annotations

import numpy as np
import pytest

from downscale.evaluation.metrics import distribution
from tests.unit._evaldata import fields, mask_like


def test_log_density_matches_numpy_histogram():
    samples, obs = fields()
    got = distribution.log_density(samples, obs, bins=10, value_range=(0.5, 50))
    edges = np.logspace(np.log10(0.5), np.log10(50), 11)
    vals = obs.values.ravel()
    hist, _ = np.histogram(vals, bins=edges)
    dens = hist / hist.sum() / np.diff(edges)
    expect = np.log10(np.where(dens > 0, dens, np.nan))  # empty bins are NaN
    np.testing.assert_allclose(got.sel(source="obs").values, expect)


def test_identical_distributions_score_zero():
    samples, obs = fields()
    same = obs.expand_dims(member=1)
    assert float(distribution.log_density_difference(same, obs)) == pytest.approx(0.0)
    np.testing.assert_allclose(distribution.quantile_bias(same, obs).values, 0.0, atol=1e-12)
    assert float(distribution.histogram_crps(same, obs).compute()) == pytest.approx(0.0)
    assert float(distribution.histogram_crps(samples, obs).compute()) > 0


def test_quantile_bias_matches_numpy_and_scales():
    samples, obs = fields()
    mask = mask_like(obs)
    v = mask.values
    got = distribution.quantile_bias(2 * samples, obs, mask, quantiles=(0.5, 0.99))
    expect = np.quantile(2 * samples.values[:, :, v], [0.5, 0.99]) - np.quantile(
        obs.values[:, v], [0.5, 0.99]
    )
    np.testing.assert_allclose(got.values, expect)
    rel = distribution.quantile_bias(2 * obs.expand_dims(member=1), obs, relative=True)
    np.testing.assert_allclose(rel.values, 100.0)


def test_large_quantiles_use_bounded_histogram(monkeypatch):
    """The histogram path lands within one bin of the inverted-CDF quantile (which the linear
    interpolation of np.quantile approaches as the sample grows)."""
    samples, obs = fields(days=8)
    monkeypatch.setattr(distribution, "_EXACT_LIMIT", 10)
    qs = (0.5, 0.9, 0.99, 0.999)
    got = distribution._quantiles(obs.chunk(time=2), np.array(qs))
    expect = np.quantile(obs.values, qs, method="inverted_cdf")
    width = float(obs.max() - obs.min()) / 2**17
    np.testing.assert_allclose(got, expect, atol=2 * width)
