import functools

import numpy as np
import pytest
import torch

from downscale.data.datamodule import DownscaleDataModule
from downscale.data.datasets import FixedRegionDataset, RandomPatchDataset
from downscale.data.scaling import LogScaler, ZScaler
from downscale.data.store import nearest_index, time_split
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
    ],
)
def test_bad_data_configs_are_user_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        make_dm(tmp_path, **kwargs)


def test_patch_larger_than_domain_is_a_user_error(tmp_path):
    dm = make_dm(tmp_path, train_dataset=functools.partial(RandomPatchDataset, patch_size=64))
    with pytest.raises(UserError, match="larger than"):
        dm.dataset("train", train=True)
