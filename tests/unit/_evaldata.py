"""Small synthetic fields shared by the evaluation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr


def fields(
    members: int = 4, days: int = 6, size: int = 32, seed: int = 0, start: str = "2000-01-01"
) -> tuple[xr.DataArray, xr.DataArray]:
    """Gamma "precipitation": samples (member, time, lat, lon) and obs (time, lat, lon)."""
    rng = np.random.default_rng(seed)
    coords = {
        "time": pd.date_range(start, periods=days),
        "lat": 30 + 0.1 * np.arange(size),
        "lon": -110 + 0.1 * np.arange(size),
    }
    obs = xr.DataArray(
        rng.gamma(0.5, 4.0, (days, size, size)),
        dims=("time", "lat", "lon"),
        coords=coords,
        attrs={"units": "mm/day"},
        name="precip",
    )
    samples = xr.DataArray(
        rng.gamma(0.5, 4.0, (members, days, size, size)),
        dims=("member", "time", "lat", "lon"),
        coords=coords,
        attrs={"units": "mm/day"},
        name="precip",
    )
    return samples, obs


def mask_like(obs: xr.DataArray, corner: int = 5) -> xr.DataArray:
    """Valid everywhere except a ``corner`` x ``corner`` block."""
    m = xr.ones_like(obs.isel(time=0, drop=True), dtype=bool)
    m[:corner, :corner] = False
    return m


def shared_data_root():
    """``$DOWNSCALE_DATA_ROOT`` or ``<repo>/../shared/data``; None when absent (error under CI)."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    root = Path(os.environ.get("DOWNSCALE_DATA_ROOT", repo.parent / "shared" / "data"))
    if root.is_dir():
        return root
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true but the shared data folder {root} is missing")
    return None
