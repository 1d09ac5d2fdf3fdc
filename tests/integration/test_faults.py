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
import pandas as pd
import pytest
import torch
import xarray as xr

from tests.conftest import REPO, TINY_DATA, tiny_training

pytestmark = pytest.mark.slow


def env_for(cache: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "DOWNSCALE_CACHE_DIR": str(cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    with tiny_training(tmp_path_factory, "faults") as (root, result):
        yield root, result["run_dir"]


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


TRAIN_ARGS = [
    *TINY_DATA,
    "trainer.deterministic=true",
    "trainer.max_epochs=3",
    "trainer.limit_val_batches=1",
    "seed=7",
    "callbacks=none",
    "logger=wandb",  # csv + W&B (disabled by env_for): the run keeps its wandb_id.txt
]


def train_cmd(hydra_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "downscale.train",
        *TRAIN_ARGS,
        f"hydra.run.dir={hydra_dir}",
        *extra,
    ]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not path.is_file() and proc.poll() is None:
        time.sleep(0.02)
    assert path.is_file(), f"{path} never appeared"


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_ref")
    env = env_for(root / "cache")
    subprocess.run(
        train_cmd(root / "run"), cwd=REPO, env=env, check=True, capture_output=True, timeout=600
    )
    return root, ckpt(root / "run" / "checkpoints" / "last.ckpt")


def test_training_killed_resumes_to_the_uninterrupted_weights(uninterrupted):
    root, reference = uninterrupted
    env = env_for(root / "cache")
    run_dir = root / "killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        train_cmd(run_dir), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(last, proc)  # first epoch checkpointed: kill somewhere in the next epoch
    wait_for(run_dir / "metrics.csv", proc)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    at_kill = ckpt(last)["global_step"]
    assert 0 < at_kill < reference["global_step"]
    wandb_id = (run_dir / "wandb_id.txt").read_text()
    before = pd.read_csv(run_dir / "metrics.csv")

    subprocess.run(
        train_cmd(root / "unused", f"resume={run_dir}"),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    resumed = ckpt(last)
    assert resumed["global_step"] == reference["global_step"]
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    # the run continues: same directory, same W&B run id, metrics history kept and extended
    assert (run_dir / "wandb_id.txt").read_text() == wandb_id
    assert not (root / "unused" / "metrics.csv").exists()
    after = pd.read_csv(run_dir / "metrics.csv")  # new columns may be added on the right
    assert len(before) > 0 and len(after) > len(before)
    pd.testing.assert_frame_equal(
        after.iloc[: len(before)][before.columns], before, check_dtype=False
    )
    assert {0, 2} <= set(after["epoch"].dropna().astype(int))


def test_sigterm_saves_a_checkpoint_and_resume_continues_from_it(uninterrupted):
    root, reference = uninterrupted
    env = env_for(root / "cache")
    run_dir = root / "terminated"
    folder = run_dir / "checkpoints"
    proc = subprocess.Popen(
        train_cmd(run_dir), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_for(folder / "last.ckpt", proc)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    assert b"stopped by SIGTERM" in stderr
    saved = ckpt(folder / "on_exception.ckpt")
    assert saved["global_step"] >= ckpt(folder / "last.ckpt")["global_step"]
    assert saved["global_step"] < reference["global_step"]
    assert "downscale" in saved  # a full downscale checkpoint, usable by resume= and sample

    subprocess.run(
        train_cmd(root / "unused2", f"resume={run_dir}"),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert ckpt(folder / "last.ckpt")["global_step"] == reference["global_step"]
    assert not (folder / "on_exception.ckpt").exists()  # removed once the run completed
