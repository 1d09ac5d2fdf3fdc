"""Load: a 24-job sampling multirun ends with 24 distinct, complete outputs; sweep dirs never collide."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from downscale import train
from tests.conftest import CONF, REPO, TINY_DATA, compose_config

pytestmark = pytest.mark.slow

SAMPLERS, STEPS, SEEDS = ("euler", "heun", "dpm2"), (1, 2, 3, 4), (0, 1)


def test_24_job_sampling_multirun(tmp_path, monkeypatch):
    monkeypatch.setenv("DOWNSCALE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config(
        "train",
        [
            *TINY_DATA,
            f"paths.output_dir={tmp_path / 'train'}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "logger=none",
            "callbacks=none",
        ],
    )
    run_dir = train.run(cfg)["run_dir"]
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled", "DOWNSCALE_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "downscale.sample",
        "-m",
        f"run_dir={run_dir}",
        f"sampler={','.join(SAMPLERS)}",
        f"sampler.steps={','.join(map(str, STEPS))}",
        f"seed={','.join(map(str, SEEDS))}",
        "n_members=1",
        "block_size=4",
        "evaluate=false",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == [str(i) for i in range(24)]
    seen = set()
    for job in jobs:
        ds = xr.open_zarr(job / "samples.zarr", consolidated=False)
        assert ds.sizes["member"] == 1 and ds.sizes["time"] > 0
        valid = xr.open_zarr(ds.attrs["obs_store"], consolidated=False).valid_mask.values
        # every block written: NaN exactly off the valid mask (the barely trained model's values
        # may overflow, which is not what this test is about)
        assert (np.isnan(ds.precip.values) == ~valid.astype(bool)).all()
        sampler = json.loads(ds.attrs["sampler"])
        seen.add((sampler["_target_"], sampler["steps"], ds.attrs["seed"]))
        leftovers = [p.name for p in job.iterdir() if ".tmp-" in p.name or p.suffix == ".blocks"]
        assert not leftovers
        assert (job / "summary.json").is_file()
    expected = {
        (f"downscale.sampling.samplers.sample_{s}", n, seed)
        for s, n, seed in itertools.product(SAMPLERS, STEPS, SEEDS)
    }
    assert seen == expected  # 24 distinct parameter points, one per directory
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 24
    assert set(zip(table["sampler"], table["sampler.steps"], strict=True)) == {
        (s, n) for s, n in itertools.product(SAMPLERS, STEPS)
    }


def test_sweeps_started_in_the_same_second_get_distinct_dirs():
    dirs = []
    for _ in range(2):
        with initialize_config_dir(version_base=None, config_dir=str(CONF), job_name="t"):
            cfg = compose("sample", return_hydra_config=True)
            dirs.append((cfg.hydra.sweep.dir, cfg.hydra.run.dir))
    (sweep_a, run_a), (sweep_b, run_b) = dirs
    assert sweep_a != sweep_b and run_a != run_b
    # microseconds in the name, and the job number below it
    assert pd.Timestamp.now().strftime("%Y-%m-%d") in sweep_a
    with initialize_config_dir(version_base=None, config_dir=str(CONF), job_name="t"):
        cfg = compose("sample", return_hydra_config=True)
        raw = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert raw["subdir"] == "${hydra.job.num}" and "%f" in raw["dir"]
