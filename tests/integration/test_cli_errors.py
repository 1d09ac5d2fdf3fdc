"""A user's mistake ends with one line naming the problem, a non-zero exit and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

CASES = [
    (["train", "model=nonexistent"], "unknown option model=nonexistent"),
    (["train", "trainer.max_epoch=3"], "unknown key trainer.max_epoch"),
    (["train", "trainer.max_epochs=abc"], "must be an integer"),
    (["train", "trainer=gpu"], "needs a CUDA GPU"),
    (["train", "resume=/nonexistent/run"], "cannot resume"),
    (["train", "data.store=/nonexistent/store.zarr"], "dataset store not found"),
    (["sample", "sampler=nonexistent"], "unknown option sampler=nonexistent"),
    (["sample", "schedule=nonexistent"], "unknown option schedule=nonexistent"),
    (["sample", "sampler.steps=0"], "sampler.steps must be an integer >= 1"),
    (["sample"], "give exactly one of run_dir"),
    (["sample", "run_dir=/nonexistent"], "run_dir not found"),
    (["sample", "ckpt=/nonexistent.ckpt"], "checkpoint not found"),
    (["select"], "give run_dir=<train run dir> or candidates"),
    (["select", "candidates=[/nonexistent/*.ckpt]"], "nothing matches /nonexistent/*.ckpt"),
    (["sample", "dry.threshold=often"], "dry.threshold must be null, a number >= 0"),
    (["sample", "precision=fp8"], "precision=fp8 is unknown; use one of 32-true, bf16-mixed"),
    (["pool"], "stores must list two or more sample stores"),
    (["pool", "stores=[/nonexistent/a.zarr,/nonexistent/b.zarr]"], "does not exist; sample it"),
    (["evaluate"], "no samples given"),
    (["evaluate", "samples=/nonexistent.zarr"], "samples store not found"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_mistake_gives_one_clear_line(argv, message, tmp_path):
    if "trainer=gpu" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so trainer=gpu is not a mistake here")
    env = {**os.environ, "WANDB_MODE": "disabled", "DOWNSCALE_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", f"downscale.{argv[0]}", *argv[1:], f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr[-2000:]
    assert message in error_lines[0]
