"""model=residual with sigma_data=auto: measured on target - regression mean after the first stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from downscale.utils.checkpoint import load_checkpoint, load_model
from tests.conftest import TINY_DATA, compose_config, tiny_training

pytestmark = pytest.mark.slow


# whole-domain batches, so that the measurement can be repeated exactly here
WHOLE_DOMAIN = [
    "data.train_dataset._target_=downscale.data.datasets.UpsampleDataset",
    "~data.train_dataset.patch_size",
    "~data.train_dataset.patches_per_time",
]


def test_two_stage_run_measures_the_residual_std(tmp_path_factory):
    overrides = [
        "model=residual",
        "model.regression_epochs=1",
        "trainer.max_epochs=2",
        *WHOLE_DOMAIN,
    ]
    with tiny_training(tmp_path_factory, "residual_auto", *overrides) as (root, result):
        checkpoint = load_checkpoint(result["last_ckpt"])
        config = checkpoint["downscale"]["config"]
        measured = config["model"]["precond"]["sigma_data"]
        assert config["model"]["measure_sigma_data"] is False
        assert config["model"]["loss"]["sigma_data"] == measured
        model = load_model(checkpoint, result["last_ckpt"])
        assert model.denoiser.sigma_data == measured
        # independently: the frozen regression over the training split, in numpy
        cfg = compose_config("train", [*TINY_DATA, "paths.output_dir=/tmp/unused", *overrides])
        datamodule = instantiate(cfg.data)
        datamodule.prepare()
        values = []
        with torch.no_grad():
            for b in datamodule.train_dataloader():
                r = (b["target"] - model.regression(b["cond"])).numpy()
                values.append(r[b["mask"].expand_as(b["target"]).numpy() > 0])
        expected = np.concatenate(values).std()
        provisional = datamodule.scaled_target_std()
        assert measured == pytest.approx(expected, abs=1e-4)
        assert abs(measured - provisional) > 1e-3  # not the targets' std
        assert result["summary"]["sigma_data"] == measured
