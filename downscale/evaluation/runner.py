"""Run an evaluation config over samples and observations; write metrics, figures and the report.

``cfg`` is ``conf/evaluation/<name>.yaml``: ``metrics`` and ``figures`` map output names to
``_target_`` + ``_partial_`` entries (metric: ``fn(samples, obs, mask) -> DataArray``; figure:
``fn(ctx, path)``), so this module never branches on names. Other keys: ``chunks`` (dask chunks,
e.g. ``{time: 32}``), ``cluster`` (a dask.distributed scheduler address, or null for the local
threaded scheduler), ``threshold_units`` (checked against the data's ``units``),
``baseline_metrics`` (names scored for baselines; default all), ``wandb`` (log to the active
W&B run; :func:`downscale.evaluate.evaluate_store` starts one when true).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from downscale.evaluation.align import align, valid_days
from downscale.evaluation.metrics._common import MEMBER, TIME, check_threshold_units
from downscale.evaluation.plots import FigureContext
from downscale.evaluation.report import write_report
from downscale.utils.atomic import atomic_path, write_text
from downscale.utils.errors import UserError

MODEL = "model"
_MAX_FLAT = 64  # arrays with more elements go to metrics.nc only


def _as_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


@contextlib.contextmanager
def _dask_client(address: str | None) -> Iterator[None]:
    """Use the dask.distributed scheduler at ``address`` inside the block (None: local threads)."""
    if not address:
        yield
        return
    from distributed import Client

    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        raise UserError(
            f"cannot reach the dask scheduler at '{address}' ({exc}); "
            "start it or set evaluation.cluster=null"
        ) from exc
    with client:
        yield


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


_BARE_DIMS = ("score", "stat", "quantity", "source")  # their values name the key on their own
_DIM_PREFIX = {
    "scale": "x",
    "quantile": "q",
    "threshold": "t",
    "bin": "",
    "year": "",
    "return_period": "rp",
}


def flatten(results: Mapping[str, xr.DataArray]) -> dict[str, float]:
    """Flat ``name -> number`` view: scalars as they are, small arrays one key per element.

    Keys join the name with each coordinate (``pooled_mean_mae_x4``, ``fss_t1_x8``); arrays with
    attrs ``flatten=0`` or more than 64 elements only go to metrics.nc; NaN stays NaN.
    """
    flat: dict[str, float] = {}
    for name, da in results.items():
        if int(da.attrs.get("flatten", 1)) == 0 or da.size > _MAX_FLAT:
            continue
        if da.ndim == 0:
            flat[name] = float(da)
            continue
        dims = sorted(da.dims, key=lambda d: d not in _BARE_DIMS)
        da = da.transpose(*dims)
        for idx in np.ndindex(da.shape):
            parts = [name]
            for dim, i in zip(dims, idx, strict=True):
                value = _fmt(da[dim].values[i]) if dim in da.coords else str(i)
                parts.append(value if dim in _BARE_DIMS else f"{_DIM_PREFIX.get(dim, dim)}{value}")
            flat["_".join(parts)] = float(da.values[idx])
    return flat


def _clean_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, str | int | float | np.number):
            out[key] = value
        elif isinstance(value, bool | np.bool_):
            out[key] = int(value)
        else:
            out[key] = json.dumps(value, default=str)
    return out


def to_dataset(results: Mapping[str, xr.DataArray]) -> xr.Dataset:
    """All metric arrays in one Dataset; dims are prefixed with the array's name (no clashes)."""
    variables = {}
    for name, da in results.items():
        da = da.reset_coords(drop=True)
        renamed = da.rename({d: f"{name}__{d}" for d in da.dims})
        renamed.attrs = _clean_attrs(da.attrs)
        for coord in renamed.coords.values():
            if coord.dtype.kind in "OU":
                renamed = renamed.assign_coords({coord.name: coord.astype(str)})
        variables[name] = renamed
    return xr.Dataset(variables)


def _finite(data: Mapping[str, float]) -> dict[str, float | None]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()
    }


def _write_json(path: Path, data: Mapping[str, float]) -> None:
    write_text(path, json.dumps(_finite(data), indent=1, sort_keys=True) + "\n")


def compute_metrics(
    metrics: Mapping[str, Any],
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None,
    names: list[str] | None = None,
) -> dict[str, xr.DataArray]:
    """Build every metric lazily, then compute them together (one pass over the dask graph)."""
    chosen = [n for n in metrics if names is None or n in names]
    lazy = {name: metrics[name](samples, obs, mask) for name in chosen}
    (computed,) = dask.compute(lazy)
    return {name: da.rename(name) for name, da in computed.items()}


def _chunk(da: xr.DataArray, chunks: Mapping[str, int] | None) -> xr.DataArray:
    if not chunks:
        return da
    use = {d: c for d, c in chunks.items() if d in da.dims}
    if MEMBER in da.dims:
        use[MEMBER] = -1
    return da.chunk(use)


def _drop_invalid_days(samples, obs) -> tuple[xr.DataArray, xr.DataArray, int]:
    keep = valid_days(samples, obs).compute().values
    if not keep.any():
        raise UserError("every day is all-NaN in the samples or the observations; check the inputs")
    dropped = int((~keep).sum())
    if dropped:
        samples, obs = samples.isel({TIME: keep}), obs.isel({TIME: keep})
    return samples, obs, dropped


def _same_days(baseline: xr.DataArray, obs: xr.DataArray, name: str) -> xr.DataArray:
    """The baseline on the days being scored (the samples' days less the dropped ones)."""
    if TIME not in baseline.coords or TIME not in obs.coords:
        return baseline
    missing = np.setdiff1d(obs[TIME].values, baseline[TIME].values)
    if missing.size:
        raise UserError(
            f"baseline '{name}' lacks {missing.size} of the evaluated days (first: {missing[0]}); "
            "compute it on the samples' days"
        )
    return baseline.sel({TIME: obs[TIME].values})


def _skipped(results: Mapping[str, xr.DataArray]) -> dict[str, str]:
    return {name: str(da.attrs["skipped"]) for name, da in results.items() if "skipped" in da.attrs}


def evaluate(
    samples: xr.DataArray,
    obs: xr.DataArray,
    *,
    mask: xr.DataArray | None,
    cfg: DictConfig | Mapping[str, Any],
    out_dir: Path,
    baselines: Mapping[str, xr.DataArray] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Score ``samples`` (member, time, y, x) against ``obs`` (time, y, x) and write the outputs.

    Writes ``metrics.json`` (flat headline numbers), ``scorecard.json`` (the flat numbers of the
    model and of each baseline: ``{column: {metric: value}}``), ``metrics.nc`` (every metric array),
    ``figures/*.png`` and ``report.html`` (scorecard with baselines side by side) into ``out_dir``,
    each atomically, and returns the flat metrics. Days that are all-NaN in samples or observations
    are skipped and counted in ``n_days_skipped``; baselines are scored on the same days and
    cells. ``skipped`` (name -> reason, e.g. a baseline that could not be computed) is listed
    under "Skipped" in the report beside the metrics that were skipped.
    """
    cfg = _as_config(cfg)
    out_dir = Path(out_dir)
    samples, obs, mask = align(samples, obs, mask)
    check_threshold_units(obs, cfg.get("threshold_units"))
    chunks = OmegaConf.to_container(cfg.chunks) if cfg.get("chunks") else None
    samples, obs = _chunk(samples, chunks), _chunk(obs, chunks)
    units = str(obs.attrs.get("units", ""))
    metric_fns = instantiate(cfg.get("metrics", {}))
    figure_fns = instantiate(cfg.get("figures", {}))
    baseline_names = list(cfg.baseline_metrics) if cfg.get("baseline_metrics") else None

    with _dask_client(cfg.get("cluster")):
        samples, obs, dropped = _drop_invalid_days(samples, obs)
        results = compute_metrics(metric_fns, samples, obs, mask)
        flat = {
            **flatten(results),
            "n_days": float(obs.sizes[TIME]),
            "n_days_skipped": float(dropped),
        }
        scorecard = {MODEL: flat}
        aligned_baselines: dict[str, xr.DataArray] = {}
        for name, da in (baselines or {}).items():
            b, bobs, _ = align(_chunk(_same_days(da, obs, name), chunks), obs, mask)
            aligned_baselines[name] = b
            scorecard[name] = flatten(compute_metrics(metric_fns, b, bobs, mask, baseline_names))

        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / "metrics.json", flat)
        write_text(
            out_dir / "scorecard.json",
            json.dumps({k: _finite(v) for k, v in scorecard.items()}, indent=1) + "\n",
        )
        with atomic_path(out_dir / "metrics.nc") as tmp:
            to_dataset(results).to_netcdf(tmp)
        ctx = FigureContext(samples, obs, mask, results, aligned_baselines, units)
        with atomic_path(out_dir / "figures") as tmp:
            tmp.mkdir()
            for name, fn in figure_fns.items():
                fn(ctx, tmp / f"{name}.png")
    figures_dir = out_dir / "figures"
    notes = {**_skipped(results), **(skipped or {})}
    write_report(flat, scorecard, figures_dir, out_dir / "report.html", skipped=notes)
    if cfg.get("wandb", True):
        from downscale.logging.wandb_logging import log_to_wandb

        log_to_wandb(flat, figures_dir, scorecard)
    return flat


def open_data(path: str | Path, chunks: Mapping[str, int]) -> xr.Dataset:
    """Open a zarr store or a netCDF file lazily with dask ``chunks``."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"'{path}' does not exist; give the path of an existing store or netCDF file"
        )
    try:
        if path.suffix in (".nc", ".nc4", ".netcdf") or path.is_file():
            return xr.open_dataset(path, chunks=dict(chunks))
        # the stored chunks, then the evaluation's: asking zarr for chunks that split the stored
        # ones would read (and decompress) each stored chunk once per piece
        ds = xr.open_zarr(path, chunks={}, consolidated=False)
        return ds.chunk({dim: size for dim, size in chunks.items() if dim in ds.dims})
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unusable
        raise UserError(
            f"cannot read '{path}' ({type(exc).__name__}); is it complete? Rewrite it "
            "(rerun the step that made it)"
        ) from exc


def pick_variable(ds: xr.Dataset, variable: str | None, what: str) -> str:
    """``variable`` if ``ds`` has it, else the one variable with a member dim (samples) or the one
    data variable besides ``valid_mask``; a :class:`UserError` when that is ambiguous."""
    if variable is not None:
        if variable not in ds.data_vars:
            raise UserError(
                f"variable '{variable}' is not in the {what} (has {sorted(ds.data_vars)}); "
                "set variable= to one of them"
            )
        return variable
    candidates = [v for v in ds.data_vars if MEMBER in ds[v].dims] if what == "samples" else []
    candidates = candidates or [v for v in ds.data_vars if v != "valid_mask"]
    if len(candidates) != 1:
        raise UserError(f"the {what} hold {sorted(ds.data_vars)}; set variable= to choose one")
    return candidates[0]


def evaluate_paths(
    samples_path: str | Path,
    obs_path: str | Path,
    *,
    variable: str | None,
    cfg: DictConfig | Mapping[str, Any],
    out_dir: str | Path,
    baselines: Mapping[str, xr.DataArray] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Open a samples store and an observation store/netCDF (with optional ``valid_mask``), then
    :func:`evaluate` them with dask chunks over time."""
    cfg = _as_config(cfg)
    chunks = OmegaConf.to_container(cfg.chunks) if cfg.get("chunks") else {TIME: 32}
    sds = open_data(samples_path, {**chunks, MEMBER: -1})
    ods = open_data(obs_path, chunks)
    var = pick_variable(sds, variable, "samples")
    ovar = pick_variable(ods, var if var in ods.data_vars else variable, "observations")
    mask = ods["valid_mask"].load().astype(bool) if "valid_mask" in ods.data_vars else None
    return evaluate(
        sds[var],
        ods[ovar],
        mask=mask,
        cfg=cfg,
        out_dir=Path(out_dir),
        baselines=baselines,
        skipped=skipped,
    )
