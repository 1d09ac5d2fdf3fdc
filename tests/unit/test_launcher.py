"""hydra/launcher=slurm composes when hydra-submitit-launcher is installed."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF


def test_slurm_launcher_composes():
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed"
    )
    with initialize_config_dir(version_base=None, config_dir=str(CONF), job_name="test"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.tasks_per_node=4"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 1
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy")
