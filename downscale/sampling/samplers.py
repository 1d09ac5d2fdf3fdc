"""Samplers for the EDM probability-flow ODE / reverse SDE, one flat function per method.

Every sampler has one signature (after k-diffusion, Crowson 2022)::

    sample_<name>(denoiser, x, sigmas, *, cond, generator=None, callback=None, **params) -> x0

``denoiser(x, sigma, cond) -> x0_hat`` is the EDM denoiser D(x; sigma) with ``sigma`` a ``(B,)``
tensor; ``x`` is the initial noise already multiplied by ``sigmas[0]``; ``sigmas`` is a decreasing
schedule ending in 0 (:mod:`downscale.sampling.schedules`). The ODE is ``dx/dsigma = (x - D(x;
sigma)) / sigma`` (Karras et al. 2022, eq. 1 with sigma(t) = t, s(t) = 1). ``generator`` is
``None``, a ``torch.Generator`` or a list with one generator per batch element (noise is then drawn
per element, so a member's draw does not depend on how the members were batched). ``callback``
receives ``{x, i, sigma, sigma_hat, denoised}`` once per step. Scalar step sizes are computed on the
host from ``sigmas.tolist()`` (one transfer per call), so the loop adds no device synchronisations,
except the non-finite check, which is deferred to the end of sampling on accelerators (see
:class:`_FiniteGuard`) and the error estimate of the adaptive sampler.

NFE per step: euler, euler_ancestral, lms, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde: 1; heun, dpm2,
dpm2_heun, dpm2_ancestral, dpmpp_2s_ancestral, dpmpp_sde: 2 (1 on the last step, to 0);
dpm_adaptive: 2 or 3 per attempted step, chosen by the error controller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from downscale.utils.errors import UserError

Denoiser = Callable[[Tensor, Tensor, Any], Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict[str, Any]], None] | None

__all__ = [
    "SamplingError",
    "append_dims",
    "randn_like",
    "sample_dpm2",
    "sample_dpm2_ancestral",
    "sample_dpm2_heun",
    "sample_dpm_adaptive",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lms",
    "to_d",
]


class SamplingError(UserError):
    """Sampling produced non-finite values; the message names the step."""


# --------------------------------------------------------------------------------------------------
# helpers


def append_dims(t: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims to ``t`` until it has ``ndim`` dims (to broadcast over x)."""
    extra = ndim - t.ndim
    if extra < 0:
        raise ValueError(f"tensor has {t.ndim} dims, more than the target {ndim}")
    return t[(...,) + (None,) * extra]


def to_d(x: Tensor, sigma: Tensor | float, denoised: Tensor) -> Tensor:
    """ODE derivative ``dx/dsigma = (x - D(x; sigma)) / sigma`` (Karras et al. 2022, eq. 3 and Alg.
    1).

    ``sigma`` is a number, a 0-d tensor or a ``(B,)`` tensor.
    """
    if isinstance(sigma, Tensor) and sigma.ndim:
        sigma = append_dims(sigma, x.ndim)
    return (x - denoised) / sigma


def randn_like(x: Tensor, generator: Generator = None) -> Tensor:
    """Standard normal noise shaped like ``x``.

    ``generator`` is None (global RNG), one ``torch.Generator``, or a list of generators, one per
    batch element, each drawing that element's noise (so results do not depend on batching).
    """
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(
            x.device, non_blocking=True
        )
    if len(generator) != x.shape[0]:
        raise UserError(
            f"got {len(generator)} generators for a batch of {x.shape[0]}; "
            "pass one torch.Generator per batch element (or a single generator)"
        )
    return torch.stack(
        [
            torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device)
            for g in generator
        ]
    )


def _host_sigmas(sigmas: Tensor | Sequence[float]) -> list[float]:
    """The schedule as Python floats (one device transfer), checked to decrease to a final 0."""
    values = sigmas.tolist() if isinstance(sigmas, Tensor) else [float(s) for s in sigmas]
    if len(values) < 2:
        raise UserError(f"a schedule needs at least 2 values, got {len(values)}; use steps >= 1")
    if values[-1] != 0.0 or any(b >= a for a, b in zip(values[:-1], values[1:], strict=False)):
        raise UserError(
            "sigmas must decrease strictly to a final 0; "
            "build them with downscale.sampling.schedules"
        )
    return values


class _Model:
    """Calls the denoiser with a ``(B,)`` sigma tensor made from a host float (in x's dtype, at
    least float32, so that half-precision samples still pass exact noise levels)."""

    def __init__(self, denoiser: Denoiser, x: Tensor, cond: Any) -> None:
        self.denoiser, self.cond = denoiser, cond
        self.batch, self.device = x.shape[0], x.device
        self.dtype = torch.promote_types(x.dtype, torch.float32)

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        s = torch.full((self.batch,), sigma, dtype=self.dtype, device=self.device)
        return self.denoiser(x, s, self.cond)


class _FiniteGuard:
    """Detects non-finite samples and raises :class:`SamplingError` naming the first bad step.

    The test is one reduction per step: the sum of ``x`` (in at least float32) is finite exactly
    when every element is (barring a sum beyond 3e38). On CPU it is read at once (no synchronisation
    cost there); on accelerators the per-step sums are stored on the device and read once at the
    end, so the sampling loop never stalls.
    """

    def __init__(self, x: Tensor, n_steps: int, sigmas: Sequence[float], name: str) -> None:
        self.eager = x.device.type == "cpu"
        self.dtype = torch.promote_types(x.dtype, torch.float32)
        self.sums = None if self.eager else torch.zeros(n_steps, dtype=self.dtype, device=x.device)
        self.sigmas, self.name, self.n = sigmas, name, n_steps

    def _raise(self, i: int) -> None:
        at = f" (sigma {self.sigmas[i]:.4g})" if i < len(self.sigmas) else ""
        raise SamplingError(
            f"{self.name}: non-finite values (NaN/inf) at step {i} of {self.n}{at}; check the "
            "checkpoint and the conditioning (diverged weights, unscaled inputs, float16 overflow) "
            "or use more steps"
        )

    def step(self, i: int, x: Tensor) -> None:
        total = x.sum(dtype=self.dtype)
        if self.sums is None:
            if not math.isfinite(total.item()):
                self._raise(i)
        else:
            self.sums[i] = total

    def finish(self) -> None:
        if self.sums is not None:
            bad = ~torch.isfinite(self.sums)
            if bool(bad.any()):
                self._raise(int(bad.nonzero()[0, 0]))


def _combine(*terms: tuple[float, Tensor]) -> Tensor:
    """``sum_k c_k t_k`` in one pass per term (fused multiply-adds, no temporaries per term)."""
    (c0, t0), *rest = terms
    out = t0 * c0
    for c, t in rest:
        out.add_(t, alpha=c)
    return out


def _churn_gamma(sigma: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras et al. (2022), Alg. 2 line 4: ``gamma = min(S_churn / N, sqrt(2) - 1)`` inside [tmin,
    tmax]."""
    if s_churn > 0 and s_tmin <= sigma <= s_tmax:
        return min(s_churn / n_steps, math.sqrt(2.0) - 1.0)
    return 0.0


def _add_churn(
    x: Tensor, sigma: float, gamma: float, s_noise: float, generator: Generator
) -> tuple[Tensor, float]:
    """Alg. 2 lines 5-6: raise the noise level to ``sigma_hat = sigma (1 + gamma)`` by adding fresh
    noise."""
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1.0 + gamma)
    std = s_noise * math.sqrt(sigma_hat**2 - sigma**2)
    return x.add(randn_like(x, generator), alpha=std), sigma_hat


def _ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the step ``sigma_from -> sigma_to`` into a deterministic step down to ``sigma_down``
    and fresh noise of std ``sigma_up`` (``sigma_down^2 + sigma_up^2 = sigma_to^2``), as in DDPM
    ancestral sampling (Ho et al. 2020) written for the VE process; ``eta`` scales the noise (0:
    deterministic)."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    up = eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
    up = min(sigma_to, up)
    return math.sqrt(sigma_to**2 - up**2), up


def _emit(callback: Callback, x: Tensor, i: int, sigma: float, sigma_hat: float, denoised: Tensor):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


# --------------------------------------------------------------------------------------------------
# Karras et al. (2022), Algorithm 2 family: Euler, Heun, DPM-Solver-2 steps with optional churn


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Euler steps of Karras et al. (2022), Algorithm 2 (first order; 1 NFE per step).

    ``x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d(x_hat, sigma_hat)``.
    """
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "euler")
    for i in range(n):
        gamma = _churn_gamma(s[i], n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _add_churn(x, s[i], gamma, s_noise, generator)
        denoised = model(x, sigma_hat)
        _emit(callback, x, i, s[i], sigma_hat, denoised)
        x = torch.add(x, to_d(x, sigma_hat, denoised), alpha=s[i + 1] - sigma_hat)  # x + h d
        guard.step(i, x)
    guard.finish()
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """EDM stochastic sampler, Karras et al. (2022) Algorithm 2 (Heun's 2nd-order correction).

    ``x' = x_hat + h d_i``; ``x_{i+1} = x_hat + h (d_i + d(x', sigma_{i+1})) / 2`` with ``h =
    sigma_{i+1} - sigma_hat``; the last step (to sigma = 0) is Euler. 2 NFE per step. ``s_churn =
    0`` gives the deterministic Algorithm 1.
    """
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "heun")
    for i in range(n):
        gamma = _churn_gamma(s[i], n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _add_churn(x, s[i], gamma, s_noise, generator)
        denoised = model(x, sigma_hat)
        _emit(callback, x, i, s[i], sigma_hat, denoised)
        d = to_d(x, sigma_hat, denoised)
        h = s[i + 1] - sigma_hat
        if s[i + 1] == 0:
            x = torch.add(x, d, alpha=h)  # Euler: x + h d
        else:
            x_euler = torch.add(x, d, alpha=h)  # x + h d
            d_next = to_d(x_euler, s[i + 1], model(x_euler, s[i + 1]))
            x = torch.add(x, d + d_next, alpha=0.5 * h)  # x + h (d + d') / 2
        guard.step(i, x)
    guard.finish()
    return x


def _dpm2_step(model: _Model, x: Tensor, d: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One DPM-Solver-2 step (Lu et al. 2022, Alg. 1 with r1 = 1/2) in the EDM variables.

    Evaluates D at the geometric midpoint ``sigma_mid = exp((log sigma + log sigma_next) / 2)`` (the
    midpoint in lambda = -log sigma), reached by an Euler step, and takes the full step with the
    midpoint derivative. In these variables DPM-Solver's exponential-integrator updates reduce
    exactly to these Euler-form updates. The step to sigma_next = 0 is Euler.
    """
    if sigma_next == 0:
        return torch.add(x, d, alpha=sigma_next - sigma)  # Euler
    sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(sigma_next)))
    x_mid = torch.add(x, d, alpha=sigma_mid - sigma)
    d_mid = to_d(x_mid, sigma_mid, model(x_mid, sigma_mid))
    return torch.add(x, d_mid, alpha=sigma_next - sigma)


@torch.no_grad()
def sample_dpm2_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-2 midpoint steps inside the EDM stochastic sampler (Karras et al. 2022, Alg. 2).

    The reference system's best sampler (its "Heun dpm2"; k-diffusion's ``sample_dpm_2``): per step,
    churn ``gamma = min(s_churn / N, sqrt(2) - 1)`` if ``s_tmin <= sigma_i <= s_tmax``, ``sigma_hat
    = sigma_i (1 + gamma)``, ``x_hat = x + s_noise sqrt(sigma_hat^2 - sigma_i^2) eps``, then one
    DPM-Solver-2 step from sigma_hat to sigma_{i+1} (:func:`_dpm2_step`). 2 NFE per step, 1 on the
    last (Euler to 0).
    """
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "dpm2_heun")
    for i in range(n):
        gamma = _churn_gamma(s[i], n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _add_churn(x, s[i], gamma, s_noise, generator)
        denoised = model(x, sigma_hat)
        _emit(callback, x, i, s[i], sigma_hat, denoised)
        x = _dpm2_step(model, x, to_d(x, sigma_hat, denoised), sigma_hat, s[i + 1])
        guard.step(i, x)
    guard.finish()
    return x


@torch.no_grad()
def sample_dpm2(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
) -> Tensor:
    """Deterministic DPM-Solver-2 (Lu et al. 2022, Alg. 1, r1 = 1/2): :func:`sample_dpm2_heun`
    without churn. 2 NFE per step, 1 on the last (Euler to 0)."""
    return sample_dpm2_heun(
        denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, s_churn=0.0
    )


# --------------------------------------------------------------------------------------------------
# ancestral samplers (fresh noise every step)


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral sampling with Euler steps: deterministic step to ``sigma_down``, then noise of std
    ``sigma_up`` (:func:`_ancestral_step`; Ho et al. 2020 in VE form, as in k-diffusion). 1
    NFE/step."""
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "euler_ancestral")
    for i in range(n):
        denoised = model(x, s[i])
        _emit(callback, x, i, s[i], s[i], denoised)
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
        x = torch.add(x, to_d(x, s[i], denoised), alpha=sigma_down - s[i])
        if sigma_up > 0:
            x = x.add(randn_like(x, generator), alpha=s_noise * sigma_up)
        guard.step(i, x)
    guard.finish()
    return x


@torch.no_grad()
def sample_dpm2_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 steps to ``sigma_down`` (:func:`_dpm2_step`), then noise
    of std ``sigma_up``. 2 NFE per step, 1 on the last."""
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "dpm2_ancestral")
    for i in range(n):
        denoised = model(x, s[i])
        _emit(callback, x, i, s[i], s[i], denoised)
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
        x = _dpm2_step(model, x, to_d(x, s[i], denoised), s[i], sigma_down)
        if sigma_up > 0:
            x = x.add(randn_like(x, generator), alpha=s_noise * sigma_up)
        guard.step(i, x)
    guard.finish()
    return x


# --------------------------------------------------------------------------------------------------
# linear multistep


# 3-point Gauss-Legendre rule on [-1, 1]: exact for polynomials up to degree 5
_GL_NODES = (-math.sqrt(0.6), 0.0, math.sqrt(0.6))
_GL_WEIGHTS = (5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0)


def _lms_coefficients(s: Sequence[float], i: int, order: int) -> list[float]:
    """Adams-Bashforth weights for step i on the non-uniform grid ``s``: ``c_j = int_{s_i}^{s_{i+1}}
    l_j(tau) dtau`` with ``l_j`` the Lagrange basis polynomial on the nodes ``s_i, s_{i-1}, ...,
    s_{i-order+1}``. The integrands have degree <= 3, so a 3-point Gauss-Legendre rule integrates
    them exactly (k-diffusion uses adaptive quadrature instead)."""
    if order > 4:
        raise UserError(f"lms order must be 1..4, got {order}; set sampler.order")
    nodes = [s[i - k] for k in range(order)]
    a, b = s[i], s[i + 1]
    taus = [0.5 * (a + b) + 0.5 * (b - a) * u for u in _GL_NODES]
    coeffs = []
    for j in range(order):
        total = 0.0
        for tau, weight in zip(taus, _GL_WEIGHTS, strict=True):
            basis = 1.0
            for k in range(order):
                if k != j:
                    basis *= (tau - nodes[k]) / (nodes[j] - nodes[k])
            total += weight * basis
        coeffs.append(0.5 * (b - a) * total)
    return coeffs


@torch.no_grad()
def sample_lms(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep (Adams-Bashforth) on the ODE in sigma, order up to ``order`` (the first
    steps use lower orders as history accumulates); as k-diffusion's ``sample_lms``. 1 NFE per step.
    """
    if not 1 <= order <= 4:
        raise UserError(f"lms order must be 1..4, got {order}; set sampler.order")
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    coeffs = [_lms_coefficients(s, i, min(i + 1, order)) for i in range(n)]
    guard = _FiniteGuard(x, n, s, "lms")
    history: list[Tensor] = []  # newest first
    for i in range(n):
        denoised = model(x, s[i])
        _emit(callback, x, i, s[i], s[i], denoised)
        history.insert(0, to_d(x, s[i], denoised))
        del history[order:]
        x = _combine((1.0, x), *zip(coeffs[i], history, strict=False))
        guard.step(i, x)
    guard.finish()
    return x


# --------------------------------------------------------------------------------------------------
# DPM-Solver++ family (Lu et al. 2022b), data prediction in lambda = -log sigma


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1, r = 1/2) to ``sigma_down``, then noise.

    With ``h = lambda_down - lambda_i``: ``u = (sigma_s / sigma_i) x - expm1(-h/2) D_i`` at the
    midpoint ``sigma_s``, then ``x = (sigma_down / sigma_i) x - expm1(-h) D(u, sigma_s)``. 2
    NFE/step.
    """
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "dpmpp_2s_ancestral")
    for i in range(n):
        denoised = model(x, s[i])
        _emit(callback, x, i, s[i], s[i], denoised)
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
        if sigma_down == 0:
            x = denoised  # Euler step to sigma = 0
        else:
            h = math.log(s[i]) - math.log(sigma_down)
            sigma_mid = s[i] * math.exp(-0.5 * h)
            x_mid = (sigma_mid / s[i]) * x - math.expm1(-0.5 * h) * denoised
            x = (sigma_down / s[i]) * x - math.expm1(-h) * model(x_mid, sigma_mid)
        if sigma_up > 0:
            x = x.add(randn_like(x, generator), alpha=s_noise * sigma_up)
        guard.step(i, x)
    guard.finish()
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> Tensor:
    """Stochastic DPM-Solver++ (2nd order, single step; k-diffusion's ``sample_dpmpp_sde``).

    Stage 1 takes an ancestral DPM-Solver++(1) step to the intermediate ``sigma_s = sigma_i e^{-r
    h}``; stage 2 steps from sigma_i with ``D_d = (1 - 1/(2r)) D_i + 1/(2r) D(u, sigma_s)``.
    k-diffusion draws both stages' noise from one Brownian path (torchsde); here the two normalised
    increments of one Brownian path over ``[sigma_s, sigma_i]`` and ``[sigma_{i+1}, sigma_i]`` are
    drawn exactly (two normals per step, correlated as the path requires), so no Brownian tree is
    needed. 2 NFE per step.
    """
    if not 0 < r <= 1:
        raise UserError(f"dpmpp_sde needs 0 < r <= 1, got r={r}; set sampler.r (default 0.5)")
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "dpmpp_sde")
    fac = 1.0 / (2.0 * r)
    for i in range(n):
        denoised = model(x, s[i])
        _emit(callback, x, i, s[i], s[i], denoised)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            sigma_s = s[i] * math.exp(-r * h)
            # Brownian increments over [sigma_s, sigma_i] and [sigma_{i+1}, sigma_s], normalised
            z1 = randn_like(x, generator)
            z2 = randn_like(x, generator)
            noise_1 = z1
            w1, w2 = s[i] - sigma_s, sigma_s - s[i + 1]
            noise_2 = (math.sqrt(w1) * z1 + math.sqrt(w2) * z2) / math.sqrt(w1 + w2)
            # stage 1
            sd, su = _ancestral_step(s[i], sigma_s, eta)
            x_2 = (sd / s[i]) * x - math.expm1(math.log(sd) - math.log(s[i])) * denoised
            if su > 0:
                x_2 = x_2.add(noise_1, alpha=s_noise * su)
            denoised_2 = model(x_2, sigma_s)
            # stage 2
            sd, su = _ancestral_step(s[i], s[i + 1], eta)
            denoised_d = (1.0 - fac) * denoised + fac * denoised_2
            x = (sd / s[i]) * x - math.expm1(math.log(sd) - math.log(s[i])) * denoised_d
            if su > 0:
                x = x.add(noise_2, alpha=s_noise * su)
        guard.step(i, x)
    guard.finish()
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): a second-order multistep method, 1 NFE per step.

    ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i - expm1(-h_i) D_d`` with ``h_i = lambda_{i+1} -
    lambda_i``, ``r_i = h_{i-1} / h_i`` and ``D_d = (1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1}`` (``D_d
    = D_i`` on the first step and on the last step, to 0).
    """
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "dpmpp_2m")
    old_denoised, h_last = None, 0.0
    for i in range(n):
        denoised = model(x, s[i])
        _emit(callback, x, i, s[i], s[i], denoised)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            k = 0.0 if old_denoised is None else h / (2.0 * h_last)  # 1 / (2 r)
            # x = (sigma_{i+1} / sigma_i) x - expm1(-h) ((1 + k) D_i - k D_{i-1}), fused
            terms = [(s[i + 1] / s[i], x), (-math.expm1(-h) * (1.0 + k), denoised)]
            if old_denoised is not None:
                terms.append((math.expm1(-h) * k, old_denoised))
            x = _combine(*terms)
            h_last = h
        old_denoised = denoised
        guard.step(i, x)
    guard.finish()
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, SDE variant; k-diffusion's ``sample_dpmpp_2m_sde``).

    With ``h = lambda_{i+1} - lambda_i`` and ``eta h`` extra decay: ``x = (sigma_{i+1}/sigma_i)
    e^{-eta h} x + (1 - e^{-(1+eta) h}) D_i + correction + sigma_{i+1} sqrt(1 - e^{-2 eta h})
    s_noise z``, where the correction uses ``D_i - D_{i-1}`` with the ``midpoint`` or ``heun``
    weights. 1 NFE per step; ``eta = 0`` is the deterministic 2M ODE solver.
    """
    if solver_type not in ("midpoint", "heun"):
        raise UserError(
            f"dpmpp_2m_sde solver_type must be 'midpoint' or 'heun', got {solver_type!r}; "
            "set sampler.solver_type"
        )
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "dpmpp_2m_sde")
    old_denoised, h_last = None, 0.0
    for i in range(n):
        denoised = model(x, s[i])
        _emit(callback, x, i, s[i], s[i], denoised)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = eta * h
            one_minus = -math.expm1(-h - eta_h)  # 1 - e^{-(1 + eta) h}
            terms = [(s[i + 1] / s[i] * math.exp(-eta_h), x), (one_minus, denoised)]
            if old_denoised is not None:
                inv_r = h / h_last
                if solver_type == "heun":
                    weight = (one_minus / (-h - eta_h) + 1.0) * inv_r
                else:
                    weight = 0.5 * one_minus * inv_r
                # + weight (D_i - D_{i-1})
                terms += [(weight, denoised), (-weight, old_denoised)]
            if eta:
                std = s[i + 1] * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise
                terms.append((std, randn_like(x, generator)))
            x = _combine(*terms)
            h_last = h
        old_denoised = denoised
        guard.step(i, x)
    guard.finish()
    return x


def _dpmpp_3m_weights(h: float, h_eta: float, h_1: float, h_2: float, history: int) -> np.ndarray:
    """Weights of ``(D_i, D_{i-1}, D_{i-2})`` in the DPM-Solver++(3M) update (Lu et al. 2022b, App.
    B): ``(1 - e^{-h_eta}) D_i + phi_2 D1 - phi_3 D2`` with the divided differences ``D1_0 = (D_i -
    D_{i-1}) / r0``, ``D1_1 = (D_{i-1} - D_{i-2}) / r1``, ``D1 = D1_0 + (D1_0 - D1_1) r0 / (r0 +
    r1)``, ``D2 = (D1_0 - D1_1) / (r0 + r1)``, ``r0 = h_{i-1} / h``, ``r1 = h_{i-2} / h``. The
    update is linear in the D's, so the formulas are evaluated on their coefficient vectors (unit
    vectors below) and the tensors combined in one pass. With one past output it is the 2M update,
    with none DPM-Solver++(1)."""
    D0, D1_, D2_ = np.eye(3)
    w = -math.expm1(-h_eta) * D0
    phi_2 = math.expm1(-h_eta) / h_eta + 1.0
    if history >= 2:
        r0, r1 = h_1 / h, h_2 / h
        d1_0 = (D0 - D1_) / r0
        d1_1 = (D1_ - D2_) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_3 = phi_2 / h_eta - 0.5
        w = w + phi_2 * d1 - phi_3 * d2
    elif history == 1:
        w = w + phi_2 * (D0 - D1_) / (h_1 / h)
    return w


@torch.no_grad()
def sample_dpmpp_3m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion's ``sample_dpmpp_3m_sde``): third-order multistep in lambda
    = -log sigma (Lu et al. 2022b), with SDE noise.

    With ``h_eta = (1 + eta) h``: ``x = e^{-h_eta} x + (1 - e^{-h_eta}) D_i + phi_2 D1 - phi_3 D2``,
    where ``phi_2 = expm1(-h_eta) / h_eta + 1`` and ``phi_3 = phi_2 / h_eta - 1/2`` are the
    exponential-integrator weights and D1, D2 the divided differences of the last three denoised
    outputs (:func:`_dpmpp_3m_weights`); then noise of std ``sigma_{i+1} sqrt(1 - e^{-2 eta h})``.
    The first two steps use orders 1 and 2, which in our convergence measurements (eta = 0) limit
    its global order to about 2. 1 NFE per step.
    """
    s = _host_sigmas(sigmas)
    n, model = len(s) - 1, _Model(denoiser, x, cond)
    guard = _FiniteGuard(x, n, s, "dpmpp_3m_sde")
    denoised_1 = denoised_2 = None
    h_1 = h_2 = 0.0
    for i in range(n):
        denoised = model(x, s[i])
        _emit(callback, x, i, s[i], s[i], denoised)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            h_eta = h * (eta + 1.0)
            history = 0 if denoised_1 is None else 1 if denoised_2 is None else 2
            w = _dpmpp_3m_weights(h, h_eta, h_1, h_2, history)
            terms = [(math.exp(-h_eta), x), (w[0], denoised)]
            terms += [(w[k], d) for k, d in ((1, denoised_1), (2, denoised_2)) if d is not None]
            if eta:
                std = s[i + 1] * math.sqrt(-math.expm1(-2.0 * h * eta)) * s_noise
                terms.append((std, randn_like(x, generator)))
            x = _combine(*terms)
            h_1, h_2 = h, h_1
        denoised_1, denoised_2 = denoised, denoised_1
        guard.step(i, x)
    guard.finish()
    return x


# --------------------------------------------------------------------------------------------------
# adaptive step size: DPM-Solver-12 / -23 (Lu et al. 2022, Sec. 4 and Alg. 4-5)


class _PIDController:
    """PID step-size controller for embedded error estimates (Söderlind 2003; as in k-diffusion)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8) -> None:  # fmt: skip
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1.0 / (error + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1.0 + math.atan(factor - 1.0)  # smooth limiter
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


class _DPMSolver:
    """DPM-Solver single steps in the noise-prediction form, with lambda = -log sigma (Lu et al.
    2022, Alg. 1 and 2 for sigma(lambda) = e^{-lambda}, alpha = 1).

    Each update is written as one linear combination of ``x`` and the noise predictions
    (:func:`_combine`), and an intermediate point is built only when its prediction is not cached
    yet: the pair of solutions that the adaptive sampler compares shares its evaluations, and the
    tensor operations per network evaluation stay few (they are the sampler's whole overhead).
    """

    def __init__(self, model: _Model) -> None:
        self.model = model
        self.nfe = 0

    def eps(self, cache: dict[str, Tensor], key: str, point: Callable[[], Tensor], lam: float
            ) -> Tensor:  # fmt: skip
        """The noise prediction ``(x - D(x; sigma)) / sigma`` at ``point()``, cached under ``key``."""
        if key not in cache:
            sigma = math.exp(-lam)
            cache[key] = _combine(
                (1.0 / sigma, point()), (-1.0 / sigma, self.model(point(), sigma))
            )
            self.nfe += 1
        return cache[key]

    def _stage(
        self, x: Tensor, lam: float, r: float, h: float, eps: Tensor
    ) -> Callable[[], Tensor]:
        """The first-order point ``u = x - sigma_s expm1(r h) eps`` at ``s = lam + r h``, built on
        demand (once)."""
        made: list[Tensor] = []

        def point() -> Tensor:
            if not made:
                made.append(
                    _combine((1.0, x), (-math.exp(-(lam + r * h)) * math.expm1(r * h), eps))
                )
            return made[0]

        return point

    def step_1(self, x: Tensor, lam: float, lam_next: float, cache: dict[str, Tensor]) -> Tensor:
        """DPM-Solver-1 (= DDIM): ``x_t = x_s - sigma_t expm1(h) eps_s``."""
        h = lam_next - lam
        eps = self.eps(cache, "eps", lambda: x, lam)
        return _combine((1.0, x), (-math.exp(-lam_next) * math.expm1(h), eps))

    def step_2(self, x: Tensor, lam: float, lam_next: float, cache: dict[str, Tensor],
               r1: float = 0.5) -> Tensor:  # fmt: skip
        """DPM-Solver-2 (Alg. 1): ``x_t = x_s - sigma_t expm1(h) eps_s - sigma_t / (2 r1) expm1(h)
        (eps_r1 - eps_s)``."""
        h = lam_next - lam
        eps = self.eps(cache, "eps", lambda: x, lam)
        eps_r1 = self.eps(cache, "eps_r1", self._stage(x, lam, r1, h, eps), lam + r1 * h)
        a = math.exp(-lam_next) * math.expm1(h)
        b = a / (2 * r1)
        return _combine((1.0, x), (b - a, eps), (-b, eps_r1))

    def step_3(self, x: Tensor, lam: float, lam_next: float, cache: dict[str, Tensor],
               r1: float = 1 / 3, r2: float = 2 / 3) -> Tensor:  # fmt: skip
        """DPM-Solver-3 (Alg. 2)."""
        h = lam_next - lam
        eps = self.eps(cache, "eps", lambda: x, lam)
        eps_r1 = self.eps(cache, "eps_r1", self._stage(x, lam, r1, h, eps), lam + r1 * h)
        s2 = lam + r2 * h
        sig_s2 = math.exp(-s2)
        c = sig_s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1.0)
        u2 = _combine((1.0, x), (c - sig_s2 * math.expm1(r2 * h), eps), (-c, eps_r1))
        eps_r2 = self.eps(cache, "eps_r2", lambda: u2, s2)
        sig_t = math.exp(-lam_next)
        d = sig_t / r2 * (math.expm1(h) / h - 1.0)
        return _combine((1.0, x), (d - sig_t * math.expm1(h), eps), (-d, eps_r2))


def _step_error(x_low: Tensor, x_high: Tensor, scale: Tensor, rtol: float, atol: float) -> float:
    """RMS of ``(x_low - x_high) / max(atol, rtol scale)`` (Lu et al. 2022, Sec. 4.1), where
    ``scale = max(|x_low|, |x_prev|)`` (overwritten); written as ``rtol max(scale, atol / rtol)`` to
    save tensor operations per step."""
    diff = x_low - x_high
    if rtol > 0:
        diff.div_(scale.clamp_min_(atol / rtol))
        return float(torch.linalg.vector_norm(diff)) / (rtol * math.sqrt(diff.numel()))
    return float(torch.linalg.vector_norm(diff)) / (atol * math.sqrt(diff.numel()))


@torch.no_grad()
def sample_dpm_adaptive(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any,
    generator: Generator = None,
    callback: Callback = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    max_steps: int = 1000,
) -> Tensor:
    """Adaptive-step DPM-Solver-12 / -23 (Lu et al. 2022, Sec. 4.1; k-diffusion's
    ``sample_dpm_adaptive``).

    Uses only ``sigmas[0]`` and the smallest positive sigma (``sigmas[-2]``): the step sizes in
    lambda = -log sigma are chosen by a PID controller from the difference between an
    order-``order`` and an order-``order - 1`` solution (shared evaluations), measured as an RMS
    over the whole batch of ``(x_low - x_high) / max(atol, rtol max(|x_low|, |x_prev|))``; a step is
    accepted when that error allows it. Finally ``x0 = D(x; sigma_min)`` (the Euler step to 0 of the
    other samplers). NFE: ``order`` per attempted step (accepted or not) + 1. Because the error is
    pooled over the batch, the step sequence (and so the result) depends on the batch composition.
    ``eta > 0`` adds ancestral noise.
    """
    if order not in (2, 3):
        raise UserError(f"dpm_adaptive order must be 2 or 3, got {order}; set sampler.order")
    s = _host_sigmas(sigmas)
    sigma_min = s[-2]
    model = _Model(denoiser, x, cond)
    solver = _DPMSolver(model)
    lam, lam_end = -math.log(s[0]), -math.log(sigma_min)
    pid = _PIDController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    guard = _FiniteGuard(x, max_steps + 1, [], "dpm_adaptive")
    prev_abs, step = x.abs(), 0
    while lam < lam_end - 1e-5:
        if step >= max_steps:
            raise SamplingError(
                f"dpm_adaptive: no convergence within {max_steps} attempted steps; "
                "raise sampler.rtol/atol or sampler.max_steps"
            )
        cache: dict[str, Tensor] = {}
        lam_next = min(lam_end, lam + pid.h)
        if eta:
            sd, su = _ancestral_step(math.exp(-lam), math.exp(-lam_next), eta)
            lam_target = min(lam_end, -math.log(sd))
            su = math.sqrt(max(math.exp(-2 * lam_next) - math.exp(-2 * lam_target), 0.0))
        else:
            lam_target, su = lam_next, 0.0
        if order == 2:
            x_low = solver.step_1(x, lam, lam_target, cache)
            x_high = solver.step_2(x, lam, lam_target, cache)
        else:
            x_low = solver.step_2(x, lam, lam_target, cache, r1=1 / 3)
            x_high = solver.step_3(x, lam, lam_target, cache)
        low_abs = x_low.abs()
        error = _step_error(x_low, x_high, torch.maximum(low_abs, prev_abs), rtol, atol)
        if not math.isfinite(error):
            guard._raise(step)
        if callback is not None:
            sigma = math.exp(-lam)
            _emit(callback, x, step, sigma, sigma, x - sigma * cache["eps"])
        if pid.propose_step(error):
            prev_abs = low_abs
            x = x_high
            if su > 0:
                x = x.add(randn_like(x, generator), alpha=s_noise * su)
            lam = lam_next
        step += 1
    x = model(x, sigma_min)
    guard.step(step, x)
    return x
