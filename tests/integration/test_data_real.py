"""The real-data DataModule: build the iberia stores from the shared data, compose data=iberia with
Hydra and check batches, masks, padding, date splits, scalers fitted on the training days only, and
the GCM store sampled with the iberia scalers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from downscale.build import run as build_run
from downscale.utils.errors import UserError
from tests.conftest import CONF, compose_config

pytestmark = [pytest.mark.slow, pytest.mark.data]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.conftest import shared_data_root

    root = shared_data_root()
    if root is None or not (root / "iberia").is_dir():
        pytest.skip("shared data (iberia) not found; set DOWNSCALE_DATA_ROOT to run")
    out = tmp_path_factory.mktemp("stores")
    for recipe in ("iberia", "iberia_gcm"):
        with initialize_config_dir(str(CONF), version_base=None):
            cfg = compose(
                "build",
                overrides=[
                    f"build={recipe}",
                    f"paths.data_root={root}",
                    f"out={out}/{recipe}.zarr",
                ],
            )
        build_run(cfg)
    return str(out)


def _datamodule(data_dir: str, option: str = "iberia"):
    cfg = compose_config("train", [f"data={option}", f"paths.data_dir={data_dir}"])
    return instantiate(cfg.data)


def test_iberia_batches_are_padded_and_masked(data_dir):
    dm = _datamodule(data_dir)
    dm.prepare()
    # 5 predictors of the day and 5 of the next day (data.coarse_offsets: [0, 1])
    assert dm.grid_shape == (19, 29) and dm.cond_channels == 10
    batch = next(iter(dm.train_dataloader()))
    assert batch["target"].shape == (32, 1, 24, 32)
    assert batch["cond"].shape == (32, 10, 24, 32)
    store = xr.open_zarr(dm.store, consolidated=False)
    valid = store.valid_mask.values.astype(bool)
    mask = batch["mask"][0, 0].numpy()
    np.testing.assert_array_equal(mask[:19, :29], valid)
    assert mask[19:].sum() == 0 and mask[:, 29:].sum() == 0
    # E-OBS: sea (and cells missing on some day) are NaN in the store and masked out
    np.testing.assert_array_equal(~valid, np.isnan(store.precip.values).any(axis=0))
    assert 0.5 < valid.mean() < 0.7
    # the target is log10(1 + x) / 2 of the store's values on valid cells, 0 elsewhere
    t = int(batch["time"][0])
    expected = np.log10(1 + np.nan_to_num(store.precip.isel(time=t).values)) / 2
    np.testing.assert_allclose(batch["target"][0, 0, :19, :29].numpy(), expected * valid, atol=1e-6)
    assert torch.isfinite(batch["cond"]).all()
    # crop_to_grid undoes the padding
    assert dm.crop_to_grid(batch["target"]).shape == (32, 1, 19, 29)


def test_iberia_splits_by_date(data_dir):
    dm = _datamodule(data_dir)
    dm.prepare()
    times = pd.DatetimeIndex(dm.ds.time.values)
    train, val, test = (times[dm.split_indices[k]] for k in ("train", "val", "test"))
    assert train.max() < pd.Timestamp("1996-12-01") <= val.min()
    assert val.max() <= pd.Timestamp("1997-02-28") and test.min() == pd.Timestamp("1997-12-01")
    assert test.max() == pd.Timestamp("2002-02-28")
    # 5 test winters of 90 days (29 Feb 2000 dropped); 1 validation winter; 14 training winters
    assert len(test) == 5 * 90 and len(val) == 90 and len(train) == 14 * 90
    assert not (
        (times[np.concatenate(list(dm.split_indices.values()))].month == 2)
        & (times[np.concatenate(list(dm.split_indices.values()))].day == 29)
    ).any()


def test_iberia_next_day_predictors_follow_the_calendar(data_dir):
    dm = _datamodule(data_dir)
    dm.prepare()
    days = pd.DatetimeIndex(dm.ds.time.values)
    dataset = dm.dataset("train")
    position = {int(t): i for i, t in enumerate(dm.split_indices["train"])}
    mid_winter = days.get_loc(pd.Timestamp("1990-01-10"))
    following = dataset[position[mid_winter + 1]]["cond"][:5]
    torch.testing.assert_close(dataset[position[mid_winter]]["cond"][5:], following)
    # the last day of a winter has no next day in the store: its own predictors stand in
    end = days.get_loc(pd.Timestamp("1990-02-28"))
    assert days[end + 1] == pd.Timestamp("1990-12-01")
    item = dataset[position[end]]["cond"]
    torch.testing.assert_close(item[5:], item[:5])


def test_iberia_scalers_fitted_on_training_days_only(data_dir):
    dm = _datamodule(data_dir)
    dm.prepare()
    store = xr.open_zarr(dm.store, consolidated=False)
    days = store.time.to_index()
    keep = (days < "1996-12-01") & ~((days.month == 2) & (days.day == 29))
    psl = store.coarse_psl.values[keep]
    assert dm.scalers["coarse_psl"].mean == pytest.approx(psl.mean(), rel=1e-6)
    assert dm.scalers["coarse_psl"].std == pytest.approx(psl.std(), rel=1e-4)
    assert dm.scalers["coarse_psl"].mean != pytest.approx(store.coarse_psl.values.mean(), rel=1e-7)


def test_gcm_store_uses_the_iberia_scalers(data_dir):
    gcm = _datamodule(data_dir, "iberia_gcm")
    with pytest.raises(UserError, match="takes its scalers from a checkpoint"):
        gcm.prepare()
    reanalysis = _datamodule(data_dir)
    reanalysis.prepare()
    gcm.load_scaler_states(reanalysis.scaler_states())
    gcm.prepare()
    assert gcm.scalers["coarse_ta850"].mean == reanalysis.scalers["coarse_ta850"].mean
    item = gcm.dataset("test")[0]
    assert item["cond"].shape == (10, 24, 32)
    # the GCM's predictors differ from the reanalysis on the same day
    assert not torch.allclose(item["cond"], reanalysis.dataset("test")[0]["cond"])


def test_missing_store_names_the_recipe(tmp_path):
    dm = _datamodule(str(tmp_path))
    with pytest.raises(
        UserError, match="build it first with 'python -m downscale.build build=iberia"
    ):
        dm.prepare()


def test_radar_mrms_time_splits_patches_and_regions(tmp_path):
    from tests.conftest import shared_data_root

    root = shared_data_root()
    if root is None or not (root / "radar").is_dir():
        pytest.skip("shared data (radar) not found; set DOWNSCALE_DATA_ROOT to run")
    with initialize_config_dir(str(CONF), version_base=None):
        build_cfg = compose(
            "build",
            overrides=[
                "build=radar_mrms",
                f"paths.data_root={root}",
                f"out={tmp_path}/radar_mrms.zarr",
                "build.domain.box={lon:[-100,-97.44],lat:[35,37.56]}",  # 256 x 256
            ],
        )
    build_run(build_cfg)
    cfg = compose_config(
        "train",
        [
            "data=radar_mrms",
            f"paths.data_dir={tmp_path}",
            "data.regions.storm=[64,32,128,128]",
            "data.num_workers=0",
            "data.batch_size=4",
        ],
    )
    dm = instantiate(cfg.data)
    dm.prepare()
    times = pd.DatetimeIndex(dm.ds.time.values)
    idx = dm.split_indices
    assert (len(idx["train"]), len(idx["val"]), len(idx["test"])) == (28, 4, 8)
    assert times[idx["train"]].max() == pd.Timestamp("2019-06-10T00:54")
    assert times[idx["test"]].min() == pd.Timestamp("2019-06-10T00:56")
    train = next(iter(dm.train_dataloader()))
    assert train["target"].shape == (4, 1, 128, 128) and train["cond"].shape == (4, 1, 128, 128)
    assert set(train["time"].tolist()) <= set(idx["train"].tolist())
    val = next(iter(dm.val_dataloader()))
    assert val["target"].shape == (1, 1, 128, 128) and val["anchor"][0].tolist() == [64, 32]
    test = next(iter(dm.test_dataloader()))
    assert test["target"].shape == (1, 1, 256, 256)
    # no-coverage pixels of the store are masked
    store = xr.open_zarr(dm.store, consolidated=False)
    valid = store.valid_mask.values.astype(bool)
    np.testing.assert_array_equal(test["mask"][0, 0].numpy().astype(bool), valid)


def test_iberia_train_and_sample_crop_the_padding(data_dir, tmp_path):
    from downscale import sample, train

    cfg = compose_config(
        "train",
        [
            "data=iberia",
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={tmp_path / 'train'}",
            "debug=fast",
            "net=tiny",
            "logger=none",
            "callbacks=none",
            "trainer.accelerator=cpu",
            "trainer.precision=32",
        ],
    )
    result = train.run(cfg)
    scfg = compose_config(
        "sample",
        [
            f"paths.output_dir={tmp_path / 'sample'}",
            f"run_dir={result['run_dir']}",
            "sampler=heun",
            "sampler.steps=2",
            "n_members=2",
            "evaluate=false",
            "+data.splits.test=[1997-12-01,1997-12-06]",
        ],
    )
    samples = xr.open_zarr(sample.run(scfg)["path"], consolidated=False)
    assert samples.precip.shape == (2, 6, 19, 29)  # the 24 x 32 padding is cropped away
    valid = xr.open_zarr(f"{data_dir}/iberia.zarr", consolidated=False).valid_mask.values > 0
    values = samples.precip.values
    # masked exactly on the invalid cells (values of a 3-step model are not judged here)
    assert np.isnan(values[..., ~valid]).all() and not np.isnan(values[..., valid]).any()
