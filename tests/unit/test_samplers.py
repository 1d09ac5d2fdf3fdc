"""Samplers on Gaussian data, whose exact denoiser and probability-flow ODE solution are analytic.

Data x0 ~ N(MU, S^2) per pixel. Then D(x; sigma) = (S^2 x + sigma^2 MU) / (S^2 + sigma^2), the ODE
dx/dsigma = (x - D) / sigma = sigma (x - MU) / (S^2 + sigma^2) and its solution
x(sigma) = MU + (x(sigma_max) - MU) sqrt(S^2 + sigma^2) / sqrt(S^2 + sigma_max^2).
"""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from downscale.sampling import samplers as smp
from downscale.sampling.schedules import sigmas_karras
from downscale.utils.errors import UserError

MU, S = 0.3, 0.5
SMIN, SMAX = 0.002, 80.0
CONF = Path(__file__).resolve().parents[2] / "conf" / "sampler"
ALL = [
    "euler",
    "heun",
    "dpm2",
    "dpm2_heun",
    "euler_ancestral",
    "dpm2_ancestral",
    "lms",
    "dpmpp_2s_ancestral",
    "dpmpp_2m",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "dpm_adaptive",
]


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
    assert sigma.shape == (x.shape[0],)
    s2 = smp.append_dims(sigma, x.ndim) ** 2
    return (S**2 * x + s2 * MU) / (S**2 + s2)


def exact_ode(x_T: torch.Tensor, sigma: float) -> torch.Tensor:
    return MU + (x_T - MU) * math.sqrt(S**2 + sigma**2) / math.sqrt(S**2 + SMAX**2)


def test_all_samplers_have_configs() -> None:
    names = sorted(n.removeprefix("sample_") for n in dir(smp) if n.startswith("sample_"))
    assert names == sorted(ALL)
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(ALL)


# steps per sampler for the moment test: first-order samplers need more for a small bias
STEPS = {"euler": 256, "euler_ancestral": 256}


@pytest.mark.parametrize("name", ALL)
def test_moments_match_gaussian_data(name: str) -> None:
    """Samples have the data mean and variance (16384 pixels; sampling error about 1% on the
    variance), using the shipped config's parameters (e.g. dpm2_heun with the reference's churn)."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    steps = STEPS.get(name, 48)
    cfg.pop("steps")
    if name == "dpm_adaptive":
        cfg.rtol, cfg.atol = 0.01, 1e-3
    sampler = hydra.utils.instantiate(cfg)
    g = torch.Generator().manual_seed(123)
    x = torch.randn(4, 1, 64, 64, generator=g) * SMAX
    out = sampler(gaussian_denoiser, x, sigmas_karras(steps, SMIN, SMAX), cond=None, generator=g)
    n = out.numel()
    assert abs(out.mean().item() - MU) < 4 * S / math.sqrt(n)
    assert out.var().item() == pytest.approx(S**2, rel=4 * math.sqrt(2 / n) + 0.02)


def _slope(name: str, steps: list[int], **params) -> float:
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64) * SMAX
    errors = []
    for n in steps:
        sigmas = sigmas_karras(n, SMIN, SMAX).double()
        states: dict[int, torch.Tensor] = {}
        getattr(smp, f"sample_{name}")(
            gaussian_denoiser,
            x_T.clone(),
            sigmas,
            cond=None,
            callback=lambda info, states=states: states.__setitem__(info["i"], info["x"]),
            **params,
        )
        # state after n - 1 steps, at the last positive sigma (the last step is a plain denoise)
        err = (states[n - 1] - exact_ode(x_T, float(sigmas[n - 1]))).abs().max().item()
        errors.append(err)
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize(
    ("name", "params", "lo", "hi"),
    [
        ("euler", {}, 0.85, 1.2),
        ("heun", {}, 1.8, 2.5),
        ("dpm2", {}, 1.8, 2.5),
        ("dpm2_heun", {"s_churn": 0.0}, 1.8, 2.5),
        ("dpmpp_2m", {}, 1.8, 2.5),
        ("dpmpp_2m_sde", {"eta": 0.0}, 1.8, 2.5),
        ("lms", {}, 2.8, 4.5),
    ],
)
def test_ode_solvers_converge_at_their_order(name: str, params: dict, lo: float, hi: float) -> None:
    slope = _slope(name, [16, 32, 64, 128], **params)
    assert lo < slope < hi, f"{name}: observed order {slope:.2f}"


def test_dpm2_is_dpm2_heun_without_churn() -> None:
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * SMAX
    sig = sigmas_karras(10, SMIN, SMAX)
    a = smp.sample_dpm2(gaussian_denoiser, x, sig, cond=None)
    b = smp.sample_dpm2_heun(gaussian_denoiser, x, sig, cond=None, s_churn=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x, sigma, cond):
        self.calls += 1
        return gaussian_denoiser(x, sigma, cond)


@pytest.mark.parametrize(
    ("name", "nfe"),
    [
        ("euler", 10),
        ("heun", 19),
        ("dpm2_heun", 19),
        ("lms", 10),
        ("dpmpp_2m", 10),
        ("dpmpp_sde", 19),
    ],
)
def test_nfe(name: str, nfe: int) -> None:
    counter = Counter()
    x = torch.randn(1, 1, 4, 4) * SMAX
    getattr(smp, f"sample_{name}")(counter, x, sigmas_karras(10, SMIN, SMAX), cond=None)
    assert counter.calls == nfe


@pytest.mark.parametrize("name", ALL)
def test_per_element_generators_are_batch_independent(name: str) -> None:
    def noise(seed: int) -> torch.Tensor:
        return torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(seed)) * SMAX

    sampler = getattr(smp, f"sample_{name}")
    params = {"s_churn": 10.0, "s_tmin": 0.04, "s_tmax": 50.0} if name == "dpm2_heun" else {}
    if (
        name == "dpm_adaptive"
    ):  # its step sizes come from a batch-pooled error: use a tight tolerance
        params = {"rtol": 1e-4, "atol": 1e-5}
    sig = sigmas_karras(8, SMIN, SMAX)
    seeds = [11, 22, 33]
    gens = [torch.Generator().manual_seed(100 + s) for s in seeds]
    batch = sampler(
        gaussian_denoiser, torch.cat([noise(s) for s in seeds]), sig, cond=None, generator=gens,
        **params,
    )  # fmt: skip
    alone_gen = [torch.Generator().manual_seed(122)]
    alone = sampler(gaussian_denoiser, noise(22), sig, cond=None, generator=alone_gen, **params)
    tol = 1e-4 if name == "dpm_adaptive" else 1e-6
    torch.testing.assert_close(batch[1:2], alone, rtol=tol, atol=tol)
    other = sampler(
        gaussian_denoiser, noise(22), sig, cond=None, generator=[torch.Generator().manual_seed(7)],
        **params,
    )  # fmt: skip
    stochastic = name not in {"euler", "heun", "dpm2", "lms", "dpmpp_2m", "dpm_adaptive"}
    assert (not torch.allclose(other, alone)) == stochastic


def test_generator_list_length_checked() -> None:
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(UserError, match="one torch.Generator per batch element"):
        smp.randn_like(x, [torch.Generator()])


@pytest.mark.parametrize("name", ALL)
def test_nan_mid_sampling_names_the_step(name: str) -> None:
    sig = sigmas_karras(10, SMIN, SMAX)
    threshold = float(sig[4]) * 0.999  # the denoiser breaks below sigma_4

    def broken(x, sigma, cond):
        out = gaussian_denoiser(x, sigma, cond)
        return out * float("nan") if sigma[0] < threshold else out

    with pytest.raises(smp.SamplingError, match=r"step \d+") as info:
        getattr(smp, f"sample_{name}")(broken, torch.randn(1, 1, 4, 4) * SMAX, sig, cond=None)
    assert isinstance(info.value, UserError)
    if name in {"euler", "lms", "dpmpp_2m"}:  # one evaluation per step, at sigma_i: step 5 breaks
        assert "step 5 of 10" in str(info.value)


def test_callback_and_cond_are_passed() -> None:
    seen, conds = [], []

    def denoiser(x, sigma, cond):
        conds.append(cond)
        return gaussian_denoiser(x, sigma, cond)

    sig = sigmas_karras(5, SMIN, SMAX)
    smp.sample_heun(denoiser, torch.randn(1, 1, 4, 4), sig, cond="C", callback=seen.append)
    assert [d["i"] for d in seen] == list(range(5))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert seen[0]["sigma"] == pytest.approx(SMAX) and set(conds) == {"C"}


def test_bad_sigmas_rejected() -> None:
    with pytest.raises(UserError):
        smp.sample_euler(
            gaussian_denoiser, torch.randn(1, 1, 2, 2), torch.tensor([1.0, 2.0, 0.0]), cond=None
        )


def test_deferred_finite_check_reports_first_bad_step() -> None:
    """The accelerator path (per-step sums kept on the device, read at the end), run on CPU."""
    x = torch.ones(2, 1, 3, 3)
    guard = smp._FiniteGuard(x, 4, [4.0, 3.0, 2.0, 1.0, 0.0], "test")
    guard.sums = torch.zeros(4)  # force the deferred mode
    guard.step(0, x)
    guard.step(1, x * float("inf"))
    guard.step(2, x * float("nan"))
    with pytest.raises(smp.SamplingError, match=r"step 1 of 4 \(sigma 3\)"):
        guard.finish()


def test_half_precision_sigma_is_float32() -> None:
    seen = []

    def den(x, sigma, cond):
        seen.append(sigma.dtype)
        return x * 0

    smp.sample_euler(
        den, torch.ones(1, 1, 2, 2, dtype=torch.bfloat16), sigmas_karras(2, 0.1, 1.0), cond=None
    )
    assert seen == [torch.float32, torch.float32]
