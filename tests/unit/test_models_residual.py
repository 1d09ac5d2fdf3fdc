"""Residual (CorrDiff) model: generate = mean + residual, regression checkpoints, stages."""

from __future__ import annotations

import functools

import lightning as L
import numpy as np
import pytest
import torch

from downscale.models.regression import RegressionModel
from downscale.models.residual import ResidualModel, residual_std
from downscale.sampling.tiling import TiledDenoiser, tiled_one_shot
from downscale.utils.errors import UserError
from tests.conftest import CPU_AND_CUDA, compose_config
from tests.unit.models_helpers import (
    C_COND,
    C_OUT,
    SIZE,
    adam,
    batch,
    diffusion_loss,
    edm_precond,
    ema,
    tiny_net,
)


def make(**kwargs) -> ResidualModel:
    torch.manual_seed(0)
    kwargs.setdefault("regression_epochs", 1)
    return ResidualModel(
        tiny_net,
        edm_precond(),
        diffusion_loss(),
        out_channels=C_OUT,
        cond_channels=C_COND,
        optimizer=adam,
        ema=ema,
        **kwargs,
    )


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_generate_is_mean_plus_residual():
    model = make().eval()
    model.ema = None
    _perturb(model.body)  # a non-zero regression output
    cond = batch(b=2)["cond"]
    residual = torch.randn(2 * 3, C_OUT, SIZE, SIZE)
    seen = {}

    def fake_sampler(denoiser, cond_in, *, out_channels, generators, anchor):
        seen["cond"], seen["denoiser"] = cond_in, denoiser
        return residual

    out = model.generate(cond, 3, sampler=fake_sampler, generators=None)
    mean = model.regression(cond)
    assert out.shape == (2, 3, C_OUT, SIZE, SIZE)
    assert mean.abs().max() > 0
    expected = mean.repeat_interleave(3, 0) + residual
    torch.testing.assert_close(out.view(6, C_OUT, SIZE, SIZE), expected)
    # the residual denoiser is conditioned on the predictors and the mean
    assert seen["denoiser"] is model.denoiser
    torch.testing.assert_close(seen["cond"][:, C_COND:], mean.repeat_interleave(3, 0))


def test_the_regression_mean_is_tiled_with_the_samplers_wrapper():
    model = make().eval()
    model.ema = None
    _perturb(model.body)
    cond = batch(b=1)["cond"]
    seen = []
    model.regression.net.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-2:]))
    wrap = functools.partial(TiledDenoiser, tile=SIZE // 2, overlap=4)

    def zero_residual(denoiser, cond_in, *, out_channels, generators, anchor):
        return cond_in.new_zeros(cond_in.shape[0], out_channels, SIZE, SIZE)

    zero_residual.wrap = wrap
    out = model.generate(cond, 2, sampler=zero_residual, generators=None)
    assert seen and {tuple(s) for s in seen} == {(SIZE // 2, SIZE // 2)}  # tiles, not the field
    seen.clear()
    field = cond.new_zeros(1, C_OUT, SIZE, SIZE)
    expected = tiled_one_shot(lambda _f, c, a: model.regression(c, anchor=a), field, cond, wrap)
    torch.testing.assert_close(out, expected[:, None].expand(1, 2, C_OUT, SIZE, SIZE))
    untiled = model.regression(cond)
    assert not torch.allclose(expected, untiled)  # the tiles change the result: tiling was used


def test_conditional_mean_is_the_mean_generate_adds_residuals_to():
    model = make().eval()
    model.ema = None
    _perturb(model.body)
    cond = batch(b=2)["cond"]

    def zero_residual(denoiser, cond_in, *, out_channels, generators, anchor):
        return cond_in.new_zeros(cond_in.shape[0], out_channels, SIZE, SIZE)

    zero_residual.wrap = functools.partial(TiledDenoiser, tile=SIZE // 2, overlap=4)
    mean_model = model.conditional_mean()
    assert not mean_model.stochastic and not mean_model.needs_sampler
    out = mean_model.generate(cond, 1, sampler=zero_residual)
    assert out.shape == (2, 1, C_OUT, SIZE, SIZE) and out.abs().max() > 0
    torch.testing.assert_close(out, model.generate(cond, 1, sampler=zero_residual))
    untiled = mean_model.generate(cond, 1)
    torch.testing.assert_close(untiled[:, 0], model.regression(cond))
    with pytest.raises(UserError, match="n_members=3 must be 1"):
        mean_model.generate(cond, 3)


def test_stages_train_regression_then_residual():
    model = make(regression_epochs=1)
    assert model.in_regression_stage()  # epoch 0 outside a Trainer
    loss = model.training_step(batch(), 0)
    loss.backward()
    assert all(p.grad is None for p in model.denoiser.parameters())
    assert any(p.grad is not None for p in model.regression.parameters())
    model.zero_grad(set_to_none=True)
    model.regression_epochs = 0  # residual stage
    loss = model.training_step(batch(), 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.regression.parameters())
    assert any(p.grad is not None for p in model.denoiser.parameters())


def _regression_checkpoint(path, model):
    cfg = compose_config("train", ["model=regression", "paths.output_dir=/tmp/unused"])
    config = {
        "model": {"_target_": "downscale.models.regression.RegressionModel", "loss": "mse"},
        "net": {
            "_target_": "downscale.nets.unet.UNet",
            "_partial_": True,
            **{k: v for k, v in tiny_net.keywords.items()},
        },
        "seed": int(cfg.seed),
    }
    config["model"]["optimizer"] = {"_target_": "torch.optim.Adam", "_partial_": True}
    config["model"]["ema"] = {"_target_": "downscale.models.ema.EMA", "_partial_": True}
    channels = {"out_channels": C_OUT, "cond_channels": C_COND}
    torch.save(
        {
            "state_dict": model.state_dict(),
            "downscale": {"config": config, "channels": channels, "scalers": {}, "grid": {}},
        },
        path,
    )


def test_trains_from_a_regression_checkpoint(tmp_path):
    torch.manual_seed(1)
    regression = RegressionModel(
        tiny_net, out_channels=C_OUT, cond_channels=C_COND, optimizer=adam, ema=ema
    )
    _perturb(regression.regressor)
    regression.ema.update_parameters(regression.regressor)
    path = tmp_path / "regression.ckpt"
    _regression_checkpoint(path, regression)
    model = make(regression_ckpt=str(path))
    cond = batch()["cond"]
    torch.testing.assert_close(model.regression(cond), regression.inference_module()(cond))
    assert not any(p.requires_grad for p in model.regression.parameters())
    assert model.regression_epochs == 0 and not model.in_regression_stage()
    # the saved config no longer needs the regression file
    ckpt = {}
    model.run_info = {"config": {"model": {"regression_ckpt": str(path)}}}
    model.on_save_checkpoint(ckpt)
    assert ckpt["downscale"]["config"]["model"]["regression_ckpt"] is None
    assert ckpt["downscale"]["config"]["model"]["regression_trained"] is True
    assert model.run_info["config"]["model"]["regression_ckpt"] == str(path)


def test_missing_or_wrong_regression_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make(regression_ckpt=str(tmp_path / "missing.ckpt"))
    diffusion = tmp_path / "diffusion.ckpt"
    torch.save(
        {
            "state_dict": {},
            "downscale": {
                "config": {"model": {"_target_": "downscale.models.diffusion.DiffusionModel"}}
            },
        },
        diffusion,
    )
    with pytest.raises(UserError, match="not a regression one"):
        make(regression_ckpt=str(diffusion))
    with pytest.raises(UserError, match="needs a regression"):
        make(regression_epochs=0)


def test_residual_std_matches_numpy():
    model = make()
    _perturb(model.regression)
    batches = [batch(b=3, seed=s) for s in (0, 1)]
    values = []
    with torch.no_grad():
        for b in batches:
            r = (b["target"] - model.regression(b["cond"])).numpy()
            values.append(r[b["mask"].expand_as(b["target"]).numpy() > 0])
    expected = np.concatenate(values).std()
    assert residual_std(model.regression, batches, torch.device("cpu")) == pytest.approx(
        expected, rel=1e-6
    )
    # max_batches bounds the pass
    first = residual_std(model.regression, batches, torch.device("cpu"), max_batches=1)
    assert first == pytest.approx(values[0].std(), rel=1e-6)


def test_measured_sigma_data_reaches_denoisers_loss_and_checkpoints():
    model = make(measure_sigma_data=True)
    model.set_sigma_data(0.12345)
    assert model.denoiser.sigma_data == model.ema.module["denoiser"].sigma_data == 0.1235
    assert model.loss_fn.sigma_data == 0.1235
    model.run_info = {"config": {"model": {"precond": {"sigma_data": 0.3}, "loss": {"sigma_data": 0.3},
                                           "measure_sigma_data": True}}}  # fmt: skip
    ckpt = {}
    model.on_save_checkpoint(ckpt)
    saved = ckpt["downscale"]["config"]["model"]
    # a model built from the checkpoint's config (sampling) gets the measured value
    assert saved["precond"]["sigma_data"] == saved["loss"]["sigma_data"] == 0.1235
    assert saved["measure_sigma_data"] is False
    # a resumed run keeps the measured value instead of measuring again
    resumed = make(measure_sigma_data=True)
    resumed.on_load_checkpoint(ckpt)
    assert resumed.measured_sigma_data == resumed.denoiser.sigma_data == 0.1235
    fixed = make()  # a number in the config is not overridden
    fixed.on_load_checkpoint(ckpt)
    assert fixed.measured_sigma_data is None and fixed.denoiser.sigma_data == 0.5
    with pytest.raises(UserError, match="no spread"):
        model.set_sigma_data(0.0)


class _SpoilRegression(L.Callback):
    """Records the validated regression weights per epoch; ruins them after epoch ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, {}

    def on_validation_epoch_end(self, trainer, module) -> None:
        state = module.inference_module()["regression"].state_dict()
        self.seen[trainer.current_epoch] = {k: v.clone() for k, v in state.items()}

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.current_epoch == self.at:
            with torch.no_grad():
                for body in (module.body, module.ema.module):
                    for p in body["regression"].parameters():
                        p.add_(1.0)


def _fit(model, callback, max_epochs):
    trainer = L.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    batches = [batch(b=2, seed=s) for s in range(2)]
    loader = functools.partial(torch.utils.data.DataLoader, batch_size=None)
    trainer.fit(model, train_dataloaders=loader(batches), val_dataloaders=loader(batches[:1]))
    return trainer


@pytest.mark.parametrize("keep_best", [True, False])
def test_residual_stage_starts_from_the_best_regression_validation(keep_best):
    model = make(regression_epochs=3, regression_keep_best=keep_best)
    spoil = _SpoilRegression(at=0)  # epochs 1 and 2 validate far worse than epoch 0
    _fit(model, spoil, max_epochs=4)
    chosen = spoil.seen[0] if keep_best else spoil.seen[2]
    for body in (model.body, model.ema.module):
        for key, value in body["regression"].state_dict().items():
            torch.testing.assert_close(value, chosen[key])
    if keep_best:
        assert model.best_regression["epoch"] == 0 and "state" not in model.best_regression
        assert model.run_summary()["regression_best_epoch"] == 0
    else:
        assert model.best_regression is None


def test_best_regression_survives_a_checkpoint():
    model = make(regression_epochs=3)
    model.best_regression = {"epoch": 1, "loss": 0.5, "state": {"w": torch.ones(2)}}
    model.run_info = {"config": {}}
    ckpt = {}
    model.on_save_checkpoint(ckpt)
    resumed = make(regression_epochs=3)
    resumed.on_load_checkpoint(ckpt)
    assert resumed.best_regression["epoch"] == 1 and resumed.best_regression["loss"] == 0.5
    torch.testing.assert_close(resumed.best_regression["state"]["w"], torch.ones(2))


class _RecordMeans(L.Callback):
    """The regression's mode and its mean for a fixed batch at each residual-stage step."""

    def __init__(self) -> None:
        self.modes, self.means = [], []

    def on_train_batch_start(self, trainer, module, batch_, batch_idx) -> None:
        if not module.in_regression_stage():
            b = batch(b=2, seed=0)
            self.modes.append(module.regression.training)
            with torch.no_grad():
                self.means.append(module.regression.training_mean(b["cond"], None, b["time"]))


def test_frozen_regression_gives_the_eval_mean_despite_dropout():
    """With dropout in the net, the residual stage takes residuals around the eval-mode mean
    (the one sampling adds residuals to), not around a dropout-perturbed one; the denoiser
    keeps training mode (its dropout), also after the validation of each epoch."""
    torch.manual_seed(0)
    model = ResidualModel(
        functools.partial(tiny_net, dropout=0.5), edm_precond(), diffusion_loss(),
        out_channels=C_OUT, cond_channels=C_COND, optimizer=adam, ema=ema, regression_epochs=1,
    )  # fmt: skip
    record = _RecordMeans()
    _fit(model, record, max_epochs=3)
    assert len(record.means) == 4 and not any(record.modes)
    for mean in record.means[1:]:
        torch.testing.assert_close(mean, record.means[0], rtol=0, atol=0)
    b = batch(b=2, seed=0)
    with torch.no_grad():
        eval_mean = model.regression.eval()(b["cond"])
    torch.testing.assert_close(record.means[0], eval_mean, rtol=0, atol=0)
    assert model.denoiser.training


class _FixedWindows(torch.utils.data.Dataset):
    """Six fixed items (distinct time indices): a whole-domain-like training set."""

    fixed_items = True

    def __init__(self) -> None:
        self.items = []
        for t in range(6):
            item = {k: v[0] for k, v in batch(b=1, seed=10 + t).items()}
            item["time"] = torch.tensor(t)
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _fit_shuffled(
    mean_cache_gb: float, accelerator: str, precision: str = "32-true"
) -> ResidualModel:
    """Two regression epochs, then three residual ones, on shuffled batches of 2 (each epoch
    groups the items differently)."""
    L.seed_everything(0)
    model = make(regression_epochs=2, mean_cache_gb=mean_cache_gb)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_epochs=5, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(_FixedWindows(), batch_size=2, shuffle=True)
    trainer.fit(model, train_dataloaders=loader)
    return model


@pytest.mark.parametrize("accelerator", CPU_AND_CUDA)
def test_mean_cache_trains_the_same_weights_as_recomputing(accelerator):
    """The cached regression means are the ones a step computes: the same weights (to float32
    rounding: convolutions round differently for other batch sizes) after three residual epochs
    in shuffled batches, with 12 of 18 means looked up. On CUDA the cache lives on the card."""
    cached, plain = _fit_shuffled(1.0, accelerator), _fit_shuffled(0.0, accelerator)
    assert plain.mean_cache is None
    assert len(cached.mean_cache) == 6
    assert (cached.mean_cache.hits, cached.mean_cache.misses) == (12, 6)
    assert cached.run_summary()["mean_cache_hits"] == 12
    assert {v.device.type for v in cached.mean_cache._means.values()} == {accelerator}
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(cached.state_dict()[key], value)


@pytest.mark.parametrize("accelerator", CPU_AND_CUDA)
def test_mean_cache_under_bf16_autocast(accelerator):
    """Under bf16-mixed the cache keeps the means the autocast regression gives, and training
    from them stays close to recomputing them."""
    cached, plain = (_fit_shuffled(gb, accelerator, "bf16-mixed") for gb in (1.0, 0.0))
    assert (cached.mean_cache.hits, cached.mean_cache.misses) == (12, 6)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(cached.state_dict()[key], value)


def test_no_mean_cache_for_random_patches():
    """Items without ``fixed_items`` (random patches) are never cached."""
    model = make(regression_epochs=1)
    _fit(model, L.Callback(), max_epochs=2)
    assert model.mean_cache is None
