"""Pool finished ensembles into one: ``python -m downscale.pool stores=[a.zarr,b.zarr] n_members=16``.

A multi-seed (or multi-model) ensemble: the members of several sample stores of the same days,
grid and predictands, drawn by different checkpoints (training seeds, targets or architectures),
side by side along ``member``. A deep ensemble's members carry the spread between trainings as well
as each model's own (Lakshminarayanan et al. 2017, NeurIPS); on Iberia two seeds of the residual
EDM, 16 members each, reach spread/skill 0.95 where the first alone has 0.81 (bench/skill/notes.md,
items 23-24).

The stores must come from different sampling seeds (``seed=``): members are seeded by (seed, day,
member), so two checkpoints drawn with the same seed map the same noise to nearly the same sample,
and the pool is worth fewer members than it has (0.017 mm/day of CRPS on Iberia). Each store keeps
its own post-processing (drizzle threshold, conservation); the pool is written to a temporary path
and renamed when complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import xarray as xr
from omegaconf import DictConfig, ListConfig

from downscale.utils.atomic import atomic_path
from downscale.utils.cli import run_cli
from downscale.utils.errors import UserError, report_user_errors, require

# what each source's record in the pool's attrs keeps (the rest stays in the source store)
_SOURCE_ATTRS = (
    "checkpoint",
    "checkpoint_sha256",
    "model",
    "seed",
    "sampler",
    "tiling",
    "nfe",
    "dry",
)
# what the sources must share: the days, the observations they are scored against
_SHARED_ATTRS = ("split", "obs_store")


def open_sources(paths: Sequence[str]) -> list[xr.Dataset]:
    """The sample stores to pool (at least two, each with a member dimension)."""
    require(
        isinstance(paths, Sequence) and not isinstance(paths, str) and len(paths) >= 2,
        f"stores must list two or more sample stores, got {paths!r}; e.g. stores=[a.zarr,b.zarr]",
    )
    sources = []
    for path in map(str, paths):
        require(Path(path).exists(), f"stores: {path} does not exist; sample it first")
        try:
            ds = xr.open_zarr(path, consolidated=False)
        except Exception as exc:  # noqa: BLE001 - any reader failure means it is not a store
            raise UserError(
                f"stores: cannot read {path} as a samples store ({type(exc).__name__}); give the "
                "out= of downscale.sample"
            ) from exc
        require(
            "member" in ds.dims and "time_index" in ds,
            f"stores: {path} is not a samples store (no member dimension or time_index); give "
            "the out= of downscale.sample",
        )
        sources.append(ds)
    return sources


def check_compatible(paths: Sequence[str], sources: list[xr.Dataset]) -> None:
    """Same predictands, days, grid and observations; distinct sampling seeds."""
    first, ref = paths[0], sources[0]
    for path, ds in zip(paths[1:], sources[1:], strict=True):
        require(
            sorted(ds.data_vars) == sorted(ref.data_vars),
            f"stores: {path} holds {sorted(ds.data_vars)}, {first} {sorted(ref.data_vars)}; pool "
            "stores of the same predictands",
        )
        require(
            np.array_equal(ds["time_index"].values, ref["time_index"].values),
            f"stores: {path} and {first} cover different days; draw both for the same split",
        )
        for coord in ("lat", "lon"):
            require(
                coord not in ref.coords or np.allclose(ds[coord].values, ref[coord].values),
                f"stores: {path} and {first} are on different grids ({coord}); pool stores of "
                "one grid",
            )
        for key in _SHARED_ATTRS:
            require(
                ds.attrs.get(key) == ref.attrs.get(key),
                f"stores: {path} has {key}={ds.attrs.get(key)!r}, {first} "
                f"{ref.attrs.get(key)!r}; pool draws of the same {key}",
            )
    seeds: dict[Any, str] = {}
    for path, ds in zip(paths, sources, strict=True):
        seed = ds.attrs.get("seed")
        require(
            seed not in seeds,
            f"stores: {path} and {seeds.get(seed)} were both drawn with seed={seed}, so their "
            "members share noise; draw one of them again with another seed=",
        )
        seeds[seed] = path


def pool_members(sources: list[xr.Dataset], n_members: int | None) -> xr.Dataset:
    """The first ``n_members`` members of every source (all when None), numbered 0..N-1."""
    counts = [ds.sizes["member"] for ds in sources]
    if n_members is not None:
        require(
            isinstance(n_members, int) and 1 <= n_members <= min(counts),
            f"n_members={n_members!r} must be an integer from 1 to {min(counts)} (the smallest "
            "store's members)",
        )
    take = [ds.isel(member=slice(0, n_members)) for ds in sources]
    predictands = [name for name in sources[0].data_vars if name != "time_index"]
    pooled = xr.concat([ds[predictands] for ds in take], dim="member")
    pooled = pooled.assign_coords(member=np.arange(pooled.sizes["member"]))
    pooled["time_index"] = sources[0]["time_index"]
    return pooled.chunk({"member": -1})


def source_record(path: str, ds: xr.Dataset, n_members: int) -> dict[str, Any]:
    """What the pool records of one source: its path, members taken and how it was drawn."""
    drawn = {key: ds.attrs[key] for key in _SOURCE_ATTRS if key in ds.attrs}
    return {"path": str(Path(path).resolve()), "n_members": n_members, **drawn}


def _pooled_record(out: Path) -> str | None:
    """The sources a finished pool at ``out`` records (None: not a pool, or unreadable)."""
    try:
        return xr.open_zarr(out, consolidated=False).attrs.get("pooled_from")
    except Exception:  # noqa: BLE001 - whatever is there, it is not this pool
        return None


@report_user_errors
def run(cfg: DictConfig) -> dict[str, Any]:
    """Pool ``cfg.stores`` into ``cfg.out`` (and evaluate it); returns its path and members."""
    started = time.perf_counter()
    stores = cfg.get("stores")
    sources = open_sources(list(stores) if isinstance(stores, ListConfig) else stores)
    paths = [str(p) for p in stores]
    check_compatible(paths, sources)
    n_members = cfg.get("n_members")
    pooled = pool_members(sources, n_members)
    taken = [n_members or ds.sizes["member"] for ds in sources]
    records = zip(paths, sources, taken, strict=True)
    record = json.dumps([source_record(path, ds, n) for path, ds, n in records])
    out = Path(cfg.out)
    if out.exists():
        done = _pooled_record(out)
        require(
            done == record,
            f"out={out} exists and pools other stores or members; remove it or choose another out=",
        )
        print(f"pool: {out} is already complete")
    else:
        pooled.attrs = {
            **{key: sources[0].attrs[key] for key in _SHARED_ATTRS if key in sources[0].attrs},
            # the analog baseline's training days, as downscale.sample records them
            **{k: sources[0].attrs[k] for k in ("train_time_index",) if k in sources[0].attrs},
            "model": "pool",
            "pooled_from": record,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            pooled.to_zarr(tmp, consolidated=False, zarr_format=3)
    result: dict[str, Any] = {
        "path": out,
        "n_members": int(sum(taken)),
        "seconds": time.perf_counter() - started,
    }
    print(f"pool: {out} ({result['n_members']} members from {len(paths)} stores)")
    if cfg.get("evaluate"):
        from downscale.evaluate import evaluate_store

        obs = cfg.get("obs") or sources[0].attrs.get("obs_store")
        require(obs is not None, "the stores record no observations store; give obs=<store>")
        result["metrics"] = evaluate_store(out, obs, cfg.evaluation, out.parent, variable=None)
    return result


@hydra.main(version_base=None, config_path="../conf", config_name="pool")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run(cfg)


if __name__ == "__main__":
    run_cli("pool", main)
