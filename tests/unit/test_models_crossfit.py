"""Cross-fitted regression means (model.cross_fit): folds, out-of-fold predictions and losses."""

from __future__ import annotations

import pytest
import torch

from downscale.models.crossfit import FoldedRegression, time_folds
from downscale.models.losses import PixelLoss
from downscale.models.regression import RegressionNet
from downscale.utils.errors import UserError
from tests.unit.models_helpers import C_COND, C_OUT, batch, tiny_net
from tests.unit.test_models_residual import _perturb, make


def folded(n: int = 2, block: int = 2) -> FoldedRegression:
    torch.manual_seed(0)
    nets = [RegressionNet(tiny_net(out_channels=C_OUT, cond_channels=C_COND, noisy_channels=0))
            for _ in range(n)]  # fmt: skip
    model = FoldedRegression(nets, block)
    _perturb(model)  # nets that differ and give non-zero outputs
    return model


def test_folds_are_blocks_of_consecutive_steps_dealt_in_turn():
    time = torch.arange(14)
    assert time_folds(time, 2, 3).tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    assert time_folds(time, 3, 2).tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2, 0, 0]


def test_out_of_fold_prediction_comes_from_the_net_that_left_the_day_out():
    model = folded(block=2)
    b = batch(b=4)
    time = torch.tensor([0, 2, 3, 5])  # folds 0, 1, 1, 0
    with torch.no_grad():
        out = model(b["cond"], time=time)
        each = [net(b["cond"]) for net in model.folds]
        torch.testing.assert_close(out[[0, 3]], each[0][[0, 3]])
        torch.testing.assert_close(out[[1, 2]], each[1][[1, 2]])
        # new days: the mean of the nets
        torch.testing.assert_close(model(b["cond"]), (each[0] + each[1]) / 2)
    assert (each[0] - each[1]).abs().max() > 1e-3


def test_a_net_learns_nothing_from_its_own_fold():
    model = folded(block=2)
    b = batch(b=2)
    loss_fn = PixelLoss("mse")
    time = torch.tensor([0, 1])  # both days in fold 0: only net 1 trains on them
    loss = model.training_loss(loss_fn, b["cond"], b["target"], b["mask"], time)
    loss.backward()
    assert all(p.grad is None for p in model.folds[0].parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.folds[1].parameters())
    with torch.no_grad():
        expected = loss_fn(model.folds[1](b["cond"]), b["target"], b["mask"])
    torch.testing.assert_close(loss, expected)


def test_residual_model_trains_folds_then_learns_out_of_fold_residuals():
    model = make(regression_epochs=1, cross_fit=2, cross_fit_block=1)
    assert isinstance(model.regression, FoldedRegression)
    assert len(model.compiled_modules()) == 3  # two regressions and the denoiser
    b = batch(b=2)  # times 0 and 1: one day in each fold
    model.training_step(b, 0).backward()
    for net in model.regression.folds:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    model.zero_grad(set_to_none=True)
    model.regression_epochs = 0  # residual stage: the denoiser sees the out-of-fold mean
    seen = {}
    model.loss_fn = lambda _d, residual, cond, mask, anchor=None: (
        seen.update(r=residual) or {"loss": residual.square().mean()}
    )
    model.training_step(b, 0)
    with torch.no_grad():
        oof = torch.stack([model.regression.folds[1](b["cond"])[0],
                           model.regression.folds[0](b["cond"])[1]])  # fmt: skip
    torch.testing.assert_close(seen["r"], b["target"] - oof)


def test_cross_fit_settings_that_cannot_work_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cross_fit=1"):
        make(cross_fit=1)
    with pytest.raises(UserError, match="drop model.regression_ckpt"):
        make(cross_fit=2, regression_ckpt=str(tmp_path / "r.ckpt"))
    with pytest.raises(UserError, match="cross_fit_block"):
        make(cross_fit=2, cross_fit_block=0)
    with pytest.raises(UserError, match="time indices"):
        folded().training_mean(batch(b=2)["cond"])
    # 28 radar frames in blocks of 30: fold 1 would hold nothing
    model = make(cross_fit=2, cross_fit_block=30)
    with pytest.raises(UserError, match=r"\[28, 0\] of 28.*lower model.cross_fit_block"):
        model.regression.check_folds(torch.arange(28))
    make(cross_fit=2, cross_fit_block=4).regression.check_folds(torch.arange(28))
