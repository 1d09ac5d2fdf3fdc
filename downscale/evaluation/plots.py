"""Figures for the evaluation report. Each figure function is ``fn(ctx, path)`` and writes one PNG.

The evaluation config lists them as ``_target_`` + ``_partial_`` entries; a figure reuses a metric
array from ``ctx.results`` when the scorecard computed it, otherwise it computes what it needs on a
small subset. Maps get coastlines with cartopy when it is installed, plain axes otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from downscale.evaluation.metrics import calibration, spectral  # noqa: E402
from downscale.evaluation.metrics._common import MEMBER, TIME, apply_mask, spatial_dims  # noqa: E402

try:  # optional dependency
    import cartopy.crs as ccrs  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    ccrs = None


@dataclass
class FigureContext:
    """What a figure function may use: the aligned inputs and the computed metric arrays."""

    samples: xr.DataArray
    obs: xr.DataArray
    mask: xr.DataArray | None = None
    results: dict[str, xr.DataArray] = field(default_factory=dict)
    baselines: dict[str, xr.DataArray] = field(default_factory=dict)
    units: str = ""
    name: str = "model"


def _is_latlon(da: xr.DataArray) -> bool:
    return spatial_dims(da) == ("lat", "lon") and "lat" in da.coords and "lon" in da.coords


def _map_axes(fig, nrows: int, ncols: int, index: int, da: xr.DataArray):
    if ccrs is not None and _is_latlon(da):
        ax = fig.add_subplot(nrows, ncols, index, projection=ccrs.PlateCarree())
        ax.coastlines(linewidth=0.5)
        return ax, {"transform": ccrs.PlateCarree()}
    return fig.add_subplot(nrows, ncols, index), {}


def _imshow(ax, da: xr.DataArray, extra: dict, **kwargs):
    ydim, xdim = spatial_dims(da)
    if _is_latlon(da):
        return ax.pcolormesh(
            da[xdim].values, da[ydim].values, da.values, shading="auto", **extra, **kwargs
        )
    return ax.imshow(da.values, origin="lower", **kwargs)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _wettest_days(ctx: FigureContext, n: int) -> list[int]:
    dm = apply_mask(ctx.obs, ctx.mask).mean(list(spatial_dims(ctx.obs))).compute().values
    order = np.argsort(np.nan_to_num(dm, nan=-np.inf))[::-1]
    return sorted(int(i) for i in order[:n])


def sample_panels(ctx: FigureContext, path: Path, *, n_days: int = 3, n_members: int = 3) -> None:
    """Truth and a few members on the wettest days (rows: days; columns: truth, members)."""
    days = _wettest_days(ctx, n_days)
    members = min(n_members, ctx.samples.sizes[MEMBER])
    obs = apply_mask(ctx.obs.isel({TIME: days}), ctx.mask).compute()
    smp = apply_mask(ctx.samples.isel({TIME: days, MEMBER: slice(0, members)}), ctx.mask).compute()
    vmax = float(np.nanpercentile(obs.values, 99.5)) or 1.0
    ncols = members + 1
    fig = plt.figure(figsize=(2.6 * ncols, 2.3 * len(days)))
    for r, _ in enumerate(days):
        panels = [("truth", obs.isel({TIME: r}))]
        panels += [(f"member {m}", smp.isel({TIME: r, MEMBER: m})) for m in range(members)]
        for c, (title, da) in enumerate(panels):
            ax, extra = _map_axes(fig, len(days), ncols, r * ncols + c + 1, da)
            im = _imshow(ax, da, extra, vmin=0, vmax=vmax, cmap="Blues")
            ax.set_title(
                f"{title} {str(obs[TIME].values[r])[:10] if TIME in obs.coords else r}", fontsize=7
            )
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes, shrink=0.6, label=ctx.units)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _wettest_window(ctx: FigureContext, n: int) -> int:
    """Start of the ``n`` consecutive days with the largest summed observed domain mean."""
    dm = apply_mask(ctx.obs, ctx.mask).mean(list(spatial_dims(ctx.obs))).compute().values
    totals = np.convolve(np.nan_to_num(dm), np.ones(n), mode="valid")
    return int(np.argmax(totals))


def time_lapse(ctx: FigureContext, path: Path, *, n_days: int = 5, n_members: int = 2) -> None:
    """Five consecutive days (columns) of the truth and two members (rows), in the wettest window
    of ``n_days`` days, on one colour scale: does the model move the rain like the truth?"""
    n = min(n_days, ctx.obs.sizes[TIME])
    start = _wettest_window(ctx, n)
    days = slice(start, start + n)
    members = min(n_members, ctx.samples.sizes[MEMBER])
    obs = apply_mask(ctx.obs.isel({TIME: days}), ctx.mask).compute()
    smp = apply_mask(ctx.samples.isel({TIME: days, MEMBER: slice(0, members)}), ctx.mask).compute()
    vmax = float(np.nanpercentile(obs.values, 99.5)) or 1.0
    rows = [("truth", obs)] + [(f"member {m}", smp.isel({MEMBER: m})) for m in range(members)]
    fig = plt.figure(figsize=(2.3 * n + 1, 2.2 * len(rows)))
    for r, (label, field_) in enumerate(rows):
        for c in range(n):
            da = field_.isel({TIME: c})
            ax, extra = _map_axes(fig, len(rows), n, r * n + c + 1, da)
            im = _imshow(ax, da, extra, vmin=0, vmax=vmax, cmap="Blues")
            day = str(obs[TIME].values[c])[:10] if TIME in obs.coords else str(c)
            ax.set_title(f"{label} {day}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes, shrink=0.6, label=ctx.units)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def annual_max_days(obs: xr.DataArray, mask: xr.DataArray | None = None) -> np.ndarray:
    """Indices of the day with the largest observed domain mean in each year (the whole period
    counts as one year without a datetime time axis)."""
    dm = apply_mask(obs, mask).mean(list(spatial_dims(obs))).compute()
    values = np.nan_to_num(dm.values, nan=-np.inf)
    if TIME in dm.coords and np.issubdtype(dm[TIME].dtype, np.datetime64):
        years = dm[TIME].dt.year.values
    else:
        years = np.zeros(dm.sizes[TIME], dtype=int)
    return np.array(
        [np.flatnonzero(years == y)[np.argmax(values[years == y])] for y in np.unique(years)]
    )


def annual_max_day_bias(
    samples: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    days: np.ndarray | None = None,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Ensemble-mean bias maps (data units, percent) over the annual-maximum ``days``
    (default :func:`annual_max_days`)."""
    from downscale.evaluation.metrics.climatology import bias_map

    days = annual_max_days(obs, mask) if days is None else days
    smp, sub = samples.isel({TIME: days}), obs.isel({TIME: days})
    return (
        bias_map(smp, sub, mask).compute(),
        bias_map(smp, sub, mask, relative=True).compute(),
    )


def annual_max_bias_maps(ctx: FigureContext, path: Path) -> None:
    """Bias of the ensemble mean on the observed annual-maximum days (the wettest domain-mean day
    of each year), averaged over those days: absolute (data units) and percent of the observed
    mean on those days."""
    days = annual_max_days(ctx.obs, ctx.mask)
    absolute, relative = annual_max_day_bias(ctx.samples, ctx.obs, ctx.mask, days)
    fig = plt.figure(figsize=(9, 3.6))
    for i, (da, label) in enumerate([(absolute, f"bias [{ctx.units}]"), (relative, "bias [%]")]):
        ax, extra = _map_axes(fig, 1, 2, i + 1, da)
        lim = float(np.nanpercentile(np.abs(da.values), 98)) if np.isfinite(da.values).any() else 0
        im = _imshow(ax, da, extra, cmap="BrBG", vmin=-(lim or 1.0), vmax=lim or 1.0)
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
        ax.set_title(f"{label} on {len(days)} annual-maximum days", fontsize=9)
    _save(fig, path)


def _grid_km(da: xr.DataArray) -> float | None:
    ydim, _ = spatial_dims(da)
    if ydim not in da.coords or da.sizes[ydim] < 2:
        return None
    step = float(np.abs(np.diff(da[ydim].values)).mean())
    return step * 111.2 if _is_latlon(da) else step / 1000.0 if step > 100 else step


def spectra(ctx: FigureContext, path: Path, *, threshold: float = 0.02) -> None:
    """Mean radially averaged PSD of truth, samples and baselines against wavelength (km or px)."""
    curves = {"truth": None, ctx.name: None}
    mean = ctx.results.get("spectra")
    if mean is None:
        mean = spectral.mean_spectra(ctx.samples, ctx.obs, ctx.mask, threshold=threshold).compute()
    curves["truth"], curves[ctx.name] = mean.sel(source="obs"), mean.sel(source="samples")
    for name, da in ctx.baselines.items():
        curves[name] = (
            spectral.mean_spectra(da, ctx.obs, ctx.mask, threshold=threshold)
            .sel(source="samples")
            .compute()
        )
    ydim, xdim = spatial_dims(ctx.obs)
    size = min(ctx.obs.sizes[ydim], ctx.obs.sizes[xdim])
    dx = _grid_km(ctx.obs)
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, psd in curves.items():
        wavelength = size / psd[spectral.WAVENUMBER].values * (dx or 1.0)
        ax.loglog(wavelength, psd.values, label=name, lw=2 if name in ("truth", ctx.name) else 1)
    ax.invert_xaxis()
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("wavelength [km]" if dx else "wavelength [px]")
    ax.set_ylabel("PSD")
    ax.legend(fontsize=7)
    _save(fig, path)


def bias_maps(ctx: FigureContext, path: Path) -> None:
    """Time-mean bias map (absolute, in data units) and percent bias map of the ensemble mean."""
    from downscale.evaluation.metrics.climatology import bias_map

    absolute = ctx.results.get("bias_map")
    relative = ctx.results.get("bias_map_rel")
    if absolute is None or relative is None:
        absolute = bias_map(ctx.samples, ctx.obs, ctx.mask).compute()
        relative = bias_map(ctx.samples, ctx.obs, ctx.mask, relative=True).compute()
    fig = plt.figure(figsize=(9, 3.6))
    for i, (da, label) in enumerate([(absolute, f"bias [{ctx.units}]"), (relative, "bias [%]")]):
        ax, extra = _map_axes(fig, 1, 2, i + 1, da)
        lim = float(np.nanpercentile(np.abs(da.values), 98)) or 1.0
        im = _imshow(ax, da, extra, cmap="BrBG", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
        ax.set_title(label, fontsize=9)
    _save(fig, path)


def rank_histograms(ctx: FigureContext, path: Path) -> None:
    """Rank histograms per observed-intensity bin (normalised frequencies)."""
    counts = ctx.results.get("rank_histogram")
    if counts is None:
        counts = calibration.rank_histogram(ctx.samples, ctx.obs, ctx.mask).compute()
    bins = counts["bin"].values
    fig, axes = plt.subplots(1, len(bins), figsize=(2.4 * len(bins), 2.4), squeeze=False)
    for ax, b in zip(axes[0], bins, strict=True):
        c = counts.sel(bin=b).values.astype(float)
        freq = c / c.sum() if c.sum() else c
        ax.bar(np.arange(len(c)), freq, color="tab:blue")
        ax.axhline(1.0 / len(c), color="k", lw=0.8, ls="--")
        ax.set_title(f"{b} (n={int(c.sum())})", fontsize=8)
        ax.set_xlabel("rank")
    _save(fig, path)


def reliability(ctx: FigureContext, path: Path) -> None:
    """Reliability diagram per threshold: observed frequency against forecast probability."""
    rel = ctx.results.get("reliability")
    if rel is None:
        rel = calibration.reliability(ctx.samples, ctx.obs, ctx.mask).compute()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for t in rel["threshold"].values:
        r = rel.sel(threshold=t)
        ax.plot(
            r.sel(quantity="forecast").values,
            r.sel(quantity="observed").values,
            "o-",
            ms=3,
            label=f"> {t:g} {ctx.units}",
        )
    ax.set_xlabel("forecast probability")
    ax.set_ylabel("observed frequency")
    ax.legend(fontsize=7)
    _save(fig, path)


def distributions(
    ctx: FigureContext, path: Path, *, bins: int = 50, lo: float = 0.5, hi: float = 200.0
) -> None:
    """log10 densities (log x) and the CDF over [lo, hi] of truth, samples and baselines, from
    histograms computed chunk by chunk (bounded memory)."""
    from downscale.evaluation.metrics.distribution import log_density

    curves = {}
    dens = ctx.results.get("log_density")
    if dens is None or dens.sizes["bin"] != bins:
        dens = log_density(ctx.samples, ctx.obs, ctx.mask, bins=bins, value_range=(lo, hi))
        dens = dens.compute()
    curves["truth"], curves[ctx.name] = dens.sel(source="obs"), dens.sel(source="samples")
    for name, da in ctx.baselines.items():
        b = log_density(da, ctx.obs, ctx.mask, bins=bins, value_range=(lo, hi))
        curves[name] = b.sel(source="samples").compute()
    edges = np.logspace(np.log10(lo), np.log10(hi), bins + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, d in curves.items():
        centres = d["bin"].values
        ax1.semilogx(centres, d.values, label=name)
        mass = np.nan_to_num(10.0**d.values) * np.diff(edges)
        ax2.semilogx(edges[1:], np.cumsum(mass) / max(mass.sum(), 1e-300), label=name)
    ax1.set_xlabel(f"value [{ctx.units}]")
    ax1.set_ylabel("log10 density")
    ax2.set_xlabel(f"value [{ctx.units}]")
    ax2.set_ylabel(f"CDF within [{lo:g}, {hi:g}]")
    ax1.legend(fontsize=7)
    _save(fig, path)


def domain_mean_scatter(ctx: FigureContext, path: Path) -> None:
    """Daily domain means: ensemble mean against truth, with R^2 and the 1:1 line."""
    space = list(spatial_dims(ctx.obs))
    o = apply_mask(ctx.obs, ctx.mask).mean(space).compute().values
    s = apply_mask(ctx.samples, ctx.mask).mean(space).compute()
    m = s.mean(MEMBER).values
    ok = np.isfinite(o) & np.isfinite(m)
    r2 = np.corrcoef(o[ok], m[ok])[0, 1] ** 2 if ok.sum() > 2 else np.nan
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.errorbar(o, m, yerr=s.std(MEMBER).values, fmt="o", ms=3, alpha=0.6, elinewidth=0.5)
    top = float(np.nanmax([o.max(), m.max()])) if ok.any() else 1.0
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    ax.set_xlabel(f"observed domain mean [{ctx.units}]")
    ax.set_ylabel(f"ensemble-mean domain mean [{ctx.units}]")
    ax.set_title(f"R$^2$ = {r2:.3f}", fontsize=9)
    _save(fig, path)


def annual_maxima(ctx: FigureContext, path: Path) -> None:
    """Annual maxima of the domain mean: observed against each member (box per year)."""
    from downscale.evaluation.metrics.extremes import annual_maxima as annual_max

    am = ctx.results.get("annual_maxima")
    if am is None:
        am = annual_max(ctx.samples, ctx.obs, ctx.mask).compute()
    years = am["year"].values
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(years) + 2), 3.6))
    ax.boxplot(
        am.sel(source="samples").transpose("year", MEMBER).values.T, positions=np.arange(len(years))
    )
    ax.plot(
        np.arange(len(years)),
        am.sel(source="obs").isel({MEMBER: 0}).values,
        "r*",
        ms=9,
        label="observed",
    )
    ax.set_xticks(np.arange(len(years)), [str(y) for y in years], rotation=45, fontsize=7)
    ax.set_ylabel(f"annual max domain mean [{ctx.units}]")
    ax.legend(fontsize=7)
    _save(fig, path)
