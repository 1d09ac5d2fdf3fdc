import functools

import numpy as np
import pytest
import torch

from downscale.data.datamodule import DownscaleDataModule
from downscale.data.datasets import (
    FixedRegionDataset,
    RandomPatchDataset,
    UpsampleDataset,
    box_to_region,
)
from downscale.data.scaling import LogScaler, ZScaler
from downscale.data.store import nearest_index, time_offset_table, time_split
from downscale.data.synthetic import synthetic_store
from downscale.utils.errors import UserError

SCALERS = {
    "precip": LogScaler,
    "coarse_precip": LogScaler,
    "coarse_humidity": ZScaler,
    "static_terrain": ZScaler,
}


def make_dm(tmp_path, **kwargs):
    store = synthetic_store(tmp_path, n_days=40, size=32, factor=4, seed=0)
    args = dict(
        store=store,
        targets=["precip"],
        coarse=["precip", "humidity"],
        statics=["terrain"],
        variables={k: v() for k, v in SCALERS.items()},
        splits={"train": [0.0, 0.5], "val": [0.5, 0.75], "test": [0.75, 1.0]},
        batch_size=4,
    )
    args.update(kwargs)
    dm = DownscaleDataModule(**args)
    dm.prepare()
    return dm


def test_batches_follow_the_contract(tmp_path):
    dm = make_dm(tmp_path, train_dataset=functools.partial(RandomPatchDataset, patch_size=16))
    batch = next(iter(dm.train_dataloader()))
    assert batch["target"].shape == (4, 1, 16, 16)
    assert batch["cond"].shape == (4, 3, 16, 16)
    assert batch["mask"].shape == (4, 1, 16, 16)
    assert batch["anchor"].shape == (4, 2) and batch["time"].dtype == torch.int64
    assert torch.isfinite(batch["target"]).all() and torch.isfinite(batch["cond"]).all()
    # invalid pixels carry zero target and zero mask
    assert (batch["target"][batch["mask"] == 0] == 0).all()


def test_patch_matches_the_store_at_its_anchor(tmp_path):
    dm = make_dm(tmp_path, train_dataset=functools.partial(RandomPatchDataset, patch_size=8))
    item = dm.dataset("train", train=True)[3]
    row, col = item["anchor"].tolist()
    t = int(item["time"])
    truth = dm.ds.precip.values[t, row : row + 8, col : col + 8]
    expected = np.nan_to_num(LogScaler().forward(truth))
    np.testing.assert_allclose(item["target"][0].numpy(), expected, atol=1e-6)
    # the coarse predictor is nearest-neighbour upsampled: constant over each 4 x 4 coarse cell
    full = dm.dataset("train")[0]["cond"][0].numpy()
    assert np.allclose(full[:4, :4], full[0, 0])


def test_scalers_are_fitted_on_the_training_split_only(tmp_path):
    dm = make_dm(tmp_path)
    train = dm.ds.coarse_humidity.isel(time=dm.split_indices["train"]).values
    assert dm.scalers["coarse_humidity"].mean == pytest.approx(train.mean(), rel=1e-5)
    everything = dm.ds.coarse_humidity.values
    assert dm.scalers["coarse_humidity"].mean != pytest.approx(everything.mean(), rel=1e-6)


def test_splits_are_disjoint_and_ordered(tmp_path):
    dm = make_dm(tmp_path)
    tr, va, te = (dm.split_indices[k] for k in ("train", "val", "test"))
    assert tr.max() < va.min() and va.max() < te.min()
    assert len(tr) + len(va) + len(te) == 40


def test_saved_scalers_replace_fitting(tmp_path):
    dm = make_dm(tmp_path)
    states = dm.scaler_states()
    other = make_dm(tmp_path, splits={"train": [0.5, 1.0], "test": [0.0, 0.5]})
    other.load_scaler_states(states)
    other.prepare()
    assert other.scalers["coarse_humidity"].mean == states["coarse_humidity"]["mean"]


def test_fixed_region_and_features(tmp_path):
    dm = make_dm(
        tmp_path,
        eval_dataset=functools.partial(FixedRegionDataset, region=[8, 4, 16, 24]),
        day_of_year=True,
        location=True,
    )
    item = dm.dataset("test")[0]
    assert item["target"].shape == (1, 16, 24)
    assert item["cond"].shape == (3 + 2 + 2, 16, 24)
    assert dm.cond_channels == 7


def test_date_splits_and_feb29():
    import pandas as pd

    times = pd.date_range("2000-02-27", periods=5, freq="D")
    assert time_split(times, ["2000-02-28", "2000-03-01"]).tolist() == [1, 2, 3]
    assert time_split(times, [0.0, 0.4]).tolist() == [0, 1]
    assert nearest_index(np.array([0.1, 0.9, 1.6]), np.array([0.0, 1.0, 2.0])).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": ["rain"]}, "not in the store"),
        ({"splits": {"train": [0.0, 0.5], "test": [1.5, 2.0]}}, "must satisfy"),
        ({"splits": {"train": ["1990-01-01", "1990-02-01"]}}, "selects no time steps"),
        ({"variables": {"precip": LogScaler()}}, "no scaler for"),
        ({"store": "/nonexistent/store.zarr"}, "dataset store not found"),
        ({"coarse_offsets": []}, "coarse_offsets"),
        ({"coarse_offsets": [0, 0]}, "distinct integers"),
        ({"coarse_offsets": [0, 0.5]}, "distinct integers"),
    ],
)
def test_bad_data_configs_are_user_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        make_dm(tmp_path, **kwargs)


def test_patch_larger_than_domain_is_a_user_error(tmp_path):
    dm = make_dm(tmp_path, train_dataset=functools.partial(RandomPatchDataset, patch_size=64))
    with pytest.raises(UserError, match="larger than"):
        dm.dataset("train", train=True)


# --- padding, regions, validation factory, guards -------------------------------------------------
def test_padding_masks_the_pad_and_extends_the_conditioning(tmp_path):
    plain = make_dm(tmp_path, location=True)
    padded = make_dm(
        tmp_path,
        eval_dataset=functools.partial(
            FixedRegionDataset, region=[8, 4, 13, 21], pad_to_multiple=8
        ),
        location=True,
    )
    item = padded.dataset("test")[2]
    assert item["target"].shape == (1, 16, 24) and item["cond"].shape == (5, 16, 24)
    ref = FixedRegionDataset(plain.fields, plain.split_indices["test"], [8, 4, 13, 21])[2]
    # inside the window: the unpadded item, bit for bit
    for key in ("target", "cond", "mask"):
        assert torch.equal(item[key][:, :13, :21], ref[key])
    # the pad: no target, no mask; predictors and statics repeat the edge row/column
    assert item["mask"][:, 13:].sum() == 0 and item["mask"][:, :, 21:].sum() == 0
    assert (item["target"][:, 13:] == 0).all() and (item["target"][:, :, 21:] == 0).all()
    assert torch.equal(item["cond"][:3, 13:, :21], ref["cond"][:3, 12:13].expand(3, 3, 21))
    assert torch.equal(item["cond"][:3, :13, 21:], ref["cond"][:3, :, 20:21].expand(3, 13, 3))
    # location ramps continue: row coordinate of row 8 + 15 in a 32-row domain
    assert item["cond"][3, 15, 0].item() == pytest.approx((8 + 15) / 31 * 2 - 1)


def test_padded_item_matches_a_channel_by_channel_reference(tmp_path):
    """Every channel kind (offset predictors, statics, day of year, location) of a padded window
    against np.pad of each unpadded channel, bit for bit."""
    dm = make_dm(tmp_path, coarse_offsets=[0, 1], day_of_year=True, location=True)
    f, (row, col, h, w), (H, W) = dm.fields, (5, 3, 13, 21), (16, 24)
    item = FixedRegionDataset(f, np.arange(40), [row, col, h, w], pad_to_multiple=8)[7]
    rows, cols = slice(row, row + h), slice(col, col + w)
    ri, ci = np.ix_(f.row_index[rows], f.col_index[cols])
    cond = [
        scaler.forward(np.asarray(arr[tk], dtype=np.float32))[ri, ci]
        for tk in f.coarse_times[:, 7]
        for arr, scaler in zip(f.coarse, f.coarse_scalers, strict=True)
    ]
    cond += [s[rows, cols] for s in f.statics]
    angle = 2 * np.pi * f.day_of_year[7] / 365.25
    cond += [np.full((h, w), np.sin(angle)), np.full((h, w), np.cos(angle))]
    pad = ((0, H - h), (0, W - w))
    expected = np.stack([np.pad(c, pad, mode="edge") for c in cond]).astype(np.float32)
    assert item["cond"].shape == (len(cond) + 2, H, W)
    assert np.array_equal(item["cond"][: len(cond)].numpy(), expected)
    ramp = (np.arange(col, col + W) / 31) * 2 - 1  # the location ramp runs on into the pad
    assert np.array_equal(item["cond"][-1, 0].numpy(), ramp.astype(np.float32))
    target = f.target_scalers[0].forward(np.asarray(f.targets[0][7, rows, cols], np.float32))
    target = np.where(f.mask[rows, cols] & np.isfinite(target), target, 0.0)
    assert np.array_equal(item["target"][0].numpy(), np.pad(target, pad).astype(np.float32))
    assert np.array_equal(
        item["mask"][0].numpy(), np.pad(f.mask[rows, cols], pad).astype(np.float32)
    )


def test_whole_domain_padding_and_crop_to_grid(tmp_path):
    dm = make_dm(tmp_path, eval_dataset=functools.partial(UpsampleDataset, pad_to_multiple=12))
    item = dm.dataset("test")[0]
    assert item["target"].shape == (1, 36, 36) and dm.grid_shape == (32, 32)
    draws = np.arange(2 * 36 * 36, dtype=np.float32).reshape(2, 1, 36, 36)
    cropped = dm.crop_to_grid(draws)
    assert cropped.shape == (2, 1, 32, 32) and np.array_equal(cropped, draws[..., :32, :32])
    assert dm.crop_to_grid(torch.zeros(3, 32, 32)).shape == (3, 32, 32)
    with pytest.raises(UserError, match="whole-domain"):
        dm.crop_to_grid(np.zeros((1, 16, 32)))


def test_region_as_box_or_name(tmp_path):
    dm = make_dm(tmp_path, regions={"north": [16, 0, 16, 32]})
    lat, lon = dm.fields.lat, dm.fields.lon
    box = {"lat": [float(lat[4]), float(lat[11])], "lon": [float(lon[2]), float(lon[9])]}
    assert box_to_region(dm.fields, box) == [4, 2, 8, 8]
    item = FixedRegionDataset(dm.fields, dm.split_indices["test"], box)[0]
    ref = FixedRegionDataset(dm.fields, dm.split_indices["test"], [4, 2, 8, 8])[0]
    assert torch.equal(item["target"], ref["target"]) and item["anchor"].tolist() == [4, 2]
    named = FixedRegionDataset(dm.fields, dm.split_indices["test"], "north")[0]
    assert named["target"].shape == (1, 16, 32) and named["anchor"].tolist() == [16, 0]
    with pytest.raises(UserError, match="unknown region 'south'"):
        FixedRegionDataset(dm.fields, dm.split_indices["test"], "south")
    outside = {"lat": [float(lat[0]), float(lat[-1]) + 10], "lon": [float(lon[0]), float(lon[3])]}
    with pytest.raises(UserError, match="outside the data"):
        FixedRegionDataset(dm.fields, dm.split_indices["test"], outside)


def test_validation_uses_its_own_factory(tmp_path):
    dm = make_dm(
        tmp_path,
        val_dataset=functools.partial(FixedRegionDataset, region=[0, 0, 8, 16]),
        eval_batch_size=2,
    )
    assert next(iter(dm.val_dataloader()))["target"].shape == (2, 1, 8, 16)
    assert next(iter(dm.test_dataloader()))["target"].shape == (2, 1, 32, 32)
    assert dm.dataset("val")[0]["target"].shape == (1, 32, 32)  # sampling a split: eval factory


def test_missing_store_names_the_recipe(tmp_path):
    with pytest.raises(UserError, match=r"build=radar_mrms out=/nope/radar\.zarr'"):
        make_dm(tmp_path, store="/nope/radar.zarr", recipe="radar_mrms")


def test_fit_scalers_false_needs_checkpoint_scalers(tmp_path):
    states = make_dm(tmp_path).scaler_states()
    with pytest.raises(UserError, match="takes its scalers from a checkpoint"):
        make_dm(tmp_path, fit_scalers=False)
    args = dict(
        store=synthetic_store(tmp_path, n_days=40, size=32, factor=4, seed=0),
        targets=["precip"],
        coarse=["precip", "humidity"],
        statics=["terrain"],
        variables={k: v() for k, v in SCALERS.items()},
        splits={"test": [0.5, 1.0]},
        fit_scalers=False,
    )
    dm = DownscaleDataModule(**args)
    dm.load_scaler_states(states)
    dm.prepare()
    assert dm.scalers["coarse_humidity"].mean == states["coarse_humidity"]["mean"]


def test_nan_in_a_predictor_is_one_clear_error(tmp_path):
    import xarray as xr

    src = synthetic_store(tmp_path, n_days=40, size=32, factor=4, seed=0)
    ds = xr.open_zarr(src, consolidated=False).load()
    ds["coarse_humidity"][5, 1, 1] = np.nan
    bad = tmp_path / "bad.zarr"
    ds.to_zarr(bad, consolidated=False, zarr_format=3)
    with pytest.raises(UserError, match=r"NaNs in predictor 'coarse_humidity' \(1 values"):
        make_dm(tmp_path, store=bad)


def test_small_arrays_load_first_the_rest_stays_lazy(tmp_path):
    dm = make_dm(tmp_path, in_memory_limit_gb=1e-4)  # ~105 kB: the coarse arrays, not the target
    assert all(isinstance(a, np.ndarray) for a in dm.fields.coarse)
    assert not isinstance(dm.fields.targets[0], np.ndarray)
    lazy = dm.dataset("test")[1]
    eager = make_dm(tmp_path).dataset("test")[1]
    assert torch.equal(lazy["target"], eager["target"]) and torch.equal(lazy["cond"], eager["cond"])


def test_split_ends_with_a_time_of_day_are_exact():
    import pandas as pd

    times = pd.date_range("2019-06-10T00:00", periods=36, freq="2min")
    assert len(time_split(times, ["2019-06-10T00:00", "2019-06-10T00:54"])) == 28
    assert time_split(times, ["2019-06-10T00:56", "2019-06-10T01:10"]).tolist() == list(
        range(28, 36)
    )
    assert len(time_split(times, ["2019-06-10", "2019-06-10"])) == 36  # a day end: the whole day
    with pytest.raises(UserError, match="not dates or fractions"):
        time_split(times, ["noon", "2019-06-10"])


def test_location_channels_encode_the_patch_anchor(tmp_path):
    dm = make_dm(
        tmp_path,
        train_dataset=functools.partial(RandomPatchDataset, patch_size=[8, 12]),
        location=True,
    )
    dataset = dm.dataset("train", train=True)
    for i in range(5):
        item = dataset[i]
        row, col = item["anchor"].tolist()
        rows, cols = item["cond"][-2].numpy(), item["cond"][-1].numpy()
        # each pixel's (row, col) in the 32 x 32 domain, mapped linearly to [-1, 1]
        np.testing.assert_allclose(rows[:, 0], (row + np.arange(8)) / 31 * 2 - 1, atol=1e-6)
        np.testing.assert_allclose(cols[0], (col + np.arange(12)) / 31 * 2 - 1, atol=1e-6)
        assert (rows == rows[:, :1]).all() and (cols == cols[:1]).all()


# --- predictors at other time steps -------------------------------------------------------------


def test_time_offset_table_follows_the_calendar_not_the_index():
    days = np.array(
        ["2000-01-01", "2000-01-02", "2000-01-03", "2000-01-10", "2000-01-11"],
        dtype="datetime64[D]",
    )
    table = time_offset_table(days, [0, 1, -1])
    assert table[0].tolist() == [0, 1, 2, 3, 4]
    # the day after 01-03 (index 3 is 01-10) and after the last day are missing: t stands in
    assert table[1].tolist() == [1, 2, 2, 4, 4]
    assert table[2].tolist() == [0, 0, 1, 3, 3]
    assert time_offset_table(days[:1], [1]).tolist() == [[0]]


def test_coarse_offsets_stack_the_predictors_of_each_step(tmp_path):
    plain = make_dm(tmp_path)
    dm = make_dm(tmp_path, coarse_offsets=[0, 1])
    assert dm.cond_channels == plain.cond_channels + 2  # precip, humidity at t + 1
    ds, ds0 = (
        UpsampleDataset(dm.fields, np.arange(40)),
        UpsampleDataset(plain.fields, np.arange(40)),
    )
    for t in (3, 39):
        item, now = ds[t], ds0[t]
        following = ds0[min(t + 1, 39)]  # the synthetic store has consecutive days; 39 is the last
        torch.testing.assert_close(item["cond"][:2], now["cond"][:2])
        torch.testing.assert_close(item["cond"][2:4], following["cond"][:2])
        torch.testing.assert_close(item["cond"][4:], now["cond"][2:])  # statics after the offsets
        torch.testing.assert_close(item["target"], now["target"])
    assert not torch.equal(ds[3]["cond"][2:4], ds[3]["cond"][:2])
