"""Baselines scored beside the model: interpolation, nearest (block) upsampling, analogs, RainFARM,
and a statistical regression ensemble (ridge regression with a heteroscedastic censored Gaussian).

Each returns a ``(member, time, lat, lon)`` DataArray on the fine grid in physical units, so that
the runner treats it like any samples store. The ``*_baseline`` adapters take a dataset store
(docs/architecture.md: predictand ``<var>`` on ``(time, lat, lon)``, coarse fields ``coarse_<var>``
on ``(time, lat_coarse, lon_coarse)``) and are listed in ``conf/evaluation/default.yaml:baselines``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask
import dask.array
import numpy as np
import scipy.ndimage
import scipy.sparse
import xarray as xr
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from downscale.data.store import time_offset_table, time_offsets
from downscale.evaluation.metrics._common import MEMBER, TIME
from downscale.utils.errors import UserError

LAT, LON = "lat", "lon"
LAT_C, LON_C = "lat_coarse", "lon_coarse"
# xarray's fill_value that extrapolates: 1-D scipy interpolants (linear) want "extrapolate",
# scipy interpn (cubic and higher) wants None
_EXTRAPOLATE = {"linear": "extrapolate", "nearest": "extrapolate"}
# ridge penalties searched by generalised cross-validation (features are z-scored)
RIDGE_ALPHAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def _to_fine_names(coarse: xr.DataArray) -> xr.DataArray:
    rename = {d: n for d, n in ((LAT_C, LAT), (LON_C, LON)) if d in coarse.dims}
    return coarse.rename(rename)


def _finish(da: xr.DataArray, fine_grid: xr.DataArray | xr.Dataset, units: str | None, name: str):
    if MEMBER not in da.dims:
        da = da.expand_dims({MEMBER: 1})
    da = da.transpose(MEMBER, TIME, LAT, LON).assign_coords(
        {LAT: fine_grid[LAT], LON: fine_grid[LON]}
    )
    da = da.assign_coords({MEMBER: np.arange(da.sizes[MEMBER])})
    attrs = {"baseline": name}
    if units:
        attrs["units"] = units
    return da.rename("precip").assign_attrs(attrs)


def _fill_nearest_2d(values: np.ndarray) -> np.ndarray:
    """Replace NaN cells of each 2-D field (last two axes) by the nearest finite cell."""
    out = np.array(values, dtype=np.float64, copy=True)
    flat = out.reshape(-1, *out.shape[-2:])
    for field in flat:
        bad = ~np.isfinite(field)
        if bad.any() and not bad.all():
            _, (iy, ix) = scipy.ndimage.distance_transform_edt(bad, return_indices=True)
            field[bad] = field[iy[bad], ix[bad]]
    return out


def interpolate(
    coarse: xr.DataArray,
    fine_grid: xr.DataArray | xr.Dataset,
    method: str = "linear",
    *,
    clip_min: float | None = 0.0,
    time_chunk: int = 16,
) -> xr.DataArray:
    """Bilinear (``linear``) or bicubic (``cubic``) interpolation of the coarse field to the fine
    grid (scipy ``interpn`` through xarray), extrapolating at the edges; values below ``clip_min``
    (cubic overshoot of a non-negative field) are clipped. NaN coarse cells (sea) are first filled
    from the nearest valid cell so that coastal pixels get values. One member, lazy (dask) over ``time_chunk`` days."""
    src = _to_fine_names(coarse)
    src = src.transpose(..., LAT, LON)
    src = src.copy(data=_fill_nearest_2d(src.values))
    if TIME in src.dims:  # lazy over time blocks: the fine fields of a long period stay on disk
        src = src.chunk({TIME: time_chunk})
    out = src.interp(
        {LAT: fine_grid[LAT].values, LON: fine_grid[LON].values},
        method=method,
        kwargs={"fill_value": _EXTRAPOLATE.get(method)},
    )
    if clip_min is not None:
        out = out.clip(min=clip_min)
    return _finish(out, fine_grid, coarse.attrs.get("units"), f"{method} interpolation")


def _nearest_index(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return np.abs(dst[:, None] - src[None, :]).argmin(axis=1)


def nearest_upsample(coarse: xr.DataArray, fine_grid: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """Each fine pixel takes the value of the nearest coarse cell centre (block upsampling)."""
    src = _to_fine_names(coarse)
    iy = _nearest_index(src[LAT].values, fine_grid[LAT].values)
    ix = _nearest_index(src[LON].values, fine_grid[LON].values)
    out = src.isel({LAT: xr.DataArray(iy, dims=LAT), LON: xr.DataArray(ix, dims=LON)})
    return _finish(out.drop_vars([LAT, LON]), fine_grid, coarse.attrs.get("units"), "nearest")


def _standardise(train: xr.Dataset, test: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Flatten every variable and grid point; z-score with the training mean and std."""
    rows_train, rows_test = [], []
    for var in train.data_vars:
        a = train[var].transpose(TIME, ...).values.reshape(train.sizes[TIME], -1)
        b = test[var].transpose(TIME, ...).values.reshape(test.sizes[TIME], -1)
        mean, std = np.nanmean(a, 0), np.nanstd(a, 0)
        std = np.where(std > 0, std, 1.0)
        rows_train.append((a - mean) / std)
        rows_test.append((b - mean) / std)
    return np.nan_to_num(np.hstack(rows_train)), np.nan_to_num(np.hstack(rows_test))


def analogs(
    predictors_train: xr.Dataset,
    fine_train: xr.DataArray,
    predictors_test: xr.Dataset,
    *,
    k: int = 16,
) -> xr.DataArray:
    """Analog ensemble (Zorita & von Storch 1999): for each test day, the ``k`` training days whose
    standardised coarse predictors are closest (Euclidean); their fine fields are the members
    (member 0 = closest analog). Deterministic."""
    n_train = predictors_train.sizes[TIME]
    if k > n_train:
        raise UserError(f"analogs k={k} exceeds the {n_train} training days; lower k")
    a, b = _standardise(predictors_train, predictors_test)
    d2 = (b**2).sum(1)[:, None] + (a**2).sum(1)[None, :] - 2.0 * b @ a.T
    nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(d2, nearest, 1).argsort(1)
    nearest = np.take_along_axis(nearest, order, 1)  # (test, k)
    idx = xr.DataArray(nearest.T, dims=(MEMBER, TIME))
    members = fine_train.isel({TIME: idx}).drop_vars(TIME, errors="ignore")
    members = members.assign_coords({TIME: predictors_test[TIME].values})
    out = _finish(members, fine_train, fine_train.attrs.get("units"), f"analogs k={k}")
    return out.assign_attrs(analog_dates=str(fine_train[TIME].values[nearest[:, 0]][:3]))


def spectral_slope(coarse: xr.DataArray) -> float:
    """Power-law slope alpha of the time-mean radially averaged PSD of the coarse fields,
    P(k) ~ k^-alpha, fitted in log-log over the resolved wavenumbers (RainFARM's slope)."""
    from downscale.evaluation.metrics.spectral import radial_psd

    psd = radial_psd(_to_fine_names(coarse).fillna(0.0)).mean(TIME)
    k = psd["wavenumber"].values.astype(float)
    p = psd.values
    ok = p > 0
    if ok.sum() < 2:
        raise UserError(
            "the coarse fields have no spectral power to fit a RainFARM slope; give slope="
        )
    return float(-np.polyfit(np.log(k[ok]), np.log(p[ok]), 1)[0])


def _lazy_days(
    draw: Callable[[int, int], np.ndarray],
    n_days: int,
    shape: tuple[int, ...],
    time_chunk: int,
) -> dask.array.Array:
    """(members, days, ...) drawn lazily in blocks of ``time_chunk`` days, ``draw(first, n)`` per
    block, so a long test period never sits in memory at once. ``draw`` seeds one generator per
    (seed, day position), so the draws do not depend on the chunking."""
    blocks = [
        dask.array.from_delayed(
            dask.delayed(draw)(lo, min(time_chunk, n_days - lo)),
            shape=(shape[0], min(time_chunk, n_days - lo), *shape[1:]),
            dtype=np.float32,
        )
        for lo in range(0, n_days, time_chunk)
    ]
    return dask.array.concatenate(blocks, axis=1)


def _gaussian_fields(rng: np.random.Generator, shape: tuple[int, ...], alpha: float) -> np.ndarray:
    """Unit-variance Gaussian fields with radially averaged PSD ~ |k|^-alpha and random phases."""
    ny, nx = shape[-2:]
    ky = np.fft.fftfreq(ny) * ny
    kx = np.fft.fftfreq(nx) * nx
    kk = np.hypot(ky[:, None], kx[None, :])
    amp = np.where(kk > 0, np.power(np.maximum(kk, 1e-12), -alpha / 2.0), 0.0)
    noise = rng.standard_normal(shape)
    g = np.fft.ifft2(np.fft.fft2(noise) * amp).real
    g -= g.mean(axis=(-2, -1), keepdims=True)
    std = g.std(axis=(-2, -1), keepdims=True)
    return g / np.where(std > 0, std, 1.0)


def rainfarm(
    coarse: xr.DataArray,
    fine_grid: xr.DataArray | xr.Dataset,
    *,
    n_members: int = 16,
    seed: int = 0,
    slope: float | None = None,
    time_chunk: int = 16,
) -> xr.DataArray:
    """RainFARM (Rebora et al. 2006) stochastic downscaling, lazy (dask) over ``time_chunk`` days.

    1. alpha = the coarse fields' spectral slope (:func:`spectral_slope`) unless ``slope`` is given;
    2. per member and day a unit-variance Gaussian field g on the fine grid with PSD ~ |k|^-alpha
       and random phases (the power law extrapolated to the unresolved scales);
    3. r = exp(g), then rescaled so that each coarse cell (the fine pixels nearest to its centre)
       keeps the coarse value as its mean: r * P_coarse / mean_cell(r).
    Simplification: the resolved large scales come from this rescaling, not from merging the
    coarse field's own Fourier modes (RainFARM's "smooth" variant). NaN coarse cells stay NaN.
    """
    src = _to_fine_names(coarse)
    alpha = float(slope) if slope is not None else float(np.clip(spectral_slope(coarse), 0.5, 6.0))
    ny, nx = fine_grid.sizes[LAT], fine_grid.sizes[LON]
    iy = _nearest_index(src[LAT].values, fine_grid[LAT].values)
    ix = _nearest_index(src[LON].values, fine_grid[LON].values)
    ncx = src.sizes[LON]
    cell = (iy[:, None] * ncx + ix[None, :]).ravel()
    n_cells = src.sizes[LAT] * ncx
    counts = np.bincount(cell, minlength=n_cells).astype(float)
    avg = scipy.sparse.csr_matrix(
        (1.0 / counts[cell], (np.arange(cell.size), cell)), shape=(cell.size, n_cells)
    )
    values = np.asarray(src.transpose(TIME, LAT, LON).values).reshape(src.sizes[TIME], n_cells)

    def days(first: int, n: int) -> np.ndarray:
        out = np.empty((n_members, n, ny * nx), dtype=np.float32)
        for i, coarse_day in enumerate(values[first : first + n]):
            rng = np.random.default_rng([seed, first + i])
            r = np.exp(_gaussian_fields(rng, (n_members, ny, nx), alpha)).reshape(n_members, -1)
            cell_mean = np.asarray(r @ avg)  # (members, cells)
            with np.errstate(invalid="ignore", divide="ignore"):
                factor = coarse_day[None, :] / cell_mean
            out[:, i] = r * factor[:, cell]
        return out.reshape(n_members, n, ny, nx)

    lazy = _lazy_days(days, len(values), (n_members, ny, nx), time_chunk)
    da = xr.DataArray(lazy, dims=(MEMBER, TIME, LAT, LON), coords={TIME: src[TIME].values})
    result = _finish(da, fine_grid, coarse.attrs.get("units"), "rainfarm")
    return result.assign_attrs(rainfarm_slope=alpha, seed=seed)


# ---- adapters over a dataset store (listed in conf/evaluation/default.yaml: baselines) ----


def _coarse(
    store: xr.Dataset, variable: str, times: Sequence, coarse: str | None = None
) -> xr.DataArray:
    """``coarse_<coarse>`` (default ``coarse_<variable>``) over ``times``: the coarse predictand, or
    a coarse predictor in the same units when the store names it differently (Iberia: NCEP ``pr``
    for the E-OBS ``precip``)."""
    name = f"coarse_{coarse or variable}"
    if name not in store.data_vars:
        raise UserError(
            f"the dataset store has no '{name}' for the {variable} baselines; "
            "build the store with the coarse predictand or drop these baselines"
        )
    return store[name].sel({TIME: times})


def interpolation_baseline(
    store: xr.Dataset,
    test_times,
    train_times=None,
    *,
    variable: str = "precip",
    method="linear",
    coarse: str | None = None,
) -> xr.DataArray:
    """Interpolated coarse predictand (or ``coarse_<coarse>``) over the test times (bilinear or
    bicubic)."""
    coarse = _coarse(store, variable, test_times, coarse)
    return interpolate(coarse.assign_attrs(units=store[variable].attrs.get("units")), store, method)


def nearest_baseline(
    store: xr.Dataset,
    test_times,
    train_times=None,
    *,
    variable: str = "precip",
    coarse: str | None = None,
) -> xr.DataArray:
    """Nearest (block) upsampled coarse predictand (or ``coarse_<coarse>``) over the test times."""
    coarse = _coarse(store, variable, test_times, coarse)
    return nearest_upsample(coarse.assign_attrs(units=store[variable].attrs.get("units")), store)


def analog_baseline(
    store: xr.Dataset,
    test_times,
    train_times,
    *,
    variable: str = "precip",
    k: int = 16,
    predictors: Sequence[str] | None = None,
    coarse_offsets: Sequence[int] = (0,),
) -> xr.DataArray:
    """Analogs from the training days using every ``coarse_*`` field (or ``predictors``), at the
    day's own time step and at ``coarse_offsets`` steps from it (as ``data.coarse_offsets``: where a
    step is missing from the store, the day's own predictors stand in)."""
    train, test = _shifted_predictors(
        store, train_times, test_times, predictors, coarse_offsets, "analogs"
    )
    return analogs(train, store[variable].sel({TIME: train_times}), test, k=k)


def _shifted_predictors(
    store: xr.Dataset,
    train_times,
    test_times,
    predictors: Sequence[str] | None,
    coarse_offsets: Sequence[int],
    baseline: str,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Every ``coarse_*`` field (or ``predictors``) at each of ``coarse_offsets`` time steps from
    the day (as ``data.coarse_offsets``: where a step is missing from the store, the day's own
    predictors stand in), over the training and the test times."""
    names = (
        list(predictors) if predictors else [v for v in store.data_vars if v.startswith("coarse_")]
    )
    if not names:
        raise UserError(
            f"the dataset store has no coarse_* predictors for {baseline}; drop {baseline}"
        )
    fields = store[names]
    coarse_offsets = time_offsets(coarse_offsets)
    table = time_offset_table(store[TIME].values, coarse_offsets)
    shifted = [
        fields.isel({TIME: rows})
        .assign_coords({TIME: store[TIME].values})
        .rename({name: f"{name}@{offset:+d}" for name in names})
        for offset, rows in zip(coarse_offsets, table, strict=True)
    ]
    predictors_all = xr.merge(shifted)
    train = predictors_all.sel({TIME: train_times}).load()
    test = predictors_all.sel({TIME: test_times}).load()
    return train, test


def ridge_baseline(
    store: xr.Dataset,
    test_times,
    train_times,
    *,
    variable: str = "precip",
    n_members: int = 16,
    power: float = 0.5,
    alphas: Sequence[float] = RIDGE_ALPHAS,
    predictors: Sequence[str] | None = None,
    coarse_offsets: Sequence[int] = (0,),
    coarse: str | None = None,
    powered: Sequence[str] | None = None,
    seed: int = 0,
) -> xr.DataArray:
    """:func:`ridge_ensemble` from every ``coarse_*`` field (or ``predictors``) at ``coarse_offsets``
    steps from the day, trained on ``train_times``. The ``powered`` predictors (default: the coarse
    predictand ``coarse_<coarse or variable>`` when the store has it) are raised to ``power`` like
    the target, so that the two relate linearly (on Iberia: CRPS 0.80 against 0.89 with NCEP pr
    as it is, docs/results.md)."""
    if powered is None:
        name = f"coarse_{coarse or variable}"
        powered = [name] if name in store.data_vars else []
    missing = sorted(set(powered) - set(store.data_vars))
    if missing:
        raise UserError(f"ridge powered= names {', '.join(missing)}, not in the dataset store")
    store = store.assign({name: store[name].clip(min=0.0) ** power for name in powered})
    train, test = _shifted_predictors(
        store, train_times, test_times, predictors, coarse_offsets, "ridge"
    )
    return ridge_ensemble(
        train,
        store[variable].sel({TIME: train_times}),
        test,
        n_members=n_members,
        power=power,
        alphas=alphas,
        seed=seed,
    )


def _column_blocks(n: int, size: int = 1 << 18) -> list[slice]:
    return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]


def _gcv_ridge(
    x: np.ndarray, y: np.ndarray, alphas: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression of centred ``y`` (n, p) on centred ``x`` (n, f) with the one penalty of
    ``alphas`` that minimises the generalised cross-validation error summed over the targets
    (Golub, Heath and Wahba 1979), from one SVD of ``x``. Returns the weights factorised as
    ``basis`` (f, k) @ ``coef`` (k, p), k = min(n, f): a wide fine grid never needs the f x p
    matrix, and the penalty."""
    u, sv, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    resid_outside = (y**2).sum() - (uty**2).sum()  # the part of y outside the span of x
    n = x.shape[0]
    best = None
    for alpha in alphas:
        shrink = sv**2 / (sv**2 + alpha)
        rss = resid_outside + (((1.0 - shrink)[:, None] * uty) ** 2).sum()
        gcv = rss / (n - 1 - shrink.sum()) ** 2  # one degree of freedom went to the centring
        if best is None or gcv < best[0]:
            best = (gcv, float(alpha), shrink)
    _, alpha, shrink = best
    return vt.T, (shrink / sv)[:, None] * uty, alpha


def ridge_ensemble(
    predictors_train: xr.Dataset,
    fine_train: xr.DataArray,
    predictors_test: xr.Dataset,
    *,
    n_members: int = 16,
    power: float = 0.5,
    alphas: Sequence[float] = RIDGE_ALPHAS,
    seed: int = 0,
    time_chunk: int = 16,
) -> xr.DataArray:
    """Statistical downscaling ensemble: a power-transformed, censored, heteroscedastic Gaussian
    regression (the classic model-output-statistics form; power 1/2 as Stidd 1973, std linear in
    the prediction as in Gneiting et al. 2005's EMOS).

    1. z = fine^``power`` per pixel, regressed on every standardised coarse predictor and grid point
       (as the analogs see them) by ridge regression, one penalty for all pixels chosen from
       ``alphas`` by generalised cross-validation;
    2. the error std s = a + b z_hat per pixel, least squares of |residual| sqrt(pi / 2) (the mean
       absolute value of a Gaussian of std s is s sqrt(2 / pi)) on the training days, floored at a
       tenth of the pixel's residual std;
    3. members z_hat + s e (e standard normal, one generator per (``seed``, day position)),
       censored at 0, raised to 1 / ``power``; lazy (dask) over ``time_chunk`` days.

    Pixels never observed on the training days are NaN.
    """
    if not 0 < power <= 1:
        raise UserError(f"ridge power must be in (0, 1], got {power}; e.g. power=0.5 (square root)")
    a, b = _standardise(predictors_train, predictors_test)
    shape = fine_train.shape[1:]
    obs = fine_train.transpose(TIME, ...).values.reshape(fine_train.sizes[TIME], -1)
    seen = np.isfinite(obs).any(0)
    z = np.where(np.isfinite(obs), np.maximum(obs, 0.0), 0.0) ** power
    del obs
    z_mean, a_mean = z.mean(0), a.mean(0)
    z -= z_mean
    basis, coef, alpha = _gcv_ridge(a - a_mean, z, alphas)
    train_proj, test_proj = (a - a_mean) @ basis, (b - a_mean) @ basis
    pred = np.empty((len(b), z.shape[1]), np.float32)
    std = np.empty_like(pred)
    for cols in _column_blocks(z.shape[1]):  # a wide grid never holds more than a block's copies
        fit = train_proj @ coef[:, cols]
        resid = z[:, cols] - fit
        spread = np.abs(resid) * np.sqrt(np.pi / 2.0)
        fit_c = fit - fit.mean(0)
        slope = (fit_c * (spread - spread.mean(0))).sum(0) / np.maximum((fit_c**2).sum(0), 1e-12)
        intercept = spread.mean(0) - slope * (fit.mean(0) + z_mean[cols])
        pred[:, cols] = test_proj @ coef[:, cols] + z_mean[cols]
        std[:, cols] = np.maximum(intercept + slope * pred[:, cols], 0.1 * resid.std(0))
    del z

    def days(first: int, n: int) -> np.ndarray:
        out = np.empty((n_members, n, pred.shape[1]), np.float32)
        for i in range(n):
            noise = np.random.default_rng([seed, first + i]).standard_normal(
                (n_members, pred.shape[1]), dtype=np.float32
            )
            day = np.maximum(pred[first + i] + std[first + i] * noise, 0.0) ** (1.0 / power)
            out[:, i] = np.where(seen, day, np.nan)
        return out.reshape(n_members, n, *shape)

    dims = (MEMBER, TIME, *fine_train.dims[1:])
    da = xr.DataArray(
        _lazy_days(days, len(pred), (n_members, *shape), time_chunk),
        dims=dims,
        coords={TIME: predictors_test[TIME].values},
    )
    out = _finish(da, fine_train, fine_train.attrs.get("units"), f"ridge ensemble k={n_members}")
    return out.assign_attrs(ridge_alpha=alpha, power=power, seed=seed)


def rainfarm_baseline(
    store: xr.Dataset,
    test_times,
    train_times=None,
    *,
    variable: str = "precip",
    n_members: int = 16,
    seed: int = 0,
    slope: float | None = None,
    coarse: str | None = None,
) -> xr.DataArray:
    """RainFARM on the coarse predictand (or ``coarse_<coarse>``) over the test times."""
    coarse = _coarse(store, variable, test_times, coarse).load()
    coarse = coarse.assign_attrs(units=store[variable].attrs.get("units"))
    return rainfarm(coarse, store, n_members=n_members, seed=seed, slope=slope)


def _factories(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    entries = cfg.get("baselines", cfg) if "baselines" in cfg else cfg
    return dict(instantiate(entries or {}))


def needs_training_days(fn: Any) -> bool:
    """True when a baseline factory has no default for ``train_times`` (e.g. analogs)."""
    param = inspect.signature(fn).parameters.get("train_times")
    return param is not None and param.default is inspect.Parameter.empty


def _call(fn: Any, store: xr.Dataset, test_times, train_times, variable: str | None):
    extra = {}
    if variable is not None and "variable" in inspect.signature(fn).parameters:
        extra["variable"] = variable
    return fn(store, test_times=test_times, train_times=train_times, **extra)


def compute_baselines(
    store: xr.Dataset,
    test_times: Sequence,
    train_times: Sequence,
    cfg: DictConfig | Mapping[str, Any],
) -> dict[str, xr.DataArray]:
    """Every baseline in ``cfg.baselines`` (an evaluation config) or in ``cfg`` itself (a mapping
    name -> ``_target_`` + ``_partial_`` entry), computed on ``test_times``."""
    return {
        name: _call(fn, store, test_times, train_times, None)
        for name, fn in _factories(cfg).items()
    }


def available_baselines(
    store: xr.Dataset,
    test_times: Sequence,
    train_times: Sequence | None,
    cfg: DictConfig | Mapping[str, Any],
    *,
    variable: str | None = None,
    why_no_training_days: str = "the samples store records no training days",
) -> tuple[dict[str, xr.DataArray], dict[str, str]]:
    """Like :func:`compute_baselines`, but a baseline that cannot be computed is skipped with the
    reason instead of stopping the evaluation: one needing training days when ``train_times`` is
    None, or one the store cannot feed (its :class:`UserError`, e.g. no ``coarse_<var>``).

    Returns ``(baselines, skipped)``, ``skipped`` mapping ``baseline <name>`` to the reason.
    """
    out: dict[str, xr.DataArray] = {}
    skipped: dict[str, str] = {}
    for name, fn in _factories(cfg).items():
        if train_times is None and needs_training_days(fn):
            skipped[f"baseline {name}"] = f"needs the training days; {why_no_training_days}"
            continue
        try:
            out[name] = _call(fn, store, test_times, train_times, variable)
        except UserError as exc:
            skipped[f"baseline {name}"] = str(exc)
    return out, skipped
