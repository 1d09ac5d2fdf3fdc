"""Extra pieces of the skill benchmark: the climatological-ensemble anchor and the distribution
summary used to compare GCM-driven downscaling with observations (unpaired days)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from downscale.evaluation.metrics.spectral import radial_psd

MEMBER, TIME = "member", "time"
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def climatology_baseline(
    store: xr.Dataset,
    test_times: Sequence,
    train_times: Sequence,
    *,
    variable: str = "precip",
    k: int = 16,
    seed: int = 0,
) -> xr.DataArray:
    """Climatological ensemble: for each test day, ``k`` training days drawn at random (without
    replacement) from the same calendar month; their observed fields are the members. The
    reference's zero-skill ensemble (no predictor information)."""
    train = store[variable].sel({TIME: list(train_times)})
    months = train[TIME].dt.month.values
    test_index = xr.DataArray(np.asarray(test_times), dims=TIME)
    rng = np.random.default_rng(seed)
    picks = np.empty((k, len(test_times)), dtype=int)
    for i, month in enumerate(test_index.dt.month.values):
        pool = np.flatnonzero(months == month)
        picks[:, i] = rng.choice(pool, size=k, replace=False)
    fields = train.load().values[picks]  # (member, time, lat, lon)
    return xr.DataArray(
        fields,
        dims=(MEMBER, TIME, *train.dims[1:]),
        coords={
            MEMBER: np.arange(k),
            TIME: np.asarray(test_times),
            **{d: train[d] for d in train.dims[1:]},
        },
        name=variable,
        attrs={**train.attrs, "baseline": f"climatology k={k}"},
    )


def distribution_summary(
    field: xr.DataArray, mask: xr.DataArray, reference: xr.DataArray, wet: float = 1.0
) -> dict[str, float]:
    """Mean, wet-day frequency (>= ``wet``), quantiles of all valid values (members pooled), and
    the spectral distance to ``reference``: RMS over wavenumbers of 10 log10 of the ratio of the
    time-mean radially averaged PSDs (days need not match: a distributional comparison)."""
    values = field.where(mask).values
    values = values[np.isfinite(values)]
    out = {
        "mean": float(values.mean()),
        "wet_day_frequency": float((values >= wet).mean()),
        **{f"q{100 * q:g}": float(np.quantile(values, q)) for q in QUANTILES},
    }
    psd = radial_psd(field, mask)
    psd = psd.mean([d for d in psd.dims if d != "wavenumber"])
    ref = radial_psd(reference, mask)
    ref = ref.mean([d for d in ref.dims if d != "wavenumber"])
    ratio = 10 * np.log10(np.maximum(psd.values, 1e-12) / np.maximum(ref.values, 1e-12))
    out["spectral_rms_db"] = float(np.sqrt(np.mean(ratio**2)))
    out["psd"] = [float(v) for v in psd.values]
    return out
