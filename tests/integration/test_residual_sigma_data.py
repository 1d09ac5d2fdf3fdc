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


@pytest.mark.parametrize("cross_fit", [0, 2])
def test_two_stage_run_measures_the_residual_std(tmp_path_factory, cross_fit):
    """With cross_fit=2 the std is of the out-of-fold residuals (each day from the net that did
    not train on it)."""
    overrides = [
        "model=residual",
        "model.regression_epochs=1",
        "trainer.max_epochs=2",
        f"model.cross_fit={cross_fit}",
        "model.cross_fit_block=2",
        *WHOLE_DOMAIN,
    ]
    name = f"residual_auto_cf{cross_fit}"
    with tiny_training(tmp_path_factory, name, *overrides) as (root, result):
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
                oof = {"time": b["time"]} if cross_fit else {}
                r = (b["target"] - model.regression(b["cond"], **oof)).numpy()
                values.append(r[b["mask"].expand_as(b["target"]).numpy() > 0])
        expected = np.concatenate(values).std()
        provisional = datamodule.scaled_target_std()
        assert measured == pytest.approx(expected, abs=1e-4)
        assert abs(measured - provisional) > 1e-3  # not the targets' std
        assert result["summary"]["sigma_data"] == measured
