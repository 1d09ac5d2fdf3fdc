"""The evaluation on real data: E-OBS precipitation over Iberia (land only, NaN over sea)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from omegaconf import OmegaConf

from downscale.evaluation import baselines, runner
from tests.unit._evaldata import shared_data_root

CONF_DIR = runner.Path(__file__).resolve().parents[2] / "conf" / "evaluation"


@pytest.fixture
def eobs_store() -> xr.Dataset:
    root = shared_data_root()
    if root is None:
        pytest.skip("../shared/data is absent (set DOWNSCALE_DATA_ROOT to run this test)")
    pr = (
        xr.open_dataset(root / "iberia" / "eobs_pr.nc")["pr"]
        .isel(time=slice(0, 270), lat=slice(0, 18), lon=slice(0, 27))
        .load()
    )
    coarse = pr.coarsen(lat=3, lon=3).mean()  # 1.5 deg, NaN-skipping over the coast
    coarse = coarse.rename(lat="lat_coarse", lon="lon_coarse")
    valid = pr.notnull().all("time")
    return xr.Dataset({"precip": pr, "coarse_precip": coarse, "valid_mask": valid.astype("uint8")})


@pytest.mark.data
@pytest.mark.slow
def test_baselines_and_scorecard_on_eobs(eobs_store, tmp_path):
    store = eobs_store
    times = store.time.values
    cfg = OmegaConf.load(CONF_DIR / "default.yaml")
    cfg.baselines.analogs.k = 8
    cfg.baselines.rainfarm.n_members = 8
    cfg.figures = {}
    cfg.baseline_metrics = ["crps", "mae", "ralsd"]
    base = baselines.compute_baselines(store, times[180:], times[:180], cfg)
    mask = store.valid_mask.astype(bool)
    obs = store.precip.sel(time=times[180:])
    flat = runner.evaluate(
        base.pop("analogs"), obs, mask=mask, cfg=cfg, out_dir=tmp_path, baselines=base
    )
    for key in ("crps", "mae", "ralsd", "spread_skill", "rank_flatness", "fss_t1_x4"):
        assert np.isfinite(flat[key]), key
    # RainFARM keeps every coarse cell's mean (where the cell is entirely land)
    rf = base["rainfarm"].isel(member=0)
    blocks = rf.coarsen(lat=3, lon=3).mean()
    full_land = mask.coarsen(lat=3, lon=3).min().values.astype(bool)
    coarse = store.coarse_precip.sel(time=times[180:]).values
    np.testing.assert_allclose(blocks.values[:, full_land], coarse[:, full_land], rtol=1e-4)
    html = (tmp_path / "report.html").read_text()
    assert "<th>rainfarm</th>" in html and "<th>bilinear</th>" in html
