"""A learned location map in every model type: one training step on random patches smaller than
``net.location_size`` with their anchors, validation, and generation on patches, tiled over the
whole domain and in the training-time panels."""

from __future__ import annotations

import functools

import pytest
import torch

from downscale.logging.panels import SamplePanels
from downscale.models.diffusion import DiffusionModel
from downscale.models.discriminator import Discriminator
from downscale.models.gan import GANModel
from downscale.models.regression import RegressionModel
from downscale.models.residual import ResidualModel, residual_std
from downscale.sampling.driver import OneShotRun
from downscale.sampling.tiling import TiledDenoiser
from downscale.utils.errors import UserError
from tests.unit.models_helpers import (
    C_COND,
    C_OUT,
    SIZE,
    adam,
    batch,
    diffusion_loss,
    edm_precond,
    ema,
    generators,
    quick_sampler,
    tiny_net,
)

DOMAIN = 2 * SIZE  # the map covers a 32 x 32 domain; patches are 16 x 16
location_net = functools.partial(tiny_net, location_channels=2, location_size=[DOMAIN, DOMAIN])
KINDS = ["diffusion", "regression", "gan", "residual_regression_stage", "residual"]


def make(kind: str):
    torch.manual_seed(0)
    common = {"out_channels": C_OUT, "cond_channels": C_COND, "optimizer": adam, "ema": ema}
    if kind == "diffusion":
        return DiffusionModel(location_net, edm_precond(), diffusion_loss(), **common)
    if kind == "regression":
        return RegressionModel(location_net, **common)
    if kind == "gan":
        return GANModel(
            location_net,
            discriminator=functools.partial(Discriminator, channels=[8, 16]),
            d_optimizer=adam,
            noise_channels=2,
            content_draws=2,
            warmup_steps=0,
            **common,
        )
    stage = {"regression_epochs": 1} if kind.endswith("stage") else {"regression_trained": True}
    return ResidualModel(location_net, edm_precond(), diffusion_loss(), **stage, **common)


def trained_map(model, kind: str) -> torch.nn.Parameter:
    """The location map that this model's training step updates."""
    name = {
        "diffusion": "denoiser",
        "regression": "regressor",
        "gan": "generator",
        "residual_regression_stage": "regression",
        "residual": "denoiser",
    }[kind]
    return getattr(model, name).net.location


def patch_batch(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of SIZE patches at random anchors of the DOMAIN."""
    out = batch(b, seed)
    g = torch.Generator().manual_seed(seed + 1)
    out["anchor"] = torch.randint(0, DOMAIN - SIZE + 1, (b, 2), generator=g)
    return out


def sampler_for(model, wrap=None):
    return quick_sampler(2) if model.needs_sampler else OneShotRun(wrap)


@pytest.mark.parametrize("kind", KINDS)
def test_trains_on_anchored_patches_and_generates(kind):
    model = make(kind)
    with torch.no_grad():  # non-zero output layers, so that the map gets gradients at step 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = patch_batch()
    loss = model.training_step(b, 0)  # the GAN steps its own optimizers
    assert torch.isfinite(loss)
    if kind != "gan":
        loss.backward()
    # only the patches' windows of the map get gradients: each patch read its own crop
    grad = trained_map(model, kind).grad.abs().sum(0)
    inside = torch.zeros(DOMAIN, DOMAIN, dtype=torch.bool)
    for r, c in b["anchor"].tolist():
        inside[r : r + SIZE, c : c + SIZE] = True
    assert grad[inside].sum() > 0 and grad[~inside].sum() == 0
    model.eval()
    model.validation_step(patch_batch(seed=1), 0)
    if kind.startswith("residual"):
        assert residual_std(model.regression, [b], torch.device("cpu")) > 0

    members = 2 if model.stochastic else 1
    cond, anchor = b["cond"], b["anchor"]
    run = functools.partial(model.generate, sampler=sampler_for(model), generators=generators(4))
    out = run(cond, members, anchor=anchor)
    assert out.shape == (2, members, C_OUT, SIZE, SIZE) and torch.isfinite(out).all()
    moved = run(cond, members, anchor=anchor.flip(0))  # the other patch's crop of the map
    assert not torch.allclose(out, moved)
    with pytest.raises(UserError, match="no patch anchor was given"):
        run(cond, members)
    panels = SamplePanels(n_members=members, steps=2).sample(model, cond, anchor)
    assert panels.shape == out.shape and torch.isfinite(panels).all()

    # the whole domain in tiles of the patch size: every tile reads its own crop of the map
    whole = batch(2, seed=2, size=DOMAIN)["cond"]
    wrap = functools.partial(TiledDenoiser, tile=SIZE, overlap=8)
    sampler = sampler_for(model, wrap)
    if model.needs_sampler:
        sampler.wrap = wrap
    tiled = model.generate(whole, members, sampler=sampler, generators=generators(4))
    assert tiled.shape == (2, members, C_OUT, DOMAIN, DOMAIN) and torch.isfinite(tiled).all()
