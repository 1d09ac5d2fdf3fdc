"""Killed runs resume exactly and never leave output that looks complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from downscale import train
from tests.conftest import REPO, TINY_DATA, compose_config

pytestmark = pytest.mark.slow


def env_for(cache: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "DOWNSCALE_CACHE_DIR": str(cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    mp = pytest.MonkeyPatch()
    mp.setenv("DOWNSCALE_CACHE_DIR", str(root / "cache"))
    cfg = compose_config(
        "train",
        [
            *TINY_DATA,
            f"paths.output_dir={root / 'train'}",
            "trainer.max_epochs=1",
            "logger=csv",
            "callbacks=none",
        ],
    )
    result = train.run(cfg)
    yield root, result["run_dir"]
    mp.undo()


def sample_cmd(run_dir: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "downscale.sample",
        f"run_dir={run_dir}",
        f"out={out}",
        "split=train",
        "block_size=2",
        "n_members=2",
        "sampler=euler_ancestral",
        "sampler.steps=4",
        "evaluate=false",
        f"hydra.run.dir={out.parent}",
    ]


def test_sampling_killed_midway_resumes_to_the_uninterrupted_result(checkpoint_run):
    root, run_dir = checkpoint_run
    env = env_for(root / "cache")
    reference = root / "reference" / "samples.zarr"
    subprocess.run(
        sample_cmd(run_dir, reference),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )

    out = root / "killed" / "samples.zarr"
    blocks = out.with_name(out.name + ".blocks")
    proc = subprocess.Popen(
        sample_cmd(run_dir, out),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and (not blocks.is_dir() or len(list(blocks.iterdir())) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(blocks.iterdir()))
    assert done_before >= 3
    assert not out.exists()  # the incomplete store never sits under the final name

    subprocess.run(
        sample_cmd(run_dir, out), cwd=REPO, env=env, check=True, capture_output=True, timeout=600
    )
    summary = json.loads((out.parent / "summary.json").read_text())
    ref_ds, got_ds = (xr.open_zarr(p, consolidated=False) for p in (reference, out))
    n_blocks = -(-ref_ds.sizes["time"] // 2)
    assert summary["blocks_computed"] == n_blocks - done_before  # finished blocks not recomputed
    np.testing.assert_array_equal(got_ds.precip.values, ref_ds.precip.values)
