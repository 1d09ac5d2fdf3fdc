"""SamplePanels: seeded quick samples for every model type, and the PNG panel."""

from __future__ import annotations

import functools

import numpy as np
import torch

from downscale.diffusion.precond import EDMPrecond
from downscale.logging.panels import SamplePanels, plot_panels
from downscale.models.diffusion import DiffusionModel
from downscale.models.discriminator import Discriminator
from downscale.models.gan import GANModel
from downscale.models.regression import RegressionModel
from tests.unit.models_helpers import (
    C_COND,
    C_OUT,
    SIZE,
    adam,
    batch,
    diffusion_loss,
    edm_precond,
    tiny_net,
)


def models():
    torch.manual_seed(0)
    common = {"out_channels": C_OUT, "cond_channels": C_COND, "optimizer": adam}
    return {
        "diffusion": DiffusionModel(tiny_net, edm_precond(), diffusion_loss(), **common),
        "regression": RegressionModel(tiny_net, **common),
        "gan": GANModel(
            tiny_net,
            discriminator=functools.partial(Discriminator, channels=[8, 16]),
            d_optimizer=adam,
            **common,
        ),
    }


def test_quick_samples_are_seeded_and_shaped():
    panels = SamplePanels(n_members=2, steps=2)
    cond = batch(b=2)["cond"]
    for name, model in models().items():
        model.train()
        first = panels.sample(model, cond)
        members = 1 if name == "regression" else 2
        assert first.shape == (2, members, C_OUT, SIZE, SIZE), name
        torch.testing.assert_close(panels.sample(model, cond), first, rtol=0, atol=0)
        assert model.training  # the callback restores the training mode


def test_plot_panels_writes_png(tmp_path):
    truth = np.random.default_rng(0).gamma(1.0, size=(2, 8, 8))
    members = np.random.default_rng(1).gamma(1.0, size=(2, 3, 8, 8))
    truth[0, 0, 0] = np.nan  # masked pixel
    path = plot_panels(truth, members, "test", tmp_path / "panels" / "epoch_0000.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "panels").glob(".*tmp*"))


def test_quick_samples_scale_the_schedule_to_sigma_data():
    """Like downscale.sample: sigma_data 0.2 on a schedule written for 0.5 = sigma_max x 0.4."""
    torch.manual_seed(0)
    precond = functools.partial(EDMPrecond, sigma_data=0.2)
    model = DiffusionModel(
        tiny_net,
        precond,
        diffusion_loss(),
        out_channels=C_OUT,
        cond_channels=C_COND,
        optimizer=adam,
    )
    cond = batch(b=2)["cond"]
    scaled = SamplePanels(n_members=2, steps=3, schedule_sigma_data=0.5).sample(model, cond)
    by_hand = SamplePanels(
        n_members=2, steps=3, sigma_max=80.0 * 0.4, schedule_sigma_data=None
    ).sample(model, cond)
    as_written = SamplePanels(n_members=2, steps=3).sample(model, cond)  # the default
    torch.testing.assert_close(scaled, by_hand)
    assert not torch.allclose(scaled, as_written)
