"""Noise-level schedules: pure functions ``sigmas_<name>(n, sigma_min, sigma_max, *, device,
**params)``.

Each returns a strictly decreasing float32 tensor of ``n + 1`` noise levels whose last value is 0
(the final step of every sampler goes to the clean sample). The ``n`` positive levels run from
``sigma_max`` to ``sigma_min`` (``karras_sqrt`` is the one exception: it returns their square roots,
see its docstring). Values are computed in float64 and rounded once to float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from downscale.utils.errors import UserError

__all__ = [
    "denoiser_sigma_data",
    "sigma_max_scale",
    "sigma_vp",
    "sigmas_exponential",
    "sigmas_karras",
    "sigmas_karras_sqrt",
    "sigmas_linear",
    "sigmas_polyexponential",
    "sigmas_vp",
    "vp_time",
]


def _validate(n: int, sigma_min: float, sigma_max: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(
            f"a schedule needs n >= 1 steps, got {n!r}; set sampler.steps to an integer >= 1"
        )
    if not (0.0 < float(sigma_min) < float(sigma_max)) or not math.isfinite(float(sigma_max)):
        raise UserError(
            f"a schedule needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}; set schedule.sigma_min and schedule.sigma_max accordingly"
        )


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise UserError(
            f"schedule parameter {name} must be > 0, got {value}; set schedule.{name} > 0"
        )


def _finish(sigmas: Tensor, device: torch.device | str | None) -> Tensor:
    """Append the final 0 and round to float32 on ``device``."""
    out = torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)
    return out.to(device) if device is not None else out


def _ramp(n: int) -> Tensor:
    """``i / (n - 1)`` for ``i = 0 .. n - 1`` in float64 (``[0]`` when ``n == 1``)."""
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64)


def sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, *, rho: float = 7.0, device=None
) -> Tensor:
    """Karras et al. (2022), eq. 5: ``(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``,
    then 0."""
    _validate(n, sigma_min, sigma_max)
    _positive("rho", rho)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return _finish((hi + _ramp(n) * (lo - hi)) ** rho, device)


def sigmas_karras_sqrt(
    n: int, sigma_min: float, sigma_max: float, *, rho: float = 7.0, device=None
) -> Tensor:
    """The element-wise square root of :func:`sigmas_karras` (the reference codebase's adaptation).

    It runs from ``sqrt(sigma_max)`` to ``sqrt(sigma_min)`` (e.g. 8.94 .. 0.141 for 80 .. 0.02),
    then 0: the reference used it with models whose noise variable is ``sigma^2``. Algebraically it
    is the Karras schedule on ``[sqrt(sigma_min), sqrt(sigma_max)]`` with ``rho / 2``.
    """
    return sigmas_karras(n, sigma_min, sigma_max, rho=rho, device=device).sqrt()


def sigmas_exponential(n: int, sigma_min: float, sigma_max: float, *, device=None) -> Tensor:
    """Uniform steps in ``log sigma`` from ``sigma_max`` to ``sigma_min``, then 0."""
    _validate(n, sigma_min, sigma_max)
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    return _finish(logs.exp(), device)


def sigmas_polyexponential(
    n: int, sigma_min: float, sigma_max: float, *, rho: float = 1.0, device=None
) -> Tensor:
    """``log sigma`` polynomial in the ramp: ``exp(log smin + (1 - i/(n-1))^rho (log smax - log
    smin))``.

    ``rho = 1`` is :func:`sigmas_exponential`; ``rho > 1`` spends more steps at low noise.
    """
    _validate(n, sigma_min, sigma_max)
    _positive("rho", rho)
    ramp = (1.0 - _ramp(n)) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return _finish((log_min + ramp * (log_max - log_min)).exp(), device)


def sigma_vp(t: Tensor | float, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """VP noise level at time t (Song et al. 2021; Karras et al. 2022, Table 1): ``sigma(t) =
    sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()


def vp_time(sigma: Tensor | float, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """Inverse of :func:`sigma_vp`: t solving ``beta_d t^2 / 2 + beta_min t = log1p(sigma^2)``."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return ((beta_min**2 + 2.0 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d


def sigmas_vp(
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    beta_d: float = 19.9,
    beta_min: float = 0.1,
    device=None,
) -> Tensor:
    """Uniform steps in VP time (Song et al. 2021), from ``t(sigma_max)`` down to ``t(sigma_min)``,
    then 0.

    k-diffusion's ``get_sigmas_vp(n, beta_d, beta_min, eps_s)`` takes ``t`` uniform on ``[eps_s,
    1]`` whatever the model's range; this is the same curve parameterised by the noise range
    instead: ``sigmas_vp(n, sigma_vp(eps_s), sigma_vp(1))`` reproduces it (with eps_s = 1e-3 that is
    ``sigma_min = 0.0105``, ``sigma_max = 152``).
    """
    _validate(n, sigma_min, sigma_max)
    _positive("beta_d", beta_d)
    _positive("beta_min", beta_min)
    t_max, t_min = vp_time(sigma_max, beta_d, beta_min), vp_time(sigma_min, beta_d, beta_min)
    t = t_max + _ramp(n) * (t_min - t_max)
    return _finish(sigma_vp(t, beta_d, beta_min), device)


def sigmas_linear(n: int, sigma_min: float, sigma_max: float, *, device=None) -> Tensor:
    """Uniform steps in sigma from ``sigma_max`` to ``sigma_min``, then 0."""
    _validate(n, sigma_min, sigma_max)
    return _finish(torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64), device)


def denoiser_sigma_data(model: object) -> float | None:
    """The ``sigma_data`` of the EDM denoiser a model samples with (``model.denoiser``), or None
    for models without one (VP preconditioning, regression, GAN)."""
    value = getattr(getattr(model, "denoiser", None), "sigma_data", None)
    return None if value is None else float(value)


def sigma_max_scale(sigma_data: float | None, reference: float | None = 0.5) -> float:
    """The factor ``sigma_data / reference`` that moves a schedule's ``sigma_max`` written for data of
    std ``reference`` to data of std ``sigma_data`` (1 when either is None).

    EDM's sigma_max 80 is 160x the std 0.5 it was chosen for (Karras et al. 2022, Sec. 5): the
    start of sampling must be noise far above the data's std, a ratio, so a denoiser trained on
    narrower data (``sigma_data=auto``) starts lower. ``sigma_min`` is not scaled: the end of
    sampling must stay within the trained noise levels, which are absolute (``conf/noise_levels``),
    and scaling it below them cost accuracy (docs/sampling.md, "Schedules and sigma_data").
    """
    if sigma_data is None or reference is None:
        return 1.0
    if not float(reference) > 0:
        raise UserError(
            f"schedule_sigma_data={reference} must be positive; use 0.5 (EDM) or null to keep "
            "the schedule as written"
        )
    return float(sigma_data) / float(reference)
