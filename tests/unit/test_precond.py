"""Tests of the EDM and VP preconditioners (downscale.diffusion.precond)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from downscale.diffusion.precond import EDMPrecond, VPPrecond, vp_sigma, vp_sigma_inv
from downscale.nets.unet import UNet

TINY = dict(
    model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_levels=[], num_heads=1, dropout=0.0
)


class Recorder(nn.Module):
    """A stand-in backbone: F = 2 * x_in + noise_label (per sample), remembering its inputs."""

    def forward(self, x, noise_labels, cond, **kwargs):
        self.seen = (x.clone(), noise_labels.clone(), cond, kwargs)
        return 2 * x + noise_labels[:, None, None, None]


@pytest.mark.parametrize("s", [0.002, 0.02, 0.5, 1.0, 10.0, 80.0])
def test_edm_coefficients_closed_form(s):
    sd = 0.5
    pre = EDMPrecond(Recorder(), sigma_data=sd)
    c_skip, c_out, c_in, c_noise = (float(c) for c in pre.coefficients(torch.tensor(s)))
    assert c_skip == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-6)
    assert c_out == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-6)
    assert c_in == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-6)
    assert c_noise == pytest.approx(math.log(s) / 4, rel=1e-6, abs=1e-7)


def test_edm_forward_composition_and_net_inputs():
    pre = EDMPrecond(Recorder(), sigma_data=0.5)
    x = torch.randn(3, 2, 4, 4)
    cond = torch.randn(3, 1, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 20.0])
    out = pre(x, sigma, cond, anchor="passed")
    x_in, labels, cond_seen, kwargs = pre.net.seen
    c_skip, c_out, c_in, c_noise = (c[:, None, None, None] for c in pre.coefficients(sigma))
    torch.testing.assert_close(x_in, c_in * x)
    torch.testing.assert_close(labels, sigma.log() / 4)
    assert cond_seen is cond and kwargs == {"anchor": "passed"}
    torch.testing.assert_close(out, c_skip * x + c_out * (2 * c_in * x + c_noise))


def test_edm_unit_variance_of_net_input_and_target():
    # EDM's design: for data of std sigma_data, c_in (y + n) and the effective target
    # (y - c_skip (y + n)) / c_out both have unit variance at every sigma.
    gen = torch.Generator().manual_seed(0)
    pre = EDMPrecond(Recorder(), sigma_data=0.5)
    for s in (0.05, 1.0, 30.0):
        y = 0.5 * torch.randn(200_000, generator=gen)
        x = y + s * torch.randn(200_000, generator=gen)
        c_skip, c_out, c_in, _ = pre.coefficients(torch.tensor(s))
        assert (c_in * x).var().item() == pytest.approx(1.0, abs=0.02)
        assert ((y - c_skip * x) / c_out).var().item() == pytest.approx(1.0, abs=0.02)


def test_edm_denoiser_tends_to_identity_as_sigma_vanishes():
    torch.manual_seed(0)
    net = UNet(1, 2, 1, **TINY).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pre = EDMPrecond(net)
    x, cond = torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8)
    errors = [(pre(x, s, cond) - x).abs().max().item() for s in (1e-1, 1e-3, 1e-5)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4
    # and it does not at large sigma (the net's output matters there)
    assert (pre(x, 10.0, cond) - x).abs().max() > 0.1


def test_scalar_sigma_broadcasts():
    pre = EDMPrecond(Recorder())
    x = torch.randn(4, 1, 2, 2)
    ref = pre(x, torch.full((4,), 0.7), None)
    torch.testing.assert_close(pre(x, 0.7, None), ref)
    torch.testing.assert_close(pre(x, torch.tensor(0.7), None), ref)


def test_vp_sigma_closed_form_and_round_trip():
    beta_d, beta_min = 19.9, 0.1
    t = torch.linspace(1e-5, 1, 101, dtype=torch.float64)
    sig = vp_sigma(t, beta_d, beta_min)
    expected = torch.sqrt(torch.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)
    torch.testing.assert_close(sig, expected)
    torch.testing.assert_close(vp_sigma_inv(sig, beta_d, beta_min), t, rtol=1e-9, atol=1e-12)
    s = torch.logspace(-3, 2, 50, dtype=torch.float64)
    torch.testing.assert_close(vp_sigma(vp_sigma_inv(s, beta_d, beta_min), beta_d, beta_min), s)


def test_vp_attributes_and_coefficients():
    pre = VPPrecond(Recorder(), beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5)
    assert pre.sigma_max == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1))
    assert pre.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5)))
    x = torch.randn(2, 1, 3, 3)
    sigma = torch.tensor([0.3, 5.0])
    out = pre(x, sigma, None)
    x_in, labels, _, _ = pre.net.seen
    c_in = 1 / torch.sqrt(sigma**2 + 1)
    torch.testing.assert_close(x_in, c_in[:, None, None, None] * x)
    t = vp_sigma_inv(sigma.double(), 19.9, 0.1).float()
    torch.testing.assert_close(labels, 999 * t)
    F_x = 2 * x_in + labels[:, None, None, None]
    torch.testing.assert_close(out, x - sigma[:, None, None, None] * F_x)


def test_precond_under_bf16_autocast_returns_float32():
    torch.manual_seed(0)
    pre = EDMPrecond(UNet(1, 2, 1, **TINY))
    x, cond = torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pre(x, torch.tensor([0.5, 2.0]), cond)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
