"""Regression model: loss values, training step, deterministic one-member generate."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from downscale.models.losses import PixelLoss
from downscale.models.regression import RegressionModel
from downscale.sampling.tiling import TiledDenoiser
from downscale.utils.errors import UserError
from tests.unit.models_helpers import C_COND, C_OUT, SIZE, adam, batch, ema, tiny_net


def make(loss: str = "mse") -> RegressionModel:
    torch.manual_seed(0)
    return RegressionModel(
        tiny_net, out_channels=C_OUT, cond_channels=C_COND, loss=loss, optimizer=adam, ema=ema
    )


@pytest.mark.parametrize("kind", ["mse", "mae"])
def test_pixel_loss_matches_numpy(kind):
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 2, 6, 6, generator=g), torch.randn(2, 2, 6, 6, generator=g)
    mask = (torch.rand(2, 1, 6, 6, generator=g) > 0.3).float()
    target[0, 0, 0, 0] = float("nan")
    mask[0, 0, 0, 0] = 0  # NaN on a masked pixel is ignored
    loss = PixelLoss(kind, variable_weights=[1.0, 3.0], trim=1)(pred, target, mask)
    d = (pred - target).numpy()
    e = d**2 if kind == "mse" else np.abs(d)
    e = (e * np.array([1.0, 3.0])[None, :, None, None]).mean(1)[:, 1:-1, 1:-1]
    m = mask.numpy()[:, 0, 1:-1, 1:-1]
    expected = np.mean([np.nansum(e[i] * m[i]) / m[i].sum() for i in range(2)])
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_training_step_is_finite_and_learns():
    model = make()
    b = batch()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.training_step(b, 0)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


def test_generate_contract_and_determinism():
    model = make().eval()
    assert model.stochastic is False and model.needs_sampler is False
    cond = batch(b=3)["cond"]
    out = model.generate(cond, 1)
    assert out.shape == (3, 1, C_OUT, SIZE, SIZE)
    g = [torch.Generator().manual_seed(i) for i in range(3)]
    torch.testing.assert_close(model.generate(cond, 1, generators=g), out, rtol=0, atol=0)
    # batch-independent: each field's prediction only depends on its own predictors (to the
    # batch-size-dependent float32 sums of the convolutions, test_unet.py)
    torch.testing.assert_close(model.generate(cond[1:2], 1), out[1:2], rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="n_members"):
        model.generate(cond, 2)


def test_generate_tiles_a_larger_domain_through_the_sampler_wrap():
    """tiling= reaches regression nets: a 32 x 48 field from 16 px tiles, in chunks of 4 tiles."""
    model = make().eval()
    model.ema = None  # live weights, with a non-zero output layer so that the output varies
    net = model.inference_module()
    out_conv = next(m for name, m in net.named_modules() if name.endswith("out_conv"))
    torch.nn.init.normal_(out_conv.weight, std=0.1, generator=torch.Generator().manual_seed(0))
    cond = batch(b=2, size=48)["cond"][..., :32, :]
    calls = []
    net.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape))
    tiled = model.generate(cond, 1, sampler=SimpleNamespace(wrap=functools.partial(
        TiledDenoiser, tile=16, overlap=8, max_batch=4)))  # fmt: skip
    assert tiled.shape == (2, 1, C_OUT, 32, 48) and torch.isfinite(tiled).all()
    assert max(shape[0] for shape in calls) == 4 and {s[-2:] for s in calls} == {(16, 16)}
    whole = net(cond)[:, None]  # the blend of overlapping tiles differs from one whole-field pass
    assert 0 < (tiled - whole).abs().mean() < whole.abs().mean()


def test_nan_loss_stops_with_step_and_hint():
    model = make()
    b = batch()
    b["target"][:, :, 5, 5] = float("nan")  # on valid pixels
    with pytest.raises(UserError, match=r"at step 0; lower the learning rate"):
        model.training_step(b, 0)
