"""W&B keys and tokens never reach logs, saved configs or checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, TINY_DATA

pytestmark = pytest.mark.slow

SECRET = "a1b2c3d4e5f6" * 3 + "0123"  # 40 characters, shaped like a W&B API key


def test_wandb_secret_never_written_to_the_run_dir(tmp_path):
    env = {
        **os.environ,
        "WANDB_API_KEY": SECRET,
        "WANDB_MODE": "offline",  # no network here; offline still writes the full local run
        "DOWNSCALE_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("HYDRA_FULL_ERROR", None)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "downscale.train",
        *TINY_DATA,
        "logger=wandb",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files), "the offline W&B run was not written"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    leaking = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaking
    # the saved configs name no credentials at all
    configs = [run_dir / "hparams.yaml", *run_dir.rglob("*.yaml")]
    for path in configs:
        text = path.read_text().lower()
        assert "api_key" not in text and "wandb_api_key" not in text, path
    embedded = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["downscale"]
    assert "api_key" not in repr(embedded).lower()
