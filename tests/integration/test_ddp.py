"""trainer=ddp: two CPU processes (gloo) give the same weights as one process with the same global batch.

Regression model (a deterministic loss), full-domain patches (no random crops) and one batch per
epoch, so both runs see exactly the same samples per step; DDP averages the two half-batch gradients,
which equals the full-batch gradient.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

COMMON = [
    "data.store.n_days=20",  # 16 training days: one batch of 16, or 2 x 8 under DDP
    "data.store.size=32",
    "data.train_dataset.patch_size=32",
    "trainer.max_epochs=2",
    "trainer.precision=32",
    "logger=none",
    "callbacks=none",
    "seed=3",
]


def _train(out, extra, cache_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DOWNSCALE_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-m", "downscale.train", *COMMON, f"paths.output_dir={out}", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path, cache_dir):
    single = _train(tmp_path / "single", ["model=regression", "data.batch_size=16"], cache_dir)
    ddp = _train(
        tmp_path / "ddp",
        [
            "model=regression",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy.process_group_backend=gloo",
            "data.batch_size=8",
        ],
        cache_dir,
    )
    assert single["global_step"] == ddp["global_step"] == 2
    a, b = single["state_dict"], ddp["state_dict"]
    assert a.keys() == b.keys()
    trained = False
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
        trained |= key == "regressor.net.out_conv.weight" and bool(a[key].abs().sum() > 0)
    assert trained  # the zero-initialised output layer has moved


@pytest.mark.slow
def test_ddp_gan_trains_with_two_cpu_processes(tmp_path, cache_dir):
    """Manual optimization (alternating D and G steps, adaptive weight) under DDP."""
    ckpt = _train(
        tmp_path / "gan",
        [
            "model=gan",
            "model.warmup_steps=1",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy.process_group_backend=gloo",
            "data.batch_size=8",
        ],
        cache_dir,
    )
    state = ckpt["state_dict"]
    assert int(state["gen_steps"]) == 2  # last.ckpt is the final epoch's, one generator step each
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
