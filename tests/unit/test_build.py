"""Store building: the mswep_era5 recipe from tiny generated files, the store schema, reuse, and bad
inputs (one-line UserError, no store left behind)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from downscale.build import run
from downscale.data.build import build_store
from downscale.data.fake_sources import write_mswep_era5_layout
from downscale.data.grids import grid_from_coords
from downscale.data.regrid import area_mean
from downscale.utils.errors import UserError

CONF = str(Path(__file__).resolve().parents[2] / "conf")
SMALL = [
    "build.domain.box={lon:[-110,-106],lat:[36,40]}",
    "build.period.start=2000-02-25",
    "build.period.end=2000-03-03",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mswep_era5_layout(root / "mswep_era5")
    return root


def _cfg(data_root: Path, out: Path, *extra: str) -> DictConfig:
    with initialize_config_dir(CONF, version_base=None):
        return compose(
            "build",
            overrides=[
                "build=mswep_era5",
                f"paths.data_root={data_root}",
                f"out={out}",
                *SMALL,
                *extra,
            ],
        )


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or p.suffix == ".zarr"]


@pytest.fixture(scope="module")
def store(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "mswep_era5.zarr"
    return run(_cfg(data_root, out, "export_netcdf=true"))


def test_store_schema(store: Path, data_root: Path) -> None:
    ds = xr.open_zarr(store, consolidated=True)
    assert (store / "zarr.json").exists()  # zarr v3
    assert json.loads((store / "zarr.json").read_text())["consolidated_metadata"] is not None
    coarse = [f"coarse_{v}" for v in ("TEMP", "RH", "PRES")]
    coarse += [f"coarse_{p}{lev}" for p in ("T", "Q") for lev in (200, 500, 700, 850)]
    coarse += [f"coarse_VO{lev}" for lev in (500, 700, 850)]
    assert set(ds.data_vars) == {"precip", "static_elevation", "valid_mask", *coarse}
    assert ds["precip"].dims == ("time", "lat", "lon") and ds["precip"].attrs["units"] == "mm/day"
    assert ds["precip"].shape == (7, 40, 40)  # 8 days minus 29 Feb; 0.1 deg cells in the box
    for v in coarse:
        assert ds[v].dims == ("time", "lat_coarse", "lon_coarse")
        assert np.isfinite(ds[v].values).all()
    assert ds["static_elevation"].dims == ("lat", "lon")
    assert ds["valid_mask"].dims == ("lat", "lon") and ds["valid_mask"].dtype == np.uint8
    assert int(ds["valid_mask"].sum()) == 40 * 40
    assert "2000-02-29" not in [str(t)[:10] for t in ds["time"].values]
    # CESM-like coarse spacing, one cell of margin around the fine domain
    assert np.allclose(np.diff(ds["lat_coarse"].values), 0.9424083769633508)
    assert np.allclose(np.diff(ds["lon_coarse"].values), 1.25)
    assert ds["lon_coarse"].min() < ds["lon"].min() - 1.25 / 2
    attrs = ds.attrs
    assert json.loads(attrs["predictands"]) == ["precip"]
    assert json.loads(attrs["build_config"])["name"] == "mswep_era5"
    assert "conservative" in attrs["regrid_method"]
    assert "mswep" in json.loads(attrs["sources"])["precip"]
    assert Path(str(store).removesuffix(".zarr") + ".nc").exists()


def test_store_values(store: Path) -> None:
    ds = xr.open_zarr(store, consolidated=True)
    day = np.array([0, 1, 2, 3, 5, 6, 7], dtype=float)  # day index in the files (29 Feb dropped)
    # MSWX temperature: constant in space, 10 + 0.5 day degC -> K
    shape = ds["coarse_TEMP"].shape

    def per_day(v: np.ndarray) -> np.ndarray:
        return np.broadcast_to(v[:, None, None], shape)

    np.testing.assert_allclose(ds["coarse_TEMP"].values, per_day(283.15 + 0.5 * day), rtol=1e-6)
    np.testing.assert_allclose(ds["coarse_T850"].values, per_day(285.0 + day), rtol=1e-6)
    np.testing.assert_allclose(ds["coarse_Q500"].values, per_day(1e-3 * (1 + day)), rtol=1e-5)
    # elevation is linear in lon: its conservative mean over a cell is the value at the centre
    expect = 1000.0 + 100.0 * (ds["lon"].values + 108.0)
    np.testing.assert_allclose(
        ds["static_elevation"].values, expect[None, :].repeat(40, 0), rtol=1e-5
    )
    # precipitation is copied, flipped to ascending latitude
    raw = xr.open_dataset(Path(json.loads(ds.attrs["sources"])["precip"][6:]) / "2000056.nc")
    raw = raw["precipitation"][0, ::-1].sel(lat=ds["lat"], lon=ds["lon"], method="nearest")
    np.testing.assert_allclose(ds["precip"].values[0], raw.values)
    # coarse surface pressure (80000 + 10 lat) is the area mean of lat over each coarse band:
    # int lat cos(lat) dlat / int cos(lat) dlat = (cos b - cos a + b sin b - a sin a) / (sin b -
    # sin a)
    g = grid_from_coords(ds["lat_coarse"].values, ds["lon_coarse"].values)
    a, b = np.radians(g.lat_bounds[:-1]), np.radians(g.lat_bounds[1:])
    mean_lat = (np.cos(b) - np.cos(a) + b * np.sin(b) - a * np.sin(a)) / (np.sin(b) - np.sin(a))
    np.testing.assert_allclose(
        ds["coarse_PRES"].values[0, :, 0], 80000 + 10 * np.degrees(mean_lat), rtol=1e-6
    )
    assert float(area_mean(ds["precip"].isel(time=0))) > 0


def test_existing_store_reused_or_refused(store: Path, data_root: Path) -> None:
    mtime = (store / "zarr.json").stat().st_mtime_ns
    assert run(_cfg(data_root, store)) == store
    assert (store / "zarr.json").stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match="different recipe; pass overwrite=true"):
        run(_cfg(data_root, store, "build.chunks.time=2"))


def _bad(
    data_root: Path, tmp_path: Path, match: str, *extra: str, root: Path | None = None
) -> None:
    out = tmp_path / "out" / "s.zarr"
    with pytest.raises(UserError, match=match) as exc:
        run(_cfg(root or data_root, out, *extra))
    assert "\n" not in str(exc.value)
    assert not out.exists()
    assert not (out.parent.exists() and _leftovers(out.parent))


def test_missing_variable(data_root: Path, tmp_path: Path) -> None:
    _bad(
        data_root,
        tmp_path,
        "'rh' is not in .*RelHum.*fix variables.RH.name",
        "build.predictors.sources.mswx.variables.RH.name=rh",
    )


def test_box_outside_data(data_root: Path, tmp_path: Path) -> None:
    _bad(
        data_root,
        tmp_path,
        "holds no cell of mswep.*fix domain.box",
        "build.domain.box={lon:[10,20],lat:[36,40]}",
    )


def test_coarse_box_outside_predictor_data(data_root: Path, tmp_path: Path) -> None:
    # the fine box sits at the edge of the ERA5 files, so with 3 cells of margin the coarse grid
    # reaches outside them: NaN predictors
    _bad(
        data_root,
        tmp_path,
        "coarse_\\w+ .* NaN values.*min_valid_fraction",
        "build.predictors.grid.margin=3",
    )


def test_period_outside_data(data_root: Path, tmp_path: Path) -> None:
    _bad(
        data_root,
        tmp_path,
        "no <YYYYDDD>.nc file in period",
        "build.period.start=2010-01-01",
        "build.period.end=2010-02-01",
    )


def test_wrong_units(data_root: Path, tmp_path: Path) -> None:
    _bad(
        data_root,
        tmp_path,
        "'relative_humidity'.* is in '%', which cannot be converted to 'K'",
        "build.predictors.sources.mswx.variables.RH.units=K",
    )


def test_no_predictand(data_root: Path, tmp_path: Path) -> None:
    _bad(data_root, tmp_path, "names no predictand", "build.predictand=null")


def test_no_recipe(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"build": None, "out": str(tmp_path / "x.zarr")})
    with pytest.raises(UserError, match="build=<name>"):
        run(cfg)


@pytest.fixture
def private_root(data_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(data_root, root)
    return root


def test_nan_in_predictors(data_root: Path, tmp_path: Path, private_root: Path) -> None:
    f = private_root / "mswep_era5" / "MSWX" / "Pres" / "Daily" / "2000058.nc"
    ds = xr.load_dataset(f)
    ds["surface_pressure"][:] = np.nan
    ds.to_netcdf(f)
    _bad(data_root, tmp_path, "coarse_PRES \\(from mswx.*\\) has .* NaN", root=private_root)


def test_corrupt_file(data_root: Path, tmp_path: Path, private_root: Path) -> None:
    f = private_root / "mswep_era5" / "MSWEP" / "2000058.nc"
    f.write_bytes(f.read_bytes()[:100])
    _bad(data_root, tmp_path, "cannot read .*2000058.nc.*corrupt", root=private_root)


def test_build_store_direct(data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_root, tmp_path / "unused.zarr", "build.chunks.time=3")
    out = build_store(cfg.build, tmp_path / "direct.zarr")
    ds = xr.open_zarr(out, consolidated=True)
    assert ds["precip"].encoding["chunks"] == (3, 40, 40)
    assert ds["precip"].dtype == np.float32


@pytest.mark.parametrize(("codec", "name"), [("none", None), ("lz4", "blosc")])
def test_codec_option(data_root: Path, tmp_path: Path, store: Path, codec: str, name) -> None:
    cfg = _cfg(data_root, tmp_path / "unused.zarr", f"+build.codec={codec}")
    out = build_store(cfg.build, tmp_path / f"{codec}.zarr")
    meta = json.loads((out / "precip" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"][1:]] == ([name] if name else [])
    fast, default = xr.open_zarr(out), xr.open_zarr(store)
    xr.testing.assert_identical(fast["precip"].load(), default["precip"].load())
    with pytest.raises(UserError, match="codec: brotli is not one of"):
        build_store(
            _cfg(data_root, tmp_path / "x.zarr", "+build.codec=brotli").build, tmp_path / "b"
        )


def test_cli_prints_one_line(data_root: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, DOWNSCALE_DATA_ROOT=str(data_root), HYDRA_FULL_ERROR="0")
    env.pop("DOWNSCALE_DEBUG", None)
    cmd = [
        sys.executable,
        "-m",
        "downscale.build",
        "build=mswep_era5",
        f"out={tmp_path / 's.zarr'}",
    ]
    cmd += [*SMALL, "build.predictand.source.variables.precip.units=K", f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(CONF).parent)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 1
        and lines[0].startswith("error: ")
        and "cannot be converted to 'K'" in lines[0]
    )
    assert not (tmp_path / "s.zarr").exists()


def test_predictand_remapped_to_a_resolution(data_root: Path, tmp_path: Path) -> None:
    grid = "{_target_:downscale.data.grids.regular,resolution:[0.2,0.2]}"
    ds = xr.open_zarr(run(_cfg(data_root, tmp_path / "r.zarr", f"build.predictand.grid={grid}")))
    assert ds["precip"].shape == (7, 20, 20)
    assert np.allclose(np.diff(ds["lat"].values), 0.2)
    native = xr.open_zarr(run(_cfg(data_root, tmp_path / "n.zarr")))
    # the box edges fall on 0.2 deg multiples, so the area mean is conserved exactly
    rel = np.abs(area_mean(ds["precip"]) / area_mean(native["precip"]) - 1)
    assert float(rel.max()) < 1e-6


def test_static_not_covering_domain(data_root: Path, tmp_path: Path) -> None:
    # a terrain file covering only the western half of the box leaves NaN terrain
    small = tmp_path / "small_elevation.nc"
    xr.open_dataset(data_root / "mswep_era5" / "static" / "elevation.nc").sel(
        lon=slice(-111, -108)
    ).to_netcdf(small)
    _bad(
        data_root,
        tmp_path,
        "static_elevation .* NaN cells.*fillna",
        f"build.statics.terrain.path={small}",
    )


def test_mswep_data_config_trains_on_the_built_store(store: Path) -> None:
    """data=mswep on the mswep_era5 store: 14 coarse predictors + elevation, fraction splits."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config(
        "train",
        [
            "data=mswep",
            f"data.store={store}",
            "data.train_dataset.patch_size=16",
            "data.num_workers=0",
            "data.batch_size=2",
            # 7 days: the default [0.8, 0.9] validation split would be empty (a clear error)
            "data.splits.train=[0.0,0.5]",
            "data.splits.val=[0.5,0.75]",
            "data.splits.test=[0.75,1.0]",
            # the fake relative humidity is a constant 60 %: a z-score cannot be fitted on it
            "data.variables.coarse_RH._target_=downscale.data.scaling.IdentityScaler",
        ],
    )
    dm = instantiate(cfg.data)
    dm.prepare()
    assert dm.cond_channels == 15
    batch = next(iter(dm.train_dataloader()))
    assert batch["target"].shape == (2, 1, 16, 16) and batch["cond"].shape == (2, 15, 16, 16)
    n = sum(len(v) for v in dm.split_indices.values())
    # 2000-02-25 .. 2000-03-03 is 8 days, 29 February dropped
    assert n == 7 and [len(dm.split_indices[k]) for k in ("train", "val", "test")] == [4, 1, 2]
