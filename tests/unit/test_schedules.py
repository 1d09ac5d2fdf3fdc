"""Schedules: shape, monotonicity, end points, closed forms, validation, configs."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from downscale.sampling import schedules as sch
from downscale.utils.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf" / "schedule"
ALL = ["karras", "karras_sqrt", "exponential", "polyexponential", "vp", "linear"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_shape_decreasing_and_end_points(name: str, n: int) -> None:
    sigmas = getattr(sch, f"sigmas_{name}")(n, 0.002, 80.0)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (n + 1,)
    assert sigmas[-1] == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    first, last = (80.0**0.5, 0.002**0.5) if name == "karras_sqrt" else (80.0, 0.002)
    assert sigmas[0].item() == pytest.approx(first, rel=1e-6)
    if n > 1:
        assert sigmas[-2].item() == pytest.approx(last, rel=1e-5)


def test_karras_closed_form() -> None:
    n, lo, hi, rho = 10, 0.02, 80.0, 7.0
    a, b = hi ** (1 / rho), lo ** (1 / rho)
    expected = [(a + i / (n - 1) * (b - a)) ** rho for i in range(n)] + [0.0]
    got = sch.sigmas_karras(n, lo, hi, rho=rho)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_karras_sqrt_is_sqrt_and_karras_with_half_rho() -> None:
    k = sch.sigmas_karras(12, 0.02, 80.0, rho=7.0)
    ks = sch.sigmas_karras_sqrt(12, 0.02, 80.0, rho=7.0)
    torch.testing.assert_close(ks, k.sqrt())
    torch.testing.assert_close(ks, sch.sigmas_karras(12, 0.02**0.5, 80.0**0.5, rho=3.5))


def test_exponential_uniform_in_log_and_polyexponential_rho1() -> None:
    e = sch.sigmas_exponential(9, 0.01, 100.0)
    steps = e[:-1].double().log().diff()
    uniform = torch.full_like(steps, -math.log(1e4) / 8)
    torch.testing.assert_close(steps, uniform, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sch.sigmas_polyexponential(9, 0.01, 100.0, rho=1.0), e)
    p2 = sch.sigmas_polyexponential(9, 0.01, 100.0, rho=2.0)
    assert torch.all(p2[1:-2] < e[1:-2])  # rho > 1 spends more steps at low noise


def test_vp_reproduces_k_diffusion_curve() -> None:
    n, beta_d, beta_min, eps_s = 15, 19.9, 0.1, 1e-3
    t = torch.linspace(1.0, eps_s, n, dtype=torch.float64)
    # k-diffusion's get_sigmas_vp
    expected = torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1)
    got = sch.sigmas_vp(n, float(sch.sigma_vp(eps_s)), float(sch.sigma_vp(1.0)))
    torch.testing.assert_close(got[:-1].double(), expected, rtol=1e-6, atol=0)
    assert sch.vp_time(sch.sigma_vp(0.37)).item() == pytest.approx(0.37, rel=1e-12)


def test_linear_uniform() -> None:
    s = sch.sigmas_linear(5, 1.0, 9.0)
    assert s.tolist() == pytest.approx([9.0, 7.0, 5.0, 3.0, 1.0, 0.0])


@pytest.mark.parametrize(
    ("n", "lo", "hi"),
    [(0, 0.002, 80.0), (5, 0.0, 80.0), (5, 80.0, 0.002), (5, 1.0, 1.0), (2.5, 1, 2)],
)
def test_validation_raises_user_error(n, lo, hi) -> None:
    with pytest.raises(UserError, match=";"):
        sch.sigmas_karras(n, lo, hi)


def test_device_argument() -> None:
    assert sch.sigmas_exponential(3, 0.1, 1.0, device="cpu").device.type == "cpu"


@pytest.mark.parametrize("name", ALL)
def test_configs_instantiate(name: str) -> None:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    fn = hydra.utils.instantiate(cfg)
    sigmas = fn(5)
    assert sigmas.shape == (6,) and sigmas[-1] == 0
    assert cfg.sigma_min == 0.002 and cfg.sigma_max == 80.0


def test_sigma_max_scale_is_the_ratio_of_data_stds() -> None:
    assert sch.sigma_max_scale(0.0883) == pytest.approx(0.1766)
    assert sch.sigma_max_scale(0.2, reference=0.2) == 1.0
    assert sch.sigma_max_scale(None) == sch.sigma_max_scale(0.2, reference=None) == 1.0
    with pytest.raises(UserError, match="schedule_sigma_data=0"):
        sch.sigma_max_scale(0.2, reference=0)


def test_denoiser_sigma_data_reads_edm_preconditioning_only() -> None:
    from types import SimpleNamespace

    from downscale.diffusion.precond import EDMPrecond, VPPrecond

    net = torch.nn.Identity()
    assert sch.denoiser_sigma_data(SimpleNamespace(denoiser=EDMPrecond(net, 0.0883))) == 0.0883
    assert sch.denoiser_sigma_data(SimpleNamespace(denoiser=VPPrecond(net))) is None
    assert sch.denoiser_sigma_data(SimpleNamespace(generator=net)) is None
