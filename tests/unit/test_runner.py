"""The evaluation runner: outputs, alignment, bad input, stores on disk, a dask cluster."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from omegaconf import OmegaConf

from downscale.evaluation import runner
from downscale.evaluation.metrics import pixel, spectral
from downscale.evaluation.metrics.fss import fss as fss_fn
from downscale.utils.errors import UserError
from tests.unit._evaldata import fields, mask_like

CONF = Path(__file__).resolve().parents[2] / "conf" / "evaluation"


def quick_cfg(**overrides) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "quick.yaml"))
    cfg.update(overrides)
    return cfg


def test_evaluate_writes_outputs_and_matches_metric_functions(tmp_path):
    samples, obs = fields(members=3, days=5)
    mask = mask_like(obs)
    base = {"nearest": samples.isel(member=[0]) * 0.5}
    flat = runner.evaluate(
        samples, obs, mask=mask, cfg=quick_cfg(), out_dir=tmp_path, baselines=base
    )
    assert flat["crps"] == pytest.approx(float(pixel.crps_ensemble(samples, obs, mask)))
    assert flat["ralsd"] == pytest.approx(float(spectral.ralsd(samples, obs, mask)))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["mae"] == pytest.approx(flat["mae"])
    assert {"crps", "mae", "rmse", "bias", "ralsd"} <= set(on_disk)
    ds = xr.open_dataset(tmp_path / "metrics.nc")
    assert float(ds["rmse"]) == pytest.approx(flat["rmse"])
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "sample_panels.png",
        "spectra.png",
    ]
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "nearest" in html
    assert not list(tmp_path.glob(".*tmp*"))


def test_samples_times_are_selected_from_obs(tmp_path):
    samples, obs = fields(days=6)
    sub = samples.isel(time=slice(2, 5))
    flat = runner.evaluate(sub, obs, mask=None, cfg=quick_cfg(figures={}), out_dir=tmp_path)
    ref = float(pixel.mae(sub, obs.isel(time=slice(2, 5))))
    assert flat["mae"] == pytest.approx(ref)
    assert flat["n_days"] == 3


def test_all_nan_day_is_skipped_and_counted(tmp_path):
    samples, obs = fields(days=4)
    obs = obs.copy()
    obs[1] = np.nan
    flat = runner.evaluate(samples, obs, mask=None, cfg=quick_cfg(figures={}), out_dir=tmp_path)
    assert flat["n_days_skipped"] == 1
    keep = [0, 2, 3]
    assert flat["mae"] == pytest.approx(float(pixel.mae(samples[:, keep], obs[keep])))


@pytest.mark.parametrize(
    "case, message",
    [
        ("grid", "different grids"),
        ("time", "not in the observations"),
        ("member", "'member' dim"),
        ("units", "thresholds are in"),
    ],
)
def test_bad_input_raises_one_line_user_error(tmp_path, case, message):
    samples, obs = fields(days=3)
    cfg = quick_cfg(figures={})
    if case == "grid":
        samples = samples.assign_coords(lat=samples.lat + 0.05)
    elif case == "time":
        obs = obs.isel(time=slice(0, 2))
    elif case == "member":
        samples = samples.isel(member=0)
    else:
        cfg["threshold_units"] = "mm/h"
    with pytest.raises(UserError, match=message) as err:
        runner.evaluate(samples, obs, mask=None, cfg=cfg, out_dir=tmp_path)
    assert "\n" not in str(err.value) and ";" in str(err.value)


def test_evaluate_paths_from_zarr_and_netcdf_with_mask(tmp_path):
    samples, obs = fields(members=2, days=5)
    mask = mask_like(obs)
    samples.to_dataset(name="precip").to_zarr(tmp_path / "samples.zarr", consolidated=True)
    obs_ds = obs.to_dataset(name="precip").assign(valid_mask=mask.astype("uint8"))
    obs_ds.to_netcdf(tmp_path / "obs.nc")
    flat = runner.evaluate_paths(
        tmp_path / "samples.zarr",
        tmp_path / "obs.nc",
        variable="precip",
        cfg=quick_cfg(figures={}, chunks={"time": 2}),
        out_dir=tmp_path / "out",
    )
    assert flat["crps"] == pytest.approx(float(pixel.crps_ensemble(samples, obs, mask)))
    with pytest.raises(UserError, match="variable 'rain'"):
        runner.evaluate_paths(
            tmp_path / "samples.zarr",
            tmp_path / "obs.nc",
            variable="rain",
            cfg=quick_cfg(),
            out_dir=tmp_path / "o2",
        )


def test_flatten_names_small_arrays():
    da = xr.DataArray(
        [[0.1, 0.2]], dims=("threshold", "scale"), coords={"threshold": [1.0], "scale": [2, 4]}
    )
    flat = runner.flatten({"fss": da, "x": xr.DataArray(3.0)})
    assert flat == {"fss_t1_x2": 0.1, "fss_t1_x4": 0.2, "x": 3.0}


@pytest.mark.slow
def test_evaluate_on_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    samples, obs = fields(members=3, days=4)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        flat = runner.evaluate(
            samples,
            obs,
            mask=None,
            cfg=quick_cfg(figures={}, cluster=cluster.scheduler_address, chunks={"time": 2}),
            out_dir=tmp_path,
        )
    assert flat["crps"] == pytest.approx(float(pixel.crps_ensemble(samples, obs)))


@pytest.mark.slow
def test_default_scorecard_headline_keys_and_figures(tmp_path):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "default.yaml"))
    samples, obs = fields(members=3, days=6, size=32)
    mask = mask_like(obs)
    flat = runner.evaluate(
        samples, obs, mask=mask, cfg=cfg, out_dir=tmp_path, baselines={"half": 0.5 * samples}
    )
    for key in (
        "crps",
        "crps_fair",
        "mae",
        "rmse",
        "bias",
        "ralsd",
        "spread_skill",
        "rank_flatness",
        "ece",
        "fss_t1_x8",
        "quantile_bias_q99",
        "brier_t1",
        "pooled_max_crps_x4",
        "event_ratio_1-10",
        "mae_ensmean",
    ):
        assert key in flat, key
    assert flat["crps_fair"] < flat["crps"]
    assert flat["fss_t1_x8"] == pytest.approx(
        float(fss_fn(samples, obs, mask, thresholds=(1.0,), scales=(8,)).squeeze())
    )
    assert len(list((tmp_path / "figures").glob("*.png"))) == 10
    ds = xr.open_dataset(tmp_path / "metrics.nc")
    assert ds["rank_histogram"].shape == (6, 4) and "skipped" in ds["return_levels"].attrs
    html = (tmp_path / "report.html").read_text()
    assert "<th>half</th>" in html and "Skipped" in html


def test_open_data_splits_stored_chunks_without_rereading_them(tmp_path):
    """Evaluation chunks smaller than the stored ones: the store is opened at its own chunks and
    split after (no xarray warning about reading each stored chunk once per piece)."""
    ds = xr.Dataset({"pr": (("time", "lat"), np.arange(48.0).reshape(12, 4))})
    ds.chunk(time=8).to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opened = runner.open_data(tmp_path / "s.zarr", {"time": 4, "member": -1})
    assert opened["pr"].chunks == ((4, 4, 4), (4,))
    np.testing.assert_array_equal(opened["pr"].values, ds["pr"].values)
