"""Conservation constraints at sampling: cell means equal the coarse field, shapes within cells kept."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from downscale.sampling.constraints import Conservation, cell_map, conserve, conserve_samples
from downscale.sampling.driver import write_samples
from downscale.utils.errors import UserError
from tests.conftest import synthetic_datamodule
from tests.unit.test_driver import GaussianModel, request, sampler

LAT = np.linspace(30.0, 60.0, 8)  # cos(lat) weights differ by 2x across the grid


def blocks(a: np.ndarray, weights: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Weighted means over valid pixels of 4 x 4 blocks of (..., 8, 8): the expectation, by reshape."""
    w = np.broadcast_to(weights[:, None] * valid, a.shape[-2:])
    num = (np.nan_to_num(a) * w).reshape(*a.shape[:-2], 2, 4, 2, 4).sum((-3, -1))
    den = w.reshape(2, 4, 2, 4).sum((-3, -1))
    return num / den


@pytest.fixture
def grid():
    mask = np.ones((8, 8), bool)
    mask[0, :3] = False  # a partly covered cell
    index = np.arange(8) // 4
    return mask, cell_map(index, index, (2, 2), mask, LAT)


def test_multiplicative_sets_cell_means_and_keeps_ratios(grid):
    mask, cells = grid
    rng = np.random.default_rng(0)
    samples = rng.gamma(0.5, 2.0, (3, 2, 8, 8))
    samples[1, 0, :4, 4:] = 0.0  # a dry sample in a wet cell
    coarse = rng.uniform(0.0, 5.0, (3, 4))
    coarse[2, 3] = 0.0  # a dry cell
    out = conserve(samples, coarse, cells, "multiplicative")
    w = np.cos(np.deg2rad(LAT))
    np.testing.assert_allclose(
        blocks(out, w, mask), np.broadcast_to(coarse.reshape(3, 1, 2, 2), (3, 2, 2, 2)), rtol=1e-12
    )
    assert (out >= 0).all()
    # within a cell the pattern is kept: one factor per (time, member, cell)
    ratio = out[0, 0, 4:, :4] / samples[0, 0, 4:, :4]
    np.testing.assert_allclose(ratio, ratio.flat[0])
    np.testing.assert_allclose(out[1, 0, :4, 4:], coarse[1, 1])  # dry sample: uniform
    assert (out[2, :, 4:, 4:] == 0).all()
    np.testing.assert_array_equal(out[..., ~mask], samples[..., ~mask])  # invalid pixels untouched


def test_additive_sets_cell_means_and_keeps_differences(grid):
    mask, cells = grid
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(2, 3, 8, 8))
    coarse = rng.normal(size=(2, 4))
    coarse[0, 0] = np.nan  # no coarse value: the cell is left as sampled
    out = conserve(samples, coarse, cells, "additive")
    w = np.cos(np.deg2rad(LAT))
    got = blocks(out, w, mask).reshape(2, 3, 4)
    np.testing.assert_allclose(got[1], np.broadcast_to(coarse[1], (3, 4)), rtol=1e-12)
    np.testing.assert_allclose(got[0, :, 1:], np.broadcast_to(coarse[0, 1:], (3, 3)), rtol=1e-12)
    np.testing.assert_array_equal(out[0, :, :4, :4], samples[0, :, :4, :4])
    diff = out[1, 2, 4:, 4:] - samples[1, 2, 4:, 4:]
    np.testing.assert_allclose(diff, diff.flat[0])


def test_multiplicative_refuses_negative_coarse_values(grid):
    _, cells = grid
    with pytest.raises(UserError, match="conserve=additive"):
        conserve(np.ones((1, 1, 8, 8)), -np.ones((1, 4)), cells, "multiplicative")
    with pytest.raises(UserError, match="unknown"):
        conserve(np.ones((1, 1, 8, 8)), np.ones((1, 4)), cells, "exact")


def test_sampled_store_has_the_coarse_predictand_as_its_cell_means(tmp_path):
    """The synthetic store's coarse_precip is the block mean of precip (sea counted as 0); after
    sampling with the constraint every member's land-pixel block mean equals it."""
    dm = synthetic_datamodule(tmp_path / "cache", 20, {"train": [0.0, 0.5], "test": [0.5, 1.0]})
    req = request(tmp_path, dm)
    write_samples(
        GaussianModel(),
        dm,
        sampler(),
        req,
        progress=False,
        constraint=Conservation(dm.ds, dm.targets, "multiplicative"),
    )
    got = xr.open_zarr(req.out, consolidated=False).precip.values  # (M, T, 16, 16)
    coarse = dm.ds["coarse_precip"].values[req.times]  # (T, 4, 4)
    mask = dm.fields.mask
    w = np.broadcast_to(np.cos(np.deg2rad(dm.fields.lat))[:, None] * mask, mask.shape)
    num = (np.nan_to_num(got) * w).reshape(*got.shape[:2], 4, 4, 4, 4).sum((-3, -1))
    den = w.reshape(4, 4, 4, 4).sum((-3, -1))
    land = den > 0
    np.testing.assert_allclose(
        (num / np.where(land, den, 1))[..., land],
        np.broadcast_to(coarse[None], num.shape)[..., land],
        rtol=2e-5,
        atol=1e-5,
    )
    assert np.isnan(got[..., ~mask]).all()


def test_a_store_without_the_coarse_predictand_is_refused():
    ds = xr.Dataset({"precip": (("time", "lat", "lon"), np.zeros((1, 2, 2)))})
    with pytest.raises(UserError, match="no coarse_precip"):
        Conservation(ds, ["precip"], "multiplicative")


def test_conserving_a_drawn_store_equals_drawing_with_the_constraint(tmp_path):
    """conserve_samples on the free draws gives the values a conserve= draw writes (same seed)."""
    dm = synthetic_datamodule(tmp_path / "cache", 20, {"train": [0.0, 0.5], "test": [0.5, 1.0]})
    free, drawn = request(tmp_path, dm, "free.zarr"), request(tmp_path, dm, "drawn.zarr")
    write_samples(GaussianModel(), dm, sampler(), free, progress=False)
    constraint = Conservation(dm.ds, dm.targets, "multiplicative")
    write_samples(GaussianModel(), dm, sampler(), drawn, progress=False, constraint=constraint)
    after = conserve_samples(
        xr.open_zarr(free.out, consolidated=False).load(), dm.ds, "multiplicative"
    )
    expected = xr.open_zarr(drawn.out, consolidated=False).precip.values
    np.testing.assert_array_equal(after.precip.values, expected)
    assert after.attrs["conserve"] == "multiplicative"
    with pytest.raises(UserError, match="already"):
        conserve_samples(after, dm.ds, "multiplicative")
