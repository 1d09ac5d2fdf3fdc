"""Pooling finished ensembles (downscale.pool): the members side by side, checked for the same days,
grid and observations and for distinct sampling seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import xskillscore as xs

from downscale.pool import check_compatible, open_sources, pool_members, run
from downscale.sampling.driver import write_samples
from downscale.utils.errors import UserError
from tests.conftest import compose_config, synthetic_datamodule
from tests.unit.test_driver import GaussianModel, request, sampler


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return synthetic_datamodule(cache, 20, {"train": [0.0, 0.5], "test": [0.5, 1.0]})


def draw(folder, dm, name: str, seed: int, n_members: int, **kw) -> str:
    """A samples store as downscale.sample writes it (the attrs the pool reads included)."""
    attrs = {"seed": seed, "split": "test", "obs_store": str(dm.store), "checkpoint": name}
    req = request(folder, dm, name=name, seed=seed, n_members=n_members, attrs=attrs, **kw)
    write_samples(GaussianModel(), dm, sampler(), req, progress=False)
    return str(req.out)


def test_the_pool_holds_each_stores_first_members_in_order(tmp_path, datamodule):
    a = draw(tmp_path, datamodule, "a.zarr", seed=1, n_members=3)
    b = draw(tmp_path, datamodule, "b.zarr", seed=2, n_members=4)
    sources = open_sources([a, b])
    pooled = pool_members(sources, 2)
    assert list(pooled["member"].values) == [0, 1, 2, 3]
    for name in datamodule.targets:
        expected = np.concatenate([sources[0][name][:2].values, sources[1][name][:2].values])
        np.testing.assert_array_equal(pooled[name].values, expected)
    np.testing.assert_array_equal(pooled["time_index"].values, sources[0]["time_index"].values)
    assert pool_members(sources, None).sizes["member"] == 7  # all of each


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 1}, "both drawn with seed=1, so their members share noise"),
        ({"times": "train"}, "cover different days"),
    ],
)
def test_stores_that_cannot_be_pooled_are_refused(tmp_path, datamodule, change, message):
    a = draw(tmp_path, datamodule, "a.zarr", seed=1, n_members=2)
    seed = change.get("seed", 2)
    times = {"times": datamodule.split_indices[change["times"]]} if "times" in change else {}
    b = draw(tmp_path, datamodule, "b.zarr", seed=seed, n_members=2, **times)
    with pytest.raises(UserError, match=message):
        check_compatible([a, b], open_sources([a, b]))


def test_bad_store_lists_and_member_counts_are_refused(tmp_path, datamodule):
    a = draw(tmp_path, datamodule, "a.zarr", seed=1, n_members=2)
    with pytest.raises(UserError, match="two or more sample stores"):
        open_sources([a])
    with pytest.raises(UserError, match="does not exist; sample it first"):
        open_sources([a, str(tmp_path / "missing.zarr")])
    b = draw(tmp_path, datamodule, "b.zarr", seed=2, n_members=3)
    with pytest.raises(UserError, match="from 1 to 2"):
        pool_members(open_sources([a, b]), 3)


def test_run_writes_scores_and_reuses_the_pool(tmp_path, datamodule, capsys):
    a = draw(tmp_path, datamodule, "a.zarr", seed=1, n_members=3)
    b = draw(tmp_path, datamodule, "b.zarr", seed=2, n_members=3)
    out = tmp_path / "pool" / "samples.zarr"
    overrides = [f"stores=[{a},{b}]", "n_members=2", f"out={out}", "evaluation.figures={}"]
    result = run(compose_config("pool", overrides))
    assert result["n_members"] == 4
    pooled = xr.open_zarr(out, consolidated=False)
    sources = json.loads(pooled.attrs["pooled_from"])
    assert [(s["checkpoint"], s["seed"], s["n_members"]) for s in sources] == [
        ("a.zarr", 1, 2),
        ("b.zarr", 2, 2),
    ]
    assert pooled.attrs["obs_store"] == str(datamodule.store)
    # the pool's CRPS is xskillscore's on the same members and observations
    name = datamodule.targets[0]
    obs = datamodule.ds[name].isel(time=pooled["time_index"].values)
    fcst = pooled[name].assign_coords(time=obs["time"].values).load()
    expected = float(xs.crps_ensemble(obs, fcst, member_dim="member", dim=[]).mean())
    assert result["metrics"]["crps"] == pytest.approx(expected, rel=1e-5)

    assert run(compose_config("pool", overrides))["n_members"] == 4  # reused
    assert "already complete" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # the same out= for other members
        run(compose_config("pool", [*overrides[:1], "n_members=3", *overrides[2:]]))
    assert exit_info.value.code == 2
    assert "exists and pools other stores or members" in capsys.readouterr().err
