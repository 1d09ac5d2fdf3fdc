"""Report figures: the 5-day time-lapse and the bias on annual-maximum days render, and pick the
days they claim to show."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402

from downscale.evaluation import plots  # noqa: E402
from downscale.evaluation.plots import FigureContext  # noqa: E402
from tests.unit._evaldata import fields, mask_like  # noqa: E402


def _context(days: int = 12, start: str = "2000-12-25"):
    samples, obs = fields(members=3, days=days, size=16, start=start)
    return FigureContext(samples, obs, mask_like(obs, 3), units="mm/day")


def _rendered(path) -> np.ndarray:
    """The PNG as an array; fails unless it is an image with more than one colour."""
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 10
    return image


def test_time_lapse_renders_truth_and_two_members_over_five_days(tmp_path):
    ctx = _context()
    plots.time_lapse(ctx, tmp_path / "lapse.png")
    image = _rendered(tmp_path / "lapse.png")
    # 5 columns x 3 rows at 2.3 x 2.2 inches per panel (+1 inch for the colour bar), 90 dpi
    assert image.shape[:2] == (round(3 * 2.2 * 90), round((5 * 2.3 + 1) * 90))


def test_time_lapse_shows_the_wettest_window_and_copes_with_short_inputs(tmp_path):
    ctx = _context()
    ctx.obs[6:11] += 50.0  # days 6..10 are the wettest five
    assert plots._wettest_window(ctx, 5) == 6
    short = _context(days=3)
    plots.time_lapse(short, tmp_path / "short.png", n_days=5, n_members=5)
    image = _rendered(tmp_path / "short.png")
    assert image.shape[:2] == (round(4 * 2.2 * 90), round((3 * 2.3 + 1) * 90))


def test_annual_max_days_are_the_wettest_day_of_each_year():
    ctx = _context(days=12, start="2000-12-25")  # 7 days of 2000, 5 of 2001
    ctx.obs[2] += 30.0
    ctx.obs[9] += 40.0
    np.testing.assert_array_equal(plots.annual_max_days(ctx.obs, ctx.mask), [2, 9])
    undated = ctx.obs.drop_vars("time")
    np.testing.assert_array_equal(plots.annual_max_days(undated), [9])


def test_annual_max_bias_is_the_bias_on_those_days_only(tmp_path):
    ctx = _context()
    ctx.obs[2] += 30.0
    ctx.obs[9] += 40.0
    # samples equal the truth except on the annual-maximum days, where they are 2 too high,
    # and on every other day, where they are far too low (which must not show)
    samples = ctx.obs.expand_dims(member=3).copy() - 5.0
    samples[:, [2, 9]] = ctx.obs[[2, 9]] + 2.0
    ctx = FigureContext(samples, ctx.obs, ctx.mask, units="mm/day")
    absolute, relative = plots.annual_max_day_bias(ctx.samples, ctx.obs, ctx.mask)
    valid = ctx.mask.values
    np.testing.assert_allclose(absolute.values[valid], 2.0, rtol=1e-12)
    assert np.isnan(absolute.values[~valid]).all()
    expected = 200.0 / ctx.obs[[2, 9]].mean("time").values[valid]
    np.testing.assert_allclose(relative.values[valid], expected, rtol=1e-9)
    plots.annual_max_bias_maps(ctx, tmp_path / "am_bias.png")
    _rendered(tmp_path / "am_bias.png")


@pytest.mark.parametrize("name", ["time_lapse", "annual_max_bias_maps"])
def test_default_config_lists_the_new_figures(name):
    from pathlib import Path

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf/evaluation/default.yaml")
    assert cfg.figures[name]["_target_"] == f"downscale.evaluation.plots.{name}"
