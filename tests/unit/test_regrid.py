"""Conservative regridding: conservation, exactness, NaN handling, Gaussian grids, cdo agreement,
laziness."""

from __future__ import annotations

import dask.array
import numpy as np
import pytest
import xarray as xr

from downscale.data import grids
from downscale.data.regrid import area_mean, cdo_available, regrid_conservative
from downscale.utils.errors import UserError

needs_cdo = pytest.mark.skipif(not cdo_available(), reason="Debian `cdo` is not installed")


def _field(grid: grids.Grid, nt: int = 2, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.6, 3.0, size=(nt, *grid.shape))
    return xr.DataArray(
        x,
        dims=("time", "lat", "lon"),
        coords={"lat": grid.lat, "lon": grid.lon, "time": np.arange(nt)},
    )


@pytest.fixture
def fine() -> grids.Grid:
    return grids.regular(resolution=(0.1, 0.1), box={"lon": [-6.0, 6.0], "lat": [34.0, 46.0]})


def test_area_mean_conserved(fine: grids.Grid) -> None:
    # the coarse cells tile the fine ones exactly, so the area mean must be preserved
    da = _field(fine)
    coarse = grids.regular(fine, resolution=(1.5, 1.0), offset=(0.75, 0.5))
    assert coarse.extent() == pytest.approx(fine.extent())
    out = regrid_conservative(da, coarse)
    assert out.shape == (2, 12, 8)
    rel = abs(area_mean(out, coarse) - area_mean(da, fine)) / area_mean(da, fine)
    assert float(rel.max()) < 1e-6


def test_area_weighting_matters(fine: grids.Grid) -> None:
    # an x10 block mean ignores cos(lat); the conservative value differs from it, as it must at 40N
    da = _field(fine, nt=1)
    coarse = grids.coarsen(fine, 10)
    out = regrid_conservative(da, coarse).values[0]
    block = da.values[0].reshape(12, 10, 12, 10).mean(axis=(1, 3))
    w = np.cos(np.radians(fine.lat))  # exact weight of a 0.1 deg band is ~ cos(lat) to 1e-7
    wb = (da.values[0] * w[:, None]).reshape(12, 10, 12, 10).sum(axis=(1, 3))
    wb /= w.reshape(12, 10).sum(axis=1)[:, None] * 10
    np.testing.assert_allclose(out, wb, rtol=1e-6)
    assert np.abs(out - block).max() / block.mean() > 1e-5


def test_constant_is_exact(fine: grids.Grid) -> None:
    da = xr.full_like(_field(fine), 273.15)
    g = grids.gaussian(fine, nlat=94)
    for target in (grids.regular(fine, resolution=(1.25, 0.9424083769633508), offset=(0, -90)), g):
        out = regrid_conservative(da, target, min_valid_fraction=0.0)
        np.testing.assert_allclose(out.values[np.isfinite(out.values)], 273.15, rtol=1e-12)


def test_nan_aware_min_valid_fraction(fine: grids.Grid) -> None:
    da = xr.full_like(_field(fine, nt=1), 2.0)
    coarse = grids.coarsen(fine, 10)
    # blank 30% of cell (0, 0) and 70% of cell (0, 1) (whole rows of 0.1 deg: area fractions by sin)
    da[0, :3, :10] = np.nan
    da[0, :7, 10:20] = np.nan
    da[0, :3, :10] = np.nan
    da[0, 3:, :10] = 1.0
    out = regrid_conservative(da, coarse, min_valid_fraction=0.5).values[0]
    assert np.isfinite(out[0, 0]) and np.isnan(out[0, 1])
    assert out[0, 0] == pytest.approx(1.0)  # only the valid (=1) part counts
    out0 = regrid_conservative(da, coarse, min_valid_fraction=0.0).values[0]
    assert out0[0, 1] == pytest.approx(2.0)
    assert np.isfinite(out0).all()
    with pytest.raises(UserError):
        regrid_conservative(da, coarse, min_valid_fraction=1.5)


def test_partial_cover_is_masked() -> None:
    src = grids.regular(resolution=(0.5, 0.5), box={"lon": [0, 10], "lat": [0, 10]})
    da = xr.DataArray(
        np.ones((1, *src.shape)), dims=("t", "lat", "lon"), coords={"lat": src.lat, "lon": src.lon}
    )
    tgt = grids.regular(resolution=(4, 4), offset=(0, 0), box={"lon": [0, 10], "lat": [0, 10]})
    out = regrid_conservative(da, tgt, min_valid_fraction=0.5).values[0]
    # the target cell centred at 0 covers [-2, 2]: a quarter of it in lon (and lat) has data
    assert np.isnan(out[0, 0]) and np.isfinite(out[1, 1])


def test_gaussian_grid_bounds_and_detection() -> None:
    centres, edges = grids.gaussian_latitudes(94)  # T62
    w = np.polynomial.legendre.leggauss(94)[1]
    np.testing.assert_allclose(np.diff(np.sin(np.radians(edges))), w, atol=1e-12)
    assert np.all((edges[:-1] < centres) & (centres < edges[1:]))
    # the NCEP T62 latitudes of the shared Iberia files are recognised as Gaussian
    lat = np.array([35.23749924, 37.14220047, 39.04700089, 40.9516983, 42.8563988, 44.76110077])
    g = grids.grid_from_coords(lat, np.array([-9.375, -7.5, -5.625]))
    assert g.kind == "gaussian"
    i0 = int(np.argmin(np.abs(centres - lat[0])))
    np.testing.assert_allclose(g.lat_bounds, edges[i0 : i0 + 7], atol=1e-9)
    assert g.lat_bounds[0] == pytest.approx(34.2870, abs=1e-3)  # not the midpoint rule's 34.285
    # a regular 0.5 deg grid stays regular with midpoint bounds
    r = grids.grid_from_coords(np.arange(35.25, 44.3, 0.5), np.arange(-9.75, 4.3, 0.5))
    assert r.kind == "regular" and r.lat_bounds[0] == pytest.approx(35.0)


def test_gaussian_source_conserves_mean() -> None:
    g = grids.gaussian(nlat=94)
    g = g.isel(slice(50, 62), slice(0, 20))
    da = _field(g, nt=1, seed=3)
    tgt = grids.regular(g, resolution=(2.5, 2.5), offset=(0, 0))
    inner = grids.Grid(tgt.lat, tgt.lon, tgt.lat_bounds, tgt.lon_bounds)
    # near the equator Gaussian latitudes are equally spaced to 1e-5 deg, so pass the grid
    # explicitly
    out = regrid_conservative(da, inner, source_grid=g, min_valid_fraction=0.0)
    # total integral over the covered part equals the source integral (all source cells are covered)
    src_int = float((da.values[0] * g.cell_area()).sum())
    from downscale.data.regrid import ConservativeWeights

    cov = ConservativeWeights(g, inner).covered_area
    out_int = float(np.nansum(out.values[0] * cov))
    assert out_int == pytest.approx(src_int, rel=1e-10)


@needs_cdo
@pytest.mark.parametrize("target_kind", ["cesm", "gaussian"])
def test_agrees_with_cdo(fine: grids.Grid, target_kind: str) -> None:
    da = _field(fine, nt=2, seed=1)
    da[:, :25, :40] = np.nan  # a gap, to exercise the valid-fraction logic
    if target_kind == "cesm":
        tgt = grids.regular(fine, resolution=(1.25, 0.9424083769633508), offset=(0, -90))
    else:
        tgt = grids.gaussian(fine, nlat=94)
    ours = regrid_conservative(da, tgt, min_valid_fraction=0.5)
    ref = regrid_conservative(da, tgt, min_valid_fraction=0.5, backend="cdo")
    np.testing.assert_array_equal(ours.isnull().values, ref.isnull().values)
    rel = np.nanmax(np.abs(ours.values - ref.values) / np.abs(ref.values))
    assert rel < 1e-5
    # and cdo conserves the area mean of a gap-free field like we do
    full = _field(fine, nt=1, seed=2)
    tile = grids.regular(fine, resolution=(1.5, 1.0), offset=(0.75, 0.5))
    ref = regrid_conservative(full, tile, backend="cdo")
    rel = abs(area_mean(ref, tile) - area_mean(full, fine)) / area_mean(full, fine)
    assert float(rel.max()) < 1e-6


def test_xarray_regrid_backend_close(fine: grids.Grid) -> None:
    da = _field(fine, nt=1)
    tgt = grids.regular(fine, resolution=(1.0, 1.0))
    ours = regrid_conservative(da, tgt)
    lib = regrid_conservative(da, tgt, backend="xarray_regrid")
    np.testing.assert_allclose(lib.values, ours.values, rtol=1e-4)


def test_lazy_over_dask_chunks(fine: grids.Grid) -> None:
    da = _field(fine, nt=6).chunk({"time": 2, "lat": 40, "lon": 40})
    tgt = grids.coarsen(fine, 8)
    out = regrid_conservative(da, tgt)
    assert isinstance(out.data, dask.array.Array)
    assert out.chunks[0] == (2, 2, 2)
    whole = regrid_conservative(da.compute(), tgt).values
    for t0 in range(0, 6, 2):  # chunk by chunk equals the eager result
        np.testing.assert_allclose(out.isel(time=slice(t0, t0 + 2)).values, whole[t0 : t0 + 2])


def test_unknown_backend(fine: grids.Grid) -> None:
    with pytest.raises(UserError, match="backend"):
        regrid_conservative(_field(fine, 1), grids.coarsen(fine, 4), backend="nope")


def test_descending_latitude_input(fine: grids.Grid) -> None:
    da = _field(fine, nt=1)
    tgt = grids.coarsen(fine, 10)
    flipped = da.isel(lat=slice(None, None, -1))
    np.testing.assert_array_equal(
        regrid_conservative(flipped, tgt).values, regrid_conservative(da, tgt).values
    )


def test_snap_box_accepts_0_360_longitudes(fine: grids.Grid) -> None:
    a = grids.snap_box(fine, lon=[-5.0, 5.0], lat=[35.0, 45.0])
    b = grids.snap_box(fine, lon=[355.0, 365.0], lat=[35.0, 45.0])  # the same box in 0..360
    assert a == b and a[1] == slice(10, 110)
    with pytest.raises(UserError, match="date line"):
        grids.snap_box(fine, lon=[170.0, 190.0], lat=[35.0, 45.0])
    with pytest.raises(UserError, match="holds no cell"):
        grids.snap_box(fine, lon=[20.0, 30.0], lat=[35.0, 45.0])
