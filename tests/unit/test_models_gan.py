"""GAN: adaptive weight, discriminator heads, training steps, generate contract."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from downscale.models.discriminator import Discriminator
from downscale.models.gan import GANModel, adaptive_weight, discriminator_loss
from downscale.sampling.tiling import TiledDenoiser
from tests.unit.models_helpers import C_COND, C_OUT, SIZE, adam, batch, ema, generators, tiny_net


def make(warmup_steps: int = 0, **kwargs) -> GANModel:
    torch.manual_seed(0)
    return GANModel(
        tiny_net,
        discriminator=functools.partial(Discriminator, channels=[8, 16]),
        d_optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        out_channels=C_OUT,
        cond_channels=C_COND,
        noise_channels=2,
        content_draws=3,
        warmup_steps=warmup_steps,
        optimizer=adam,
        ema=ema,
        **kwargs,
    )


def test_adaptive_weight_is_the_gradient_norm_ratio_and_clamped():
    w = torch.zeros(3, requires_grad=True)
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    # d(a.w)/dw = a, d(b.w)/dw = b: ratio ||a|| / (||b|| + 1e-4) = 5 / 1.0001
    weight = adaptive_weight(a @ w, b @ w, w, max_weight=100.0)
    assert float(weight) == pytest.approx(5 / 1.0001, rel=1e-6)
    assert not weight.requires_grad
    # a vanishing adversarial gradient: 5 / 1e-4 = 5e4 is clamped to 100
    assert float(adaptive_weight(a @ w, 0.0 * (b @ w), w, max_weight=100.0)) == 100.0
    assert float(adaptive_weight(a @ w, 1e-7 * (b @ w), w, max_weight=7.0)) == 7.0


def test_discriminator_patch_head_sees_quarters():
    torch.manual_seed(0)
    disc = Discriminator(in_channels=C_OUT + C_COND, channels=[8, 16])
    y, cond = torch.randn(2, C_OUT, SIZE, SIZE), torch.randn(2, C_COND, SIZE, SIZE)
    out = disc(y, cond)
    assert out["global"].shape == (2, 1) and out["patch"].shape == (2, 4)
    y2 = y.clone()
    y2[:, :, : SIZE // 2, SIZE // 2 :] += 1.0  # only the second quarter (top rows, right half)
    out2 = disc(y2, cond)
    changed = (out2["patch"] - out["patch"]).abs() > 1e-6
    assert changed[:, 1].all() and not changed[:, [0, 2, 3]].any()
    assert ((out2["global"] - out["global"]).abs() > 1e-6).all()


@pytest.mark.parametrize(
    ("loss", "gp"), [("nonsaturating", 0.0), ("nonsaturating", 1.0), ("wasserstein", 10.0)]
)
def test_adversarial_step_updates_both_networks(loss, gp):
    model = make(loss=loss, gradient_penalty=gp)
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    out = model.training_step(batch(), 0)
    assert torch.isfinite(out)
    assert any(not torch.equal(a, p) for a, p in zip(g0, model.generator.parameters(), strict=True))
    assert any(
        not torch.equal(a, p) for a, p in zip(d0, model.discriminator.parameters(), strict=True)
    )
    assert int(model.gen_steps) == 1


def test_warmup_trains_only_the_generator():
    model = make(warmup_steps=2)
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    for _ in range(2):
        assert torch.isfinite(model.training_step(batch(), 0))
    for a, p in zip(d0, model.discriminator.parameters(), strict=True):
        torch.testing.assert_close(a, p, rtol=0, atol=0)
    model.training_step(batch(), 0)  # step 3: adversarial
    assert any(
        not torch.equal(a, p) for a, p in zip(d0, model.discriminator.parameters(), strict=True)
    )


def test_discriminator_loss_values():
    real = {"global": torch.zeros(2, 1), "patch": torch.zeros(2, 4)}
    fake = {"global": torch.ones(2, 1), "patch": torch.ones(2, 4)}
    ns = discriminator_loss("nonsaturating", real, fake)
    expected = torch.nn.functional.softplus(torch.tensor(0.0)) + torch.nn.functional.softplus(
        torch.tensor(1.0)
    )
    assert float(ns) == pytest.approx(float(expected))
    assert float(discriminator_loss("wasserstein", real, fake)) == pytest.approx(1.0)


def test_generate_contract_members_from_their_own_generators():
    model = make()
    for _ in range(2):  # a few steps so that the output depends on the noise
        model.training_step(batch(), 0)
    model.ema = None  # live weights (the EMA copy barely moved)
    model.eval()
    assert model.needs_sampler is False and model.stochastic is True
    cond = batch(b=2)["cond"]
    out = model.generate(cond, 3, generators=generators(6))
    assert out.shape == (2, 3, C_OUT, SIZE, SIZE)
    torch.testing.assert_close(model.generate(cond, 3, generators=generators(6)), out)
    assert not torch.allclose(out[:, 0], out[:, 1])
    # draw (time 1, member 2) is index 5: generating it alone with generators[5] gives the same field
    alone = model.generate(cond[1:2], 1, generators=generators(6)[5:6])
    # to the batch-size-dependent float32 sums of the convolutions (test_unet.py)
    torch.testing.assert_close(alone[0, 0], out[1, 2], rtol=1e-4, atol=1e-5)


def test_generate_tiles_noise_and_predictors_together():
    """With tiling=, each draw's noise field is cut into the same tiles as its predictors: the
    draws stay reproducible per (time, member) and equal the untiled ones where one tile covers
    the field."""
    model = make().eval()
    cond = batch(b=2)["cond"]
    wrap = functools.partial(TiledDenoiser, tile=8, overlap=4, max_batch=3)
    tiled = model.generate(cond, 2, sampler=SimpleNamespace(wrap=wrap), generators=generators(4))
    assert tiled.shape == (2, 2, C_OUT, SIZE, SIZE) and torch.isfinite(tiled).all()
    again = model.generate(cond, 2, sampler=SimpleNamespace(wrap=wrap), generators=generators(4))
    torch.testing.assert_close(tiled, again, rtol=0, atol=0)
    one_tile = functools.partial(TiledDenoiser, tile=SIZE, overlap=4)
    torch.testing.assert_close(
        model.generate(cond, 2, sampler=SimpleNamespace(wrap=one_tile), generators=generators(4)),
        model.generate(cond, 2, generators=generators(4)),
    )
