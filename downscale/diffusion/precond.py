"""Denoiser preconditioning (Karras et al. 2022, "Elucidating the Design Space...", Table 1).

A preconditioner wraps a backbone ``F`` (``net(x, noise_labels, cond)``) into the denoiser

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), cond),

the one interface that losses and samplers use (``docs/architecture.md``, "Denoiser").
"""

from __future__ import annotations

import torch
from torch import nn

from downscale.utils.errors import UserError


def vp_sigma(t: torch.Tensor | float, beta_d: float, beta_min: float) -> torch.Tensor:
    """VP noise level ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` (EDM Table 1)."""
    t = t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)
    return torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()


def vp_sigma_inv(sigma: torch.Tensor | float, beta_d: float, beta_min: float) -> torch.Tensor:
    """Inverse of :func:`vp_sigma`: ``t = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min)
    / beta_d``."""
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.tensor(float(sigma), dtype=torch.float64)
    return ((beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d


def sigma_data_value(sigma_data: float | str) -> float:
    """``sigma_data`` as a positive float; ``auto`` is only resolved by ``downscale.train``."""
    try:
        value = float(sigma_data)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise UserError(
            f"sigma_data={sigma_data!r} is not a positive number; 'auto' is measured from the data by "
            "downscale.train, so pass a number when building a model directly"
        )
    return value


def as_batch_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Return ``sigma`` as a float32 tensor of shape ``(B,)`` on ``x``'s device.

    Accepts a Python float, a 0-d / one-element tensor (broadcast to the batch) or a (B,) tensor.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
    return sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma


class EDMPrecond(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours").

    c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
    c_noise = log(s) / 4, with s = sigma and sd = ``sigma_data``.

    ``sigma_min``/``sigma_max`` are the noise range the model is meant for (REFERENCE sampling range
    0.02..80; EDM's image defaults are 0.002..80); samplers may use them as defaults.
    """

    def __init__(
        self,
        net: nn.Module,
        sigma_data: float = 0.5,
        sigma_min: float = 0.02,
        sigma_max: float = 80.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data_value(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return ``(c_skip, c_out, c_in, c_noise)`` for a tensor of noise levels."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None, **net_kwargs
    ) -> torch.Tensor:
        """Return ``D(x; sigma)``; extra keyword arguments (e.g. ``anchor``) go to the net."""
        sigma = as_batch_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        c_skip, c_out, c_in = (c[:, None, None, None] for c in (c_skip, c_out, c_in))
        F_x = self.net(c_in * x, c_noise, cond, **net_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)


class VPPrecond(nn.Module):
    """Variance-preserving preconditioning (Song et al. 2021 "VP SDE", as in EDM Table 1).

    c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = (M - 1) sigma^-1(s): the net
    predicts the noise (epsilon) and reads the continuous time scaled to [0, M - 1], so pair it with
    ``net.embedding_type=positional``. ``sigma_min = sigma(epsilon_t)``, ``sigma_max = sigma(1)``.
    """

    def __init__(
        self,
        net: nn.Module,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
    ) -> None:
        super().__init__()
        self.net = net
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.M = int(M)
        self.epsilon_t = float(epsilon_t)
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1.0))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise level at time ``t`` (see :func:`vp_sigma`)."""
        return vp_sigma(t, self.beta_d, self.beta_min)

    def sigma_inv(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Time at noise level ``sigma`` (see :func:`vp_sigma_inv`)."""
        return vp_sigma_inv(sigma, self.beta_d, self.beta_min)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return ``(c_skip, c_out, c_in, c_noise)`` for a tensor of noise levels."""
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None, **net_kwargs
    ) -> torch.Tensor:
        """Return ``D(x; sigma) = x - sigma F(...)``; extra keyword arguments go to the net."""
        sigma = as_batch_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        c_skip, c_out, c_in = (c[:, None, None, None] for c in (c_skip, c_out, c_in))
        F_x = self.net(c_in * x, c_noise, cond, **net_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)
