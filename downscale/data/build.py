"""Build a dataset store (zarr v3) from a recipe: predictand on the fine grid, coarse predictors,
fine statics and the valid mask (schema in docs/architecture.md and docs/data.md).

The recipe (``conf/build/<name>.yaml``) names the predictand source and its target grid, the coarse
predictor sources and the coarse grid, the period, the domain box, statics and units. Everything is
lazy (dask) until the write loop, which computes one block of ``chunks.time`` steps at a time,
checks it and writes it into a temporary store that is renamed into place only when complete
(:func:`downscale.utils.atomic.atomic_path`), so memory stays bounded and nothing is
half-written.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from downscale.data.grids import Grid, grid_of, snap_box
from downscale.data.regrid import regrid_conservative
from downscale.data.sources import Period, Source
from downscale.utils.atomic import atomic_path
from downscale.utils.errors import UserError

log = logging.getLogger(__name__)

STORE_FORMAT_VERSION = 1


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return json.loads(json.dumps(cfg, default=str))


def _source(cfg: Mapping[str, Any], where: str) -> Source:
    if not isinstance(cfg, Mapping) or "_target_" not in cfg:
        raise UserError(
            f"{where} needs a `_target_` source (e.g. downscale.data.sources.NetCDFSource)"
        )
    src = instantiate(dict(cfg), _convert_="all")
    if not isinstance(src, Source):
        raise UserError(f"{where}._target_ must build a downscale.data.sources.Source")
    return src


def _grid_factory(cfg: Any, where: str) -> Any:
    if not isinstance(cfg, Mapping) or "_target_" not in cfg:
        raise UserError(f"{where} needs a `_target_` grid factory (see downscale.data.grids)")
    return instantiate({**dict(cfg), "_partial_": True}, _convert_="all")


def _crop_to(ds: xr.Dataset, target: Grid, what: str) -> xr.Dataset:
    """The source cells overlapping ``target`` (plus one cell each side, for partial edges)."""
    ext = target.extent()
    sl = snap_box(grid_of(ds), ext[:2], ext[2:], margin=1, rule="overlap", what=what)
    return ds.isel(lat=sl[0], lon=sl[1])


def _regrid_all(
    ds: xr.Dataset, target: Grid, regrid_cfg: Mapping[str, Any], mvf: float
) -> xr.Dataset:
    src_grid = grid_of(ds)
    if src_grid.same_as(target):
        return ds.assign_coords(lat=target.lat, lon=target.lon)
    backend = str(regrid_cfg.get("backend", "sparse"))
    out = {
        name: regrid_conservative(
            ds[name], target, source_grid=src_grid, min_valid_fraction=mvf, backend=backend
        )
        for name in ds.data_vars
    }
    return xr.Dataset(out)


def _align_times(ds: xr.Dataset, times: pd.DatetimeIndex, what: str) -> xr.Dataset:
    have = ds.indexes["time"]
    missing = times.difference(have)
    if len(missing):
        raise UserError(
            f"{what} lacks {len(missing)} of the {len(times)} predictand times (first "
            f"{missing[0]}, it covers {have[0]} .. {have[-1]}); fix the period, or set "
            "`frequency: D` when daily sources are stamped at different hours"
        )
    return ds.sel(time=times)


class _Plan:
    """The lazy pieces of a store before writing."""

    def __init__(self) -> None:
        self.timed: dict[str, xr.DataArray] = {}
        self.static: dict[str, xr.DataArray] = {}
        self.predictands: list[str] = []
        self.fillna: dict[str, float] = {}
        self.sources: dict[str, str] = {}


def plan_store(recipe: Mapping[str, Any]) -> tuple[_Plan, dict[str, Any]]:
    """Open all sources lazily and lay out the store variables (nothing is computed)."""
    cfg = _plain(recipe)
    name = cfg.get("name", "store")
    if not cfg.get("predictand") or not cfg["predictand"].get("source"):
        raise UserError(f"recipe {name!r} names no predictand; add predictand.source to it")
    period = Period.from_config(cfg.get("period"))
    floor = cfg.get("frequency")
    regrid_cfg = dict(cfg.get("regrid") or {})
    domain = dict(cfg.get("domain") or {})
    box = dict(domain.get("box") or {})
    plan = _Plan()

    # predictand on the fine grid
    pcfg = cfg["predictand"]
    psrc = _source(pcfg["source"], "predictand.source")
    y = psrc.open(period, floor)
    sl = snap_box(
        grid_of(y),
        box.get("lon"),
        box.get("lat"),
        int(domain.get("margin", 0)),
        what=psrc.describe(),
    )
    y = y.isel(lat=sl[0], lon=sl[1])
    fine = grid_of(y)
    if pcfg.get("grid"):
        fine = _grid_factory(pcfg["grid"], "predictand.grid")(fine=fine)
        pmvf = pcfg.get("min_valid_fraction", regrid_cfg.get("min_valid_fraction", 0.5))
        y = _regrid_all(y, fine, regrid_cfg, float(pmvf))
    times = pd.DatetimeIndex(y["time"].values)
    for v in y.data_vars:
        plan.timed[str(v)] = y[v]
        plan.predictands.append(str(v))
        plan.sources[str(v)] = psrc.describe()

    # coarse predictors
    xcfg = dict(cfg.get("predictors") or {})
    if not xcfg.get("sources"):
        raise UserError(f"recipe {name!r} names no predictors; add predictors.sources")
    coarse = _grid_factory(xcfg.get("grid"), "predictors.grid")(fine=fine)
    mvf = float(xcfg.get("min_valid_fraction", regrid_cfg.get("min_valid_fraction", 0.5)))
    for key, scfg in xcfg["sources"].items():
        src = _source(scfg, f"predictors.sources.{key}")
        x = src.open(period, floor)
        x = _align_times(_crop_to(x, coarse, src.describe()), times, src.describe())
        x = _regrid_all(x, coarse, regrid_cfg, mvf)
        for v in x.data_vars:
            out = f"coarse_{v}"
            if out in plan.timed:
                raise UserError(f"two predictor sources give {v!r}; rename one in `variables:`")
            plan.timed[out] = x[v].rename({"lat": "lat_coarse", "lon": "lon_coarse"})
            plan.sources[out] = src.describe()
            fill = src.variables[str(v)].get("fillna")
            if fill is not None:
                plan.fillna[out] = float(fill)

    # fine statics (e.g. terrain), conservatively remapped to the fine grid
    for key, scfg in (cfg.get("statics") or {}).items():
        src = _source(scfg, f"statics.{key}")
        s = _crop_to(src.open(None, None), fine, src.describe())
        for v in s.data_vars:
            if "time" in s[v].dims:
                s[v] = s[v].isel(time=0, drop=True)
        s = _regrid_all(s, fine, regrid_cfg, float(regrid_cfg.get("min_valid_fraction", 0.5)))
        for v in s.data_vars:
            plan.static[f"static_{v}"] = s[v]
            plan.sources[f"static_{v}"] = src.describe()
            fill = src.variables[str(v)].get("fillna")
            if fill is not None:
                plan.fillna[f"static_{v}"] = float(fill)

    meta = {
        "name": name,
        "period": period.describe(),
        "fine": fine,
        "coarse": coarse,
        "regrid": regrid_cfg,
        "mvf": mvf,
        "cfg": cfg,
    }
    return plan, meta


# Chunk compression of the time-dependent arrays (recipe key `codec`). zstd (zarr's default) is the
# smallest; lz4 (blosc, byte shuffle) and none decode faster, which matters only for stores read window
# by window because they exceed the DataModule's memory budget (bench/loader.py, docs/data.md).
CODECS = {
    "zstd": lambda: (zarr.codecs.ZstdCodec(level=0),),
    "lz4": lambda: (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),),
    "none": lambda: None,
}


def _compressors(cfg: Mapping[str, Any]) -> Any:
    codec = str(cfg.get("codec") or "zstd")
    if codec not in CODECS:
        raise UserError(f"codec: {codec} is not one of {sorted(CODECS)}; fix the recipe's codec")
    return CODECS[codec]()


def _encoding(da: xr.DataArray, chunks: Mapping[str, int], compressors: Any) -> dict[str, Any]:
    ch = tuple(
        da.sizes[d] if int(chunks.get(d, -1)) <= 0 else min(int(chunks[d]), da.sizes[d])
        for d in da.dims
    )
    return {"dtype": "float32", "chunks": ch, "compressors": compressors}


def _check_block(block: xr.Dataset, plan: _Plan, t0: pd.Timestamp) -> None:
    for name in block.data_vars:
        if name in plan.predictands or not str(name).startswith("coarse_"):
            continue
        bad = int(block[name].isnull().sum())
        if bad:
            src = plan.sources.get(str(name), "?")
            raise UserError(
                f"{name} (from {src}) has {bad} NaN values in the block starting {t0}: the source "
                "has gaps or does not cover the coarse grid; lower predictors.min_valid_fraction, "
                "shrink domain.box, or set `fillna:` on that variable"
            )


def _write(plan: _Plan, meta: dict[str, Any], tmp: Path) -> None:
    cfg = meta["cfg"]
    chunks = {"time": 64, **dict(cfg.get("chunks") or {})}
    tchunk = max(int(chunks["time"]), 1)
    timed = xr.Dataset(plan.timed)
    for name, fill in plan.fillna.items():
        timed[name] = timed[name].fillna(fill)
    timed = timed.astype("float32")
    spatial = {d: (int(chunks[d]) if int(chunks.get(d, -1)) > 0 else -1) for d in ("lat", "lon")}
    timed = timed.chunk({"time": tchunk, **spatial, "lat_coarse": -1, "lon_coarse": -1})
    for v in timed.data_vars:
        timed[v].attrs = dict(plan.timed[str(v)].attrs)
    fine, coarse = meta["fine"], meta["coarse"]
    timed = timed.assign_coords(
        lat=("lat", fine.lat, {"units": "degrees_north", "standard_name": "latitude"}),
        lon=("lon", fine.lon, {"units": "degrees_east", "standard_name": "longitude"}),
        lat_coarse=("lat_coarse", coarse.lat, {"units": "degrees_north"}),
        lon_coarse=("lon_coarse", coarse.lon, {"units": "degrees_east"}),
    )
    timed.attrs = _global_attrs(plan, meta)
    compressors = _compressors(cfg)
    enc = {v: _encoding(timed[v], chunks, compressors) for v in timed.data_vars}
    enc["time"] = {"units": "hours since 1970-01-01", "dtype": "float64"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # zarr v3 consolidated metadata
        timed.to_zarr(tmp, mode="w", compute=False, zarr_format=3, consolidated=False, encoding=enc)
        ntime = timed.sizes["time"]
        all_valid = None
        for t0 in range(0, ntime, tchunk):
            sl = slice(t0, min(t0 + tchunk, ntime))
            block = timed.isel(time=sl).compute()
            _check_block(block, plan, pd.Timestamp(block["time"].values[0]))
            ok = np.ones((fine.lat.size, fine.lon.size), dtype=bool)
            for v in plan.predictands:
                ok &= np.isfinite(block[v].values).all(axis=0)
            all_valid = ok if all_valid is None else all_valid & ok
            keep = [v for v in block.data_vars]
            block[keep].drop_vars(["lat", "lon", "lat_coarse", "lon_coarse"]).to_zarr(
                tmp, region={"time": sl}, mode="r+", consolidated=False
            )
            log.info("wrote times %d..%d of %d", sl.start, sl.stop, ntime)
        static = xr.Dataset(
            {k: v.astype("float32").compute() for k, v in plan.static.items()}
        ).assign_coords(lat=fine.lat, lon=fine.lon)
        for k in plan.static:
            if k in plan.fillna:
                static[k] = static[k].fillna(plan.fillna[k])
            bad = int(static[k].isnull().sum())
            if bad:
                raise UserError(
                    f"{k} (from {plan.sources[k]}) has {bad} NaN cells on the fine grid: the file "
                    "has gaps or does not cover the domain; fix domain.box or set `fillna:` on it"
                )
            static[k].attrs = dict(plan.static[k].attrs)
        static["valid_mask"] = xr.DataArray(
            all_valid.astype("uint8"),
            dims=("lat", "lon"),
            attrs={
                "long_name": "1 where every predictand is defined at every time",
                "flag_values": [0, 1],
            },
        )
        static.attrs = timed.attrs  # mode="a" rewrites the group attributes
        static_enc = {k: {"chunks": static[k].shape} for k in static.data_vars}
        static.drop_vars(["lat", "lon"]).to_zarr(
            tmp, mode="a", zarr_format=3, consolidated=False, encoding=static_enc
        )
        # consolidated metadata on purpose: one read opens the store (also on object storage)
        zarr.consolidate_metadata(str(tmp))


def _global_attrs(plan: _Plan, meta: dict[str, Any]) -> dict[str, Any]:
    from downscale import __version__

    reg = meta["regrid"]
    cfg = meta["cfg"]
    return {
        "title": str(cfg.get("description", meta["name"])),
        "recipe": meta["name"],
        "Conventions": "CF-1.8",
        "downscale_version": str(__version__),
        "store_format_version": STORE_FORMAT_VERSION,
        "predictands": json.dumps(plan.predictands),
        "coarse_predictors": json.dumps([k for k in plan.timed if k.startswith("coarse_")]),
        "statics": json.dumps(list(plan.static)),
        "sources": json.dumps(plan.sources),
        "period": json.dumps(meta["period"]),
        "regrid_method": (
            f"first-order conservative on the sphere (backend={reg.get('backend', 'sparse')}, "
            f"min_valid_fraction={meta['mvf']})"
        ),
        "fine_grid": json.dumps(meta["fine"].describe()),
        "coarse_grid": json.dumps(meta["coarse"].describe()),
        "predictand_paired": str(bool(cfg.get("paired", True))).lower(),
        "fillna": json.dumps(plan.fillna),
        "build_config": json.dumps(cfg, sort_keys=True, default=str),
    }


def build_store(
    recipe_cfg: Mapping[str, Any] | DictConfig,
    out_path: str | os.PathLike[str],
    *,
    export_netcdf: bool = False,
) -> Path:
    """Build the store described by ``recipe_cfg`` at ``out_path`` (replacing it atomically)."""
    out = Path(out_path)
    plan, meta = plan_store(recipe_cfg)
    with atomic_path(out) as tmp:
        _write(plan, meta, tmp)
    if export_netcdf:
        nc = out.with_suffix(".nc")
        with atomic_path(nc) as tmp_nc, xr.open_zarr(out, consolidated=True) as ds:
            ds.to_netcdf(tmp_nc, engine="h5netcdf")
    return out


def store_recipe(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``build_config`` a complete store was built from, or None when there is no store."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        with xr.open_zarr(p, consolidated=True) as ds:
            return json.loads(ds.attrs["build_config"])
    except (OSError, KeyError, ValueError):
        return None
