"""model=vp: VP preconditioning in the diffusion module, positional embedding, samplers work."""

from __future__ import annotations

import torch
from hydra.utils import instantiate

from downscale.diffusion.precond import VPPrecond
from downscale.nets.layers import PositionalEmbedding
from tests.conftest import compose_config
from tests.unit.models_helpers import C_COND, C_OUT, SIZE, batch, generators, quick_sampler


def build_vp():
    cfg = compose_config("train", ["model=vp", "paths.output_dir=/tmp/unused"])
    torch.manual_seed(0)
    return instantiate(
        cfg.model, net=instantiate(cfg.net), out_channels=C_OUT, cond_channels=C_COND
    )


def test_vp_config_builds_vp_denoiser_with_positional_embedding():
    model = build_vp()
    assert isinstance(model.denoiser, VPPrecond)
    assert isinstance(model.denoiser.net.map_noise, PositionalEmbedding)
    assert model.denoiser.beta_d == 19.9 and model.denoiser.beta_min == 0.1
    # noise labels are times in [0, 999] over the training range of sigma
    sigma = model.loss_fn.noise_levels(1000, generator=torch.Generator().manual_seed(0))
    labels = model.denoiser.coefficients(sigma)[3]
    assert labels.min() >= 0 and labels.max() <= 999 and labels.max() > 900


def test_vp_training_step_and_generate():
    model = build_vp()
    loss = model.training_step(batch(), 0)
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    cond = batch(b=2)["cond"]
    out = model.generate(cond, 3, sampler=quick_sampler(), generators=generators(6))
    assert out.shape == (2, 3, C_OUT, SIZE, SIZE) and torch.isfinite(out).all()
    again = model.generate(cond, 3, sampler=quick_sampler(), generators=generators(6))
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    assert not torch.equal(out[:, 0], out[:, 1])
