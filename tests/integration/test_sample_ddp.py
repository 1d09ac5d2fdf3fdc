"""Multi-process sampling: 2 CPU processes (Lightning Fabric, gloo) write the same store as 1;
a deterministic model asked for several members draws one, with a warning."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import xarray as xr

from downscale import sample, train
from tests.conftest import TINY_DATA, compose_config, tiny_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    with tiny_training(tmp_path_factory, "ddp") as (root, result):
        yield root, result["run_dir"]


def sample_cfg(root, run_dir, name, *extra):
    return compose_config(
        "sample",
        [
            f"paths.output_dir={root / name}",
            f"run_dir={run_dir}",
            "sampler=euler_ancestral",  # noise at every step: seeding must carry over to the ranks
            "sampler.steps=3",
            "n_members=2",
            "block_size=3",
            "evaluate=false",
            "device=cpu",
            *extra,
        ],
    )


def test_two_processes_write_the_store_of_one(run_dir):
    root, run = run_dir
    # bitwise equality needs equal thread counts: each of the 2 CPU ranks runs OMP_NUM_THREADS
    # threads, or cpu_count // 2 when it is unset (Lightning), so sample the reference with as many
    threads = torch.get_num_threads()
    torch.set_num_threads(
        int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // 2))
    )
    try:
        one = sample.run(sample_cfg(root, run, "one"))
    finally:
        torch.set_num_threads(threads)
    two = sample.run(sample_cfg(root, run, "two", "devices=2", "strategy=ddp_spawn"))
    a = xr.open_zarr(one["path"], consolidated=False)
    b = xr.open_zarr(two["path"], consolidated=False)
    assert two["path"] != one["path"] and b.sizes == a.sizes
    np.testing.assert_array_equal(b.precip.values, a.precip.values)
    np.testing.assert_array_equal(b.time.values, a.time.values)
    assert {k: v for k, v in b.attrs.items() if k != "request_key"} == {
        k: v for k, v in a.attrs.items() if k != "request_key"
    }
    n_blocks = -(-a.sizes["time"] // 3)
    assert n_blocks >= 2  # both ranks had work
    assert one["blocks_computed"] == two["blocks_computed"] == n_blocks
    assert two["nfe"] == one["nfe"] == 3
    assert not (two["path"].parent / "samples.zarr.partial").exists()


def test_deterministic_model_draws_one_member_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("DOWNSCALE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config(
        "train",
        [
            *TINY_DATA,
            "model=regression",
            f"paths.output_dir={tmp_path / 'train'}",
            "trainer.max_epochs=1",
            "logger=csv",
            "callbacks=none",
        ],
    )
    run = train.run(cfg)["run_dir"]
    with pytest.warns(UserWarning, match="deterministic: drawing 1 member instead of 5"):
        out = sample.run(sample_cfg(tmp_path, run, "regression", "n_members=5"))
    ds = xr.open_zarr(out["path"], consolidated=False)
    assert ds.sizes["member"] == 1 and out["nfe"] == 1 and ds.attrs["sampler"] == "none"
