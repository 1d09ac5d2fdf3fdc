import numpy as np
import pytest

from downscale.data.synthetic import coarse_grain, generate, power_law_field, synthetic_store


def test_generate_is_deterministic_and_follows_the_store_schema():
    a, b = (
        generate(n_days=8, size=32, factor=4, seed=3),
        generate(n_days=8, size=32, factor=4, seed=3),
    )
    np.testing.assert_array_equal(a.precip.values, b.precip.values)
    assert a.precip.dims == ("time", "lat", "lon")
    assert a.coarse_precip.dims == ("time", "lat_coarse", "lon_coarse")
    assert a.coarse_precip.shape == (8, 8, 8)
    assert a.static_terrain.dims == ("lat", "lon")
    assert a.valid_mask.dims == ("lat", "lon")
    assert a.precip.attrs["units"] == "mm/day"
    assert not np.array_equal(a.precip.values, generate(n_days=8, size=32, seed=4).precip.values)


def test_precipitation_is_intermittent_heavy_tailed_and_masked():
    ds = generate(n_days=120, size=64, factor=4, seed=0)
    p = ds.precip.values
    valid = ds.valid_mask.values.astype(bool)
    assert np.isnan(p[:, ~valid]).all() and np.isfinite(p[:, valid]).all()
    values = p[:, valid]
    wet = values > 0.1
    assert 0.1 < wet.mean() < 0.6  # many dry pixels
    assert (values >= 0).all()
    # heavy tail: the 99th percentile is far above the wet-day median
    assert np.quantile(values, 0.99) > 5 * np.median(values[wet])


def test_rain_is_enhanced_over_high_terrain():
    ds = generate(n_days=200, size=64, seed=1)
    valid = ds.valid_mask.values.astype(bool)
    terrain = ds.static_terrain.values[valid]
    mean_precip = ds.precip.mean("time").values[valid]
    high, low = terrain > np.quantile(terrain, 0.75), terrain < np.quantile(terrain, 0.25)
    assert mean_precip[high].mean() > 1.5 * mean_precip[low].mean()


def test_coarse_predictand_is_the_area_weighted_block_mean():
    lat = np.array([10.0, 20.0, 30.0, 40.0])
    field = np.arange(16.0).reshape(1, 4, 4)
    out = coarse_grain(field, lat, 2)
    w = np.cos(np.deg2rad(lat[:2]))
    expected = (
        w[0] * (field[0, 0, 0] + field[0, 0, 1]) + w[1] * (field[0, 1, 0] + field[0, 1, 1])
    ) / (2 * w.sum())
    assert out.shape == (1, 2, 2)
    assert out[0, 0, 0] == pytest.approx(expected)


def test_power_law_field_has_the_requested_spectral_slope():
    rng = np.random.default_rng(0)
    field = power_law_field(rng, (128, 128), slope=3.0, n=16)
    psd = (np.abs(np.fft.fft2(field)) ** 2).mean(0)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128), indexing="ij"))
    band = (k > 0.02) & (k < 0.3)
    slope = np.polyfit(np.log(k[band]), np.log(psd[band]), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.25)


def test_store_is_written_once_and_reused(tmp_path):
    path = synthetic_store(tmp_path, n_days=6, size=16, factor=4)
    stamp = (tmp_path / "synthetic").stat().st_mtime_ns
    assert synthetic_store(tmp_path, n_days=6, size=16, factor=4) == path
    assert (tmp_path / "synthetic").stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "synthetic").iterdir())) == 1
