"""Radially averaged PSD and RALSD."""

from __future__ import annotations

import numpy as np
import pytest

from downscale.evaluation.metrics import spectral
from tests.unit._evaldata import fields


def _radial_brute(field: np.ndarray) -> np.ndarray:
    m, n = field.shape
    p = np.abs(np.fft.fftshift(np.fft.fft2(field))) ** 2 / (m * n)
    out = []
    for r in range(1, min(m, n) // 2 + 1):
        vals = [
            p[i, j]
            for i in range(m)
            for j in range(n)
            if int(np.floor(np.hypot(i - m // 2, j - n // 2))) == r
        ]
        out.append(np.mean(vals))
    return np.array(out)


def test_radial_psd_matches_brute_force():
    _, obs = fields(size=16, days=2)
    got = spectral.radial_psd(obs).values
    for t in range(2):
        np.testing.assert_allclose(got[t], _radial_brute(obs.values[t]), rtol=1e-10)


def test_cosine_peaks_at_its_wavenumber():
    _, obs = fields(size=32, days=1)
    j = np.arange(32)
    obs[:] = np.cos(2 * np.pi * 5 * j / 32)[None, None, :]
    psd = spectral.radial_psd(obs).isel(time=0)
    assert int(psd.idxmax()) == 5


def test_ralsd_zero_for_identical_and_analytic_for_scaled():
    samples, obs = fields(size=32)
    same = obs.expand_dims(member=3)
    assert float(spectral.ralsd(same, obs)) == pytest.approx(0.0, abs=1e-9)
    # scaling by c multiplies every PSD by c^2: |10 log10(1/c^2)| = 20 |log10 c| dB
    assert float(spectral.ralsd(2.0 * same, obs)) == pytest.approx(20 * np.log10(2.0))
    assert float(spectral.spectral_crps(same, obs)) == pytest.approx(0.0, abs=1e-9)
    assert float(spectral.ralsd(samples, obs)) > 0.5


def test_ralsd_ignores_dry_days_and_works_lazily():
    samples, obs = fields(size=32, days=4)
    same = obs.expand_dims(member=2).copy()
    obs[0] = 0.0  # a dry day: excluded whatever the samples say there
    assert float(spectral.ralsd(same, obs)) == pytest.approx(0.0, abs=1e-9)
    lazy = spectral.ralsd(samples.chunk(time=1), obs.chunk(time=1), threshold=0.02)
    assert float(lazy.compute()) == pytest.approx(float(spectral.ralsd(samples, obs)))
