"""Embedded default data: deterministic, precipitation-like fields that need no download.

A static terrain field; a latent Gaussian random field with a power-law spectrum that is advected and
renewed from day to day (an AR(1) process in Fourier space); precipitation that is intermittent and
heavy-tailed, enhanced over high terrain and where a smooth large-scale humidity proxy is high. Coarse
predictors are conservative (area-weighted) coarse-grainings of precipitation and humidity. The result
follows the dataset-store schema in docs/architecture.md and is cached as zarr.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from downscale.utils.atomic import atomic_path
from downscale.utils.errors import require


def power_law_field(
    rng: np.random.Generator, shape: tuple[int, int], slope: float, n: int = 1
) -> np.ndarray:
    """White noise shaped to an isotropic power spectrum P(k) ~ k^-slope, unit variance per field."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = np.inf
    amplitude = k ** (-slope / 2.0)
    noise = rng.standard_normal((n, *shape))
    field = np.fft.ifft2(np.fft.fft2(noise) * amplitude).real
    field -= field.mean(axis=(-2, -1), keepdims=True)
    return field / field.std(axis=(-2, -1), keepdims=True)


def advected_fields(
    rng: np.random.Generator,
    n_days: int,
    shape: tuple[int, int],
    slope: float,
    memory: float,
    wind: tuple[float, float],
) -> np.ndarray:
    """A sequence of power-law fields, each the previous one advected by ``wind`` (pixels/day) plus
    fresh noise: F_t = a * shift(F_{t-1}) + sqrt(1 - a^2) * eps_t (stationary unit variance)."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    shift = np.exp(-2j * np.pi * (ky * wind[0] + kx * wind[1]))
    innovations = power_law_field(rng, shape, slope, n_days)
    out = np.empty((n_days, *shape))
    out[0] = innovations[0]
    spectrum = np.fft.fft2(out[0])
    for t in range(1, n_days):
        spectrum = memory * spectrum * shift + np.sqrt(1 - memory**2) * np.fft.fft2(innovations[t])
        out[t] = np.fft.ifft2(spectrum).real
    return out


def cell_area_weights(lat: np.ndarray) -> np.ndarray:
    """Relative area of regular lat/lon cells: proportional to cos(latitude)."""
    return np.cos(np.deg2rad(lat))


def coarse_grain(field: np.ndarray, lat: np.ndarray, factor: int) -> np.ndarray:
    """Conservative (area-weighted) block mean of (..., lat, lon) by ``factor`` on a regular grid."""
    *lead, ny, nx = field.shape
    w = cell_area_weights(lat)[:, None] * np.ones(nx)[None, :]
    blocks = (field * w).reshape(*lead, ny // factor, factor, nx // factor, factor)
    wblocks = w.reshape(ny // factor, factor, nx // factor, factor)
    return blocks.sum(axis=(-3, -1)) / wblocks.sum(axis=(-3, -1))


def generate(
    n_days: int = 730,
    size: int = 64,
    factor: int = 4,
    seed: int = 0,
    resolution: float = 0.1,
    lat0: float = 38.0,
    lon0: float = -4.0,
    start: str = "2000-01-01",
    sea_fraction: float = 0.12,
) -> xr.Dataset:
    """Generate the synthetic dataset store contents (see module docstring)."""
    require(size % factor == 0, f"synthetic size {size} is not a multiple of factor {factor}")
    require(n_days >= 4, f"synthetic n_days={n_days} is too small; use at least 4")
    rng = np.random.default_rng(seed)
    shape = (size, size)
    lat = lat0 + resolution * (np.arange(size) + 0.5)
    lon = lon0 + resolution * (np.arange(size) + 0.5)

    terrain = power_law_field(rng, shape, slope=4.0)[0]
    terrain = (terrain - terrain.min()) / (terrain.max() - terrain.min())
    sea = terrain < np.quantile(terrain, sea_fraction)
    elevation = np.where(sea, 0.0, 2500.0 * terrain)

    storms = advected_fields(rng, n_days, shape, slope=2.5, memory=0.6, wind=(0.7, 2.3))
    humidity = advected_fields(rng, n_days, shape, slope=5.0, memory=0.85, wind=(0.2, 1.0))
    seasonal = 0.4 * np.sin(2 * np.pi * np.arange(n_days) / 365.25)[:, None, None]

    # Precipitation: wet where the storm field exceeds a threshold lowered by humidity and terrain;
    # intensity grows exponentially with the excess (heavy tail), as mm/day.
    drive = storms + 0.7 * humidity + 1.2 * terrain[None] + seasonal
    excess = np.clip(drive - 1.2, 0.0, None)
    precip = 4.0 * np.expm1(1.0 * excess)
    precip = np.where(sea[None], np.nan, precip).astype(np.float32)

    specific_humidity = (6.0 + 2.0 * humidity + 1.5 * seasonal).astype(np.float32)  # g/kg proxy
    precip_for_coarse = np.where(sea[None], 0.0, precip)
    coarse_precip = coarse_grain(precip_for_coarse, lat, factor).astype(np.float32)
    coarse_humidity = coarse_grain(specific_humidity, lat, factor).astype(np.float32)
    lat_c = coarse_grain(lat[None, :, None].repeat(factor, -1), lat, factor)[0, :, 0]
    lon_c = lon0 + resolution * factor * (np.arange(size // factor) + 0.5)

    time = pd.date_range(start, periods=n_days, freq="D")
    ds = xr.Dataset(
        {
            "precip": (
                ("time", "lat", "lon"),
                precip,
                {"units": "mm/day", "long_name": "precipitation"},
            ),
            "coarse_precip": (
                ("time", "lat_coarse", "lon_coarse"),
                coarse_precip,
                {"units": "mm/day", "long_name": "precipitation, conservative coarse-graining"},
            ),
            "coarse_humidity": (
                ("time", "lat_coarse", "lon_coarse"),
                coarse_humidity,
                {"units": "g/kg", "long_name": "specific humidity proxy, coarse"},
            ),
            "static_terrain": (("lat", "lon"), elevation.astype(np.float32), {"units": "m"}),
            "valid_mask": (("lat", "lon"), (~sea).astype(np.uint8), {"long_name": "land mask"}),
        },
        coords={
            "time": time,
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
            "lat_coarse": ("lat_coarse", lat_c, {"units": "degrees_north"}),
            "lon_coarse": ("lon_coarse", lon_c, {"units": "degrees_east"}),
        },
    )
    ds.attrs.update(
        source="downscale synthetic generator",
        regridding="conservative area-weighted block mean",
        build_config=json.dumps(
            {"n_days": n_days, "size": size, "factor": factor, "seed": seed, "start": start}
        ),
    )
    return ds


def synthetic_store(cache_dir: str | Path, **params: object) -> str:
    """Path of the cached synthetic store for ``params``, generating and writing it once if needed."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = Path(cache_dir) / "synthetic" / f"synthetic-{key}.zarr"
    if not path.exists():
        ds = generate(**params)  # type: ignore[arg-type]
        chunks = {"time": 64}
        with atomic_path(path) as tmp:
            # zarr v3 has no consolidated metadata in its spec; a store has few arrays, so listing is cheap.
            ds.chunk(chunks).to_zarr(tmp, consolidated=False, zarr_format=3)
    return str(path)
