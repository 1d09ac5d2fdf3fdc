"""model.precond.sigma_data=auto: the std of the scaled training targets, resolved by downscale.train."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from downscale.diffusion.loss import DiffusionLoss, edm_weighting
from downscale.diffusion.precond import EDMPrecond
from downscale.train import resolve_sigma_data
from downscale.utils.errors import UserError
from tests.conftest import compose_config, synthetic_datamodule

SPLITS = {"train": [0.0, 0.8], "val": [0.8, 0.9], "test": [0.9, 1.0]}


def test_scaled_target_std_matches_numpy(tmp_path):
    dm = synthetic_datamodule(tmp_path, n_days=40, splits=SPLITS)
    train = dm.split_indices["train"]
    raw = dm.ds.precip.isel(time=train).values
    expected = np.log10(1 + np.maximum(raw[:, dm.fields.mask], 0)).std() / 2  # LogScaler(2)
    assert dm.scaled_target_std() == pytest.approx(expected, rel=1e-5)
    # a subsample of evenly spaced days stays close to the full estimate
    sub = dm.scaled_target_std(max_values=int(dm.fields.mask.sum()) * 8)
    assert sub == pytest.approx(expected, rel=0.15) and sub != pytest.approx(expected, rel=1e-6)


def test_train_config_resolves_auto_into_the_config(tmp_path):
    dm = synthetic_datamodule(tmp_path, n_days=40, splits=SPLITS)
    cfg = compose_config("train", ["paths.output_dir=/tmp/unused"])
    assert cfg.model.precond.sigma_data == "auto"
    resolve_sigma_data(cfg, dm)
    assert cfg.model.precond.sigma_data == pytest.approx(dm.scaled_target_std(), abs=1e-4)
    assert cfg.model.loss.sigma_data == cfg.model.precond.sigma_data  # the loss weighting follows


def test_a_number_is_kept_and_the_residual_model_measures_its_own(tmp_path):
    dm = synthetic_datamodule(tmp_path, n_days=40, splits=SPLITS)
    cfg = compose_config("train", ["paths.output_dir=/tmp/unused", "model.precond.sigma_data=0.3"])
    resolve_sigma_data(cfg, dm)
    assert cfg.model.precond.sigma_data == 0.3
    cfg = compose_config("train", ["paths.output_dir=/tmp/unused", "model=residual"])
    assert cfg.model.precond.sigma_data == "auto" and cfg.model.measure_sigma_data is False
    resolve_sigma_data(cfg, dm)
    # provisional: the targets' std, replaced by the residual's once the regression is trained
    assert cfg.model.precond.sigma_data == pytest.approx(dm.scaled_target_std(), abs=1e-4)
    assert cfg.model.measure_sigma_data is True
    cfg = compose_config(
        "train", ["paths.output_dir=/tmp/unused", "model=residual", "model.precond.sigma_data=0.1"]
    )
    resolve_sigma_data(cfg, dm)
    assert cfg.model.precond.sigma_data == 0.1 and cfg.model.measure_sigma_data is False


def test_unresolved_auto_is_a_user_error():
    with pytest.raises(UserError, match="'auto' is measured from the data by downscale.train"):
        EDMPrecond(torch.nn.Identity(), sigma_data="auto")
    with pytest.raises(UserError, match="not a positive number"):
        DiffusionLoss(lambda n, device=None: torch.ones(n), edm_weighting, sigma_data=0)
