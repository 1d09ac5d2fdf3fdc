"""The drizzle correction: the LOCI wet-day threshold and its post-processor."""

from __future__ import annotations

import numpy as np
import pytest

from downscale.sampling.dry import DryThreshold, fit_dry_threshold
from downscale.utils.errors import UserError


def test_threshold_is_exceeded_as_often_as_observations_are_wet():
    rng = np.random.default_rng(0)
    samples = rng.uniform(0.0, 10.0, size=(8, 50, 40))  # exceedance of t: 1 - t / 10
    obs = np.where(rng.uniform(size=(50, 40)) < 0.3, 5.0, 0.0)  # 30% wet
    threshold, frequency = fit_dry_threshold(samples, obs, wet_day=1.0)
    assert frequency == pytest.approx((obs >= 1).mean())
    assert threshold == pytest.approx(10.0 * (1.0 - frequency), abs=0.05)
    assert (samples >= threshold).mean() == pytest.approx(frequency, abs=1e-3)


def test_fit_ignores_invalid_cells():
    samples = np.array([[[0.5, 2.0, np.nan]], [[1.5, 3.0, np.nan]]])  # (2 members, 1, 3)
    obs = np.array([[0.0, 4.0, 9.0]])  # the NaN column of the samples is not a valid cell
    threshold, frequency = fit_dry_threshold(samples, obs, wet_day=1.0)
    assert frequency == 0.5  # one of the two valid cells is wet
    assert threshold == pytest.approx(np.quantile([0.5, 1.5, 2.0, 3.0], 0.5))


def test_fit_without_wet_observations_names_the_fix():
    with pytest.raises(UserError, match="lower dry.wet_day"):
        fit_dry_threshold(np.ones((2, 3, 3)), np.zeros((3, 3)), wet_day=1.0)


def test_post_processor_zeroes_small_values_of_its_variables_only():
    dry = DryThreshold(1.0, ["precip"])
    x = np.array([[0.2, 0.99, 1.0, 7.0, np.nan]], dtype=np.float32)
    out = dry("precip", x, np.arange(1))
    np.testing.assert_array_equal(out, np.array([[0.0, 0.0, 1.0, 7.0, np.nan]], np.float32))
    assert out.dtype == np.float32
    assert dry("tas", x, np.arange(1)) is x


def test_negative_threshold_is_refused():
    with pytest.raises(UserError, match="must be >= 0"):
        DryThreshold(-0.5, ["precip"])
