"""Tests of the training noise-level distributions (downscale.diffusion.noise)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats

from downscale.diffusion.noise import LogNormal, LogUniform, Mixture, VPTime
from downscale.diffusion.precond import vp_sigma_inv
from downscale.utils.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf" / "noise_levels"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_lognormal_moments():
    s = LogNormal(P_mean=-1.6, P_std=0.8)(100_000, generator=gen())
    assert s.shape == (100_000,) and s.dtype == torch.float32
    logs = s.log().double()
    assert logs.mean().item() == pytest.approx(-1.6, abs=4 * 0.8 / math.sqrt(1e5))
    assert logs.std().item() == pytest.approx(0.8, rel=0.01)


def test_loguniform_is_uniform_in_log():
    s = LogUniform(0.02, 80.0)(20_000, generator=gen(1))
    assert s.min() >= 0.02 * (1 - 1e-6) and s.max() <= 80.0 * (1 + 1e-6)
    lo, hi = math.log(0.02), math.log(80.0)
    p = stats.kstest(s.log().numpy(), stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue
    assert p > 1e-3


def test_vptime_times_uniform():
    d = VPTime(beta_d=19.9, beta_min=0.1, epsilon_t=1e-4)
    s = d(20_000, generator=gen(2))
    t = vp_sigma_inv(s.double(), 19.9, 0.1).numpy()
    assert t.min() >= 1e-4 - 1e-6 and t.max() <= 1 + 1e-6
    assert stats.kstest(t, stats.uniform(loc=1e-4, scale=1 - 1e-4).cdf).pvalue > 1e-3


def test_mixture_stated_fractions_with_disjoint_components():
    # Components with disjoint supports make the component of each draw identifiable.
    mix = Mixture([LogUniform(0.01, 0.1), LogUniform(1.0, 10.0)], [0.3, 0.7])
    g = gen(3)
    # Odd batch sizes exercise the randomised remainder: the long-run fraction must still be 0.3.
    draws = torch.cat([mix(7, generator=g) for _ in range(4000)])
    frac_low = (draws < 0.5).double().mean().item()
    assert frac_low == pytest.approx(0.3, abs=4 * math.sqrt(0.3 * 0.7 / draws.numel()))
    # An even batch holds the fractions exactly, and positions are shuffled.
    half = Mixture([LogUniform(0.01, 0.1), LogUniform(1.0, 10.0)], [0.5, 0.5])
    first_low = []
    for _ in range(400):
        s = half(8, generator=g)
        assert int((s < 0.5).sum()) == 4
        first_low.append(bool(s[0] < 0.5))
    assert 0.35 < np.mean(first_low) < 0.65


def test_reference_config_matches_mixture_cdf():
    dist = instantiate(OmegaConf.load(CONF / "reference.yaml"))
    assert isinstance(dist, Mixture) and dist.fractions == [0.5, 0.5]
    s = dist(20_000, generator=gen(4)).double().log().numpy()
    lo, hi = math.log(0.02), math.log(80.0)

    def cdf(v):
        return 0.5 * stats.norm.cdf(v, -1.6, 0.8) + 0.5 * np.clip((v - lo) / (hi - lo), 0, 1)

    assert stats.kstest(s, cdf).pvalue > 1e-3


def test_configs_instantiate():
    for name in ("edm", "vp"):
        dist = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
        s = dist(16, generator=gen())
        assert s.shape == (16,) and (s > 0).all()


def test_reproducible_with_generator():
    mix = Mixture([LogNormal(), LogUniform()], [0.5, 0.5])
    torch.testing.assert_close(mix(9, generator=gen(5)), mix(9, generator=gen(5)))
    assert not torch.equal(mix(9, generator=gen(5)), mix(9, generator=gen(6)))


def test_bad_parameters_are_user_errors():
    with pytest.raises(UserError):
        Mixture([LogNormal()], [0.5, 0.5])
    with pytest.raises(UserError):
        Mixture([LogNormal(), LogUniform()], [0.7, 0.7])
    with pytest.raises(UserError):
        LogUniform(1.0, 0.5)
    with pytest.raises(UserError):
        LogNormal(P_std=0)
