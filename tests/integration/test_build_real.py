"""Build the real-data recipes from the shared data (iberia, iberia_gcm, a radar_mrms crop) and
check shapes, units, masks and conservation of the coarse means."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hydra import compose, initialize_config_dir

from downscale.build import run
from downscale.data.grids import Grid, grid_from_coords, grid_of
from downscale.data.sources import standardise

REPO = Path(__file__).resolve().parents[2]
CONF = str(REPO / "conf")


def _data_root() -> Path:
    root = Path(os.environ.get("DOWNSCALE_DATA_ROOT", REPO.parent / "shared" / "data"))
    if not (root / "iberia").is_dir() or not (root / "radar").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data not found at {root} (CI=true): set DOWNSCALE_DATA_ROOT")
        pytest.skip(f"shared data not found at {root}; set DOWNSCALE_DATA_ROOT to run")
    return root


pytestmark = [pytest.mark.slow, pytest.mark.data]


def _build(recipe: str, out: Path, *extra: str) -> xr.Dataset:
    with initialize_config_dir(CONF, version_base=None):
        cfg = compose(
            "build",
            overrides=[f"build={recipe}", f"paths.data_root={_data_root()}", f"out={out}", *extra],
        )
    return xr.open_zarr(run(cfg), consolidated=True)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, xr.Dataset]:
    tmp = tmp_path_factory.mktemp("real")
    return {r: _build(r, tmp / f"{r}.zarr") for r in ("iberia", "iberia_gcm")}


def _overlap(edges: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)


def _area_in(grid: Grid, other: Grid) -> np.ndarray:
    """Area of each cell of ``grid`` inside the extent of ``other`` (unit sphere)."""
    s = np.sin(np.radians(grid.lat_bounds))
    lo, hi = np.sin(np.radians(other.lat_bounds[[0, -1]]))
    dlat = _overlap(s, lo, hi)
    dlon = np.radians(_overlap(grid.lon_bounds, *other.lon_bounds[[0, -1]]))
    return np.outer(dlat, dlon)


def _conserved(store: xr.Dataset, var: str, path: Path, name: str) -> float:
    """Relative difference of the area integrals of a source field and of its coarse version over
    the intersection of the two domains (computed from the cell bounds alone)."""
    src = standardise(xr.open_dataset(path), str(path), "D").sel(time=store["time"][:50])
    sgrid = grid_of(src)
    coarse = grid_from_coords(store["lat_coarse"].values, store["lon_coarse"].values)
    src_int = (src[name].values * _area_in(sgrid, coarse)).sum(axis=(1, 2))
    out_int = (store[var].values[:50] * _area_in(coarse, sgrid)).sum(axis=(1, 2))
    return float(np.max(np.abs(out_int - src_int) / np.abs(src_int)))


def test_iberia_store(stores: dict[str, xr.Dataset]) -> None:
    ds = stores["iberia"]
    root = _data_root() / "iberia"
    assert ds["precip"].shape == (1805, 19, 29) and ds["precip"].attrs["units"] == "mm/day"
    coarse = {f"coarse_{v}" for v in ("psl", "ta850", "hus850", "tas", "pr")}
    assert set(ds.data_vars) == {"precip", "valid_mask", *coarse}
    for v in coarse:
        assert ds[v].shape == (1805, 5, 7) and np.isfinite(ds[v].values).all()
    assert ds["coarse_tas"].attrs["units"] == "K" and ds["coarse_pr"].attrs["units"] == "mm/day"
    assert 270 < float(ds["coarse_tas"].mean()) < 290
    # the mask is E-OBS's land: 1 - NaN fraction (0.4062)
    eobs = xr.open_dataset(root / "eobs_pr.nc")["pr"]
    np.testing.assert_array_equal(ds["valid_mask"].values, eobs.notnull().all("time").values)
    assert float(ds["valid_mask"].mean()) == pytest.approx(1 - 0.4062, abs=0.01)
    np.testing.assert_array_equal(ds["precip"].values, eobs.values)
    # psl is on the coarse grid already: copied unchanged
    np.testing.assert_array_equal(
        ds["coarse_psl"].values, xr.open_dataset(root / "ncep_psl.nc")["psl"]
    )
    # the T62 Gaussian fields are remapped conservatively (float32 storage: ~1e-7)
    assert _conserved(ds, "coarse_tas", root / "ncep_tas.nc", "tas") < 1e-6
    assert _conserved(ds, "coarse_pr", root / "ncep_pr.nc", "pr") < 1e-6
    assert json.loads(ds.attrs["fine_grid"])["nlat"] == 19
    assert ds.attrs["predictand_paired"] == "true"


def test_iberia_gcm_shares_grids(stores: dict[str, xr.Dataset]) -> None:
    a, b = stores["iberia"], stores["iberia_gcm"]
    for c in ("lat", "lon", "lat_coarse", "lon_coarse"):
        np.testing.assert_array_equal(a[c].values, b[c].values)
    assert set(a.data_vars) == set(b.data_vars)
    assert b.attrs["predictand_paired"] == "false"
    assert "cmip5_cnrm" in json.loads(b.attrs["sources"])["coarse_pr"]
    root = _data_root() / "iberia"
    assert _conserved(b, "coarse_psl", root / "cmip5_cnrm_hist_psl.nc", "psl") < 1e-6
    # a GCM is not the reanalysis: the days differ
    assert not np.allclose(a["coarse_psl"].values, b["coarse_psl"].values)


def test_radar_mrms_crop(tmp_path: Path) -> None:
    # a rainy 128 x 256 crop (0.01 deg) of the first 4 frames
    ds = _build(
        "radar_mrms",
        tmp_path / "mrms.zarr",
        "build.domain.box={lon:[-85.676,-83.1245],lat:[44.6445,45.9155]}",
        "build.period.end=2019-06-10T00:06",
    )
    assert ds["precip"].shape == (4, 128, 256) and ds["precip"].attrs["units"] == "mm/h"
    assert ds["coarse_precip"].shape == (4, 16, 32)
    y = ds["precip"].values
    assert np.nanmin(y) >= 0 and np.nanmax(y) <= 300 and (y > 0.1).mean() > 0.5
    mask = ds["valid_mask"].values.astype(bool)
    assert mask.mean() > 0.9 and np.isfinite(y[:, mask]).all()
    # x8 conservative coarse-graining: the area-weighted block mean
    w = np.cos(np.radians(ds["lat"].values))[:, None] * np.ones((1, 256))
    blocks = (y * w).reshape(4, 16, 8, 32, 8).sum(axis=(2, 4)) / w.reshape(16, 8, 32, 8).sum(
        axis=(1, 3)
    )
    full = np.isfinite(blocks)
    np.testing.assert_allclose(ds["coarse_precip"].values[full], blocks[full], rtol=1e-5, atol=1e-5)
    assert ds.attrs["fillna"] == json.dumps({"coarse_precip": 0.0})
