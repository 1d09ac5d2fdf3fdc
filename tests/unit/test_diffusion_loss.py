"""Tests of the denoising loss and its weightings (downscale.diffusion.loss)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from downscale.diffusion.loss import (
    DiffusionLoss,
    edm_weighting,
    snr_weighting,
    soft_min_snr_weighting,
    vp_weighting,
)
from downscale.diffusion.noise import LogNormal, LogUniform
from downscale.diffusion.precond import EDMPrecond
from downscale.nets.unet import UNet
from downscale.utils.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf"
SD = 0.5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ideal(s_data: float):
    """The posterior-mean denoiser for y ~ N(0, s_data^2) per pixel: D = s^2 / (s^2 + sigma^2) x."""

    def denoiser(x, sigma, cond):
        return s_data**2 / (s_data**2 + sigma[:, None, None, None] ** 2) * x

    return denoiser


def identity(x, sigma, cond):
    return x


def c_out_sq(sigma):
    return (sigma * SD) ** 2 / (sigma**2 + SD**2)


def test_weightings_match_k_diffusion_forms():
    # k-diffusion states weightings on the net's target F; in D space lambda = w_F / c_out^2.
    sigma = torch.logspace(-2, 2, 40, dtype=torch.float64)
    torch.testing.assert_close(edm_weighting(sigma, SD), 1 / c_out_sq(sigma))
    w_snr = SD**2 / (sigma**2 + SD**2)
    torch.testing.assert_close(snr_weighting(sigma, SD), w_snr / c_out_sq(sigma))
    w_soft = (sigma * SD) ** 2 / (sigma**2 + SD**2) ** 2
    torch.testing.assert_close(
        soft_min_snr_weighting(sigma, SD, gamma=None), w_soft / c_out_sq(sigma)
    )
    torch.testing.assert_close(vp_weighting(sigma, SD), sigma**-2)


def test_soft_min_snr_is_a_soft_minimum():
    sigma = torch.logspace(-3, 2, 60, dtype=torch.float64)
    lam = soft_min_snr_weighting(sigma, SD, gamma=5.0)
    hard = torch.minimum(sigma**-2, torch.tensor(5.0, dtype=torch.float64))
    assert (lam <= hard + 1e-12).all()  # (1/a + 1/b)^-1 <= min(a, b)
    assert (lam >= hard / 2 - 1e-12).all()  # ... >= min(a, b) / 2
    assert lam[0].item() == pytest.approx(5.0, rel=1e-4)  # low noise: capped at gamma
    assert lam[-1].item() == pytest.approx(sigma[-1].item() ** -2, rel=1e-3)  # high noise: SNR


def test_ideal_denoiser_expected_loss_and_beats_wrong_one():
    # For y ~ N(0, sd^2), the ideal denoiser has MSE c_out^2, so its EDM-weighted loss is 1 at all
    # sigma; the identity denoiser scores lambda sigma^2 = 1 + sigma^2 / sd^2 > 1.
    loss = DiffusionLoss(LogUniform(0.05, 5.0), edm_weighting, sigma_data=SD)
    y = SD * torch.randn(64, 2, 16, 16, generator=gen(1))
    good = loss(ideal(SD), y, None, generator=gen(2))
    bad = loss(identity, y, None, generator=gen(2))
    torch.testing.assert_close(good["sigma"], bad["sigma"])  # same draws for both
    assert good["loss"].item() == pytest.approx(1.0, abs=0.05)
    expected_bad = (1 + good["sigma"] ** 2 / SD**2).mean().item()
    assert bad["loss"].item() == pytest.approx(expected_bad, rel=0.05)
    assert good["loss"] < bad["loss"]
    # and a wrong shrinkage (as if the data were twice as wide) is worse than the ideal too
    assert loss(ideal(2 * SD), y, None, generator=gen(2))["loss"] > good["loss"]


def test_output_structure():
    loss = DiffusionLoss(LogNormal(), edm_weighting)
    out = loss(identity, torch.randn(5, 1, 4, 4), None, generator=gen())
    assert (
        out["loss"].shape == () and out["per_sample"].shape == (5,) and out["sigma"].shape == (5,)
    )
    torch.testing.assert_close(out["loss"], out["per_sample"].mean())
    torch.testing.assert_close(out["sigma"], LogNormal()(5, generator=gen()))


def test_masked_pixels_do_not_affect_loss():
    loss = DiffusionLoss(LogNormal(), edm_weighting)
    y = torch.randn(3, 2, 8, 8, generator=gen(1))
    mask = torch.ones(3, 1, 8, 8)
    mask[:, :, :3, :] = 0
    mask[1] = 0  # a sample with no valid pixel contributes 0, not NaN
    a = loss(ideal(SD), y, None, mask=mask, generator=gen(2))
    y2 = torch.where(mask.bool().expand_as(y), y, y + 100.0)
    y2[0, :, 0, 0] = float("nan")  # even NaN on an invalid pixel is ignored by a pixelwise denoiser
    b = loss(ideal(SD), y2, None, mask=mask, generator=gen(2))
    torch.testing.assert_close(a["per_sample"], b["per_sample"])
    assert a["per_sample"][1] == 0
    # and valid pixels do count
    c = loss(ideal(SD), y + 1.0, None, mask=mask, generator=gen(2))
    assert c["loss"] > a["loss"]


def test_masked_average_matches_manual_computation():
    loss = DiffusionLoss(LogNormal(), snr_weighting, variable_weights=[2.0, 0.5], trim=1)
    y = torch.randn(2, 2, 6, 6, generator=gen(1))
    mask = (torch.rand(2, 1, 6, 6, generator=gen(3)) > 0.3).float()
    out = loss(identity, y, None, mask=mask, generator=gen(4))
    sigma = LogNormal()(2, generator=gen(4))
    g = gen(4)
    LogNormal()(2, generator=g)  # advance the generator past the sigma draw
    noise = torch.randn(y.shape, generator=g) * sigma[:, None, None, None]
    err = noise**2 * torch.tensor([2.0, 0.5])[None, :, None, None]
    err = err.mean(1, keepdim=True)[..., 1:-1, 1:-1]
    m = mask[..., 1:-1, 1:-1]
    expected = (err * m).sum((1, 2, 3)) / m.sum((1, 2, 3)) * sigma**-2
    torch.testing.assert_close(out["per_sample"], expected)


def test_user_errors():
    y = torch.randn(1, 2, 4, 4)
    with pytest.raises(UserError, match="variable_weights"):
        DiffusionLoss(LogNormal(), edm_weighting, variable_weights=[1.0])(identity, y, None)
    with pytest.raises(UserError, match="trim"):
        DiffusionLoss(LogNormal(), edm_weighting, trim=2)(identity, y, None)


def test_weighting_configs_instantiate():
    sigma = torch.tensor([0.1, 1.0])
    for name, ref in [
        ("edm", edm_weighting(sigma, SD)),
        ("snr", snr_weighting(sigma, SD)),
        ("soft_min_snr", soft_min_snr_weighting(sigma, SD, gamma=5.0)),
        ("vp", vp_weighting(sigma, SD)),
    ]:
        fn = instantiate(OmegaConf.load(CONF / "loss_weighting" / f"{name}.yaml"))
        torch.testing.assert_close(fn(sigma, SD), ref)


@pytest.mark.slow
def test_tiny_net_overfits_one_batch():
    # ~5 s on one CPU thread: 150 Adam steps of the tiny UNet on one batch of 4 16x16 fields.
    torch.manual_seed(0)
    net = UNet(1, 2, 1, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_levels=[],
               num_heads=1, dropout=0.0)  # fmt: skip
    denoiser = EDMPrecond(net)
    noise_levels = instantiate(OmegaConf.load(CONF / "noise_levels" / "reference.yaml"))
    loss = DiffusionLoss(noise_levels, edm_weighting)
    cond = torch.randn(4, 2, 16, 16, generator=gen(1))
    # The target is a function of the predictors (as in downscaling), so it can be learnt exactly;
    # the EDM-weighted loss at init is ~1 per sample.
    y = 0.5 * cond[:, :1]

    def evaluate() -> float:
        with torch.no_grad():  # fixed sigmas and noise for a fair before/after comparison
            return sum(
                loss(denoiser, y, cond, generator=gen(100 + i))["loss"].item() for i in range(8)
            )

    before = evaluate()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = gen(7)
    start = time.perf_counter()
    for _ in range(150):
        opt.zero_grad()
        loss(denoiser, y, cond, generator=g)["loss"].backward()
        opt.step()
    after = evaluate()
    assert before / after > 5, (before, after, time.perf_counter() - start)
