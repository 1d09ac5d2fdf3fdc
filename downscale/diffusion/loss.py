"""Denoising score-matching loss (Karras et al. 2022, Eq. 2 and Table 1) with masks and weightings.

    L = E_{sigma, y, n} [ lambda(sigma) mean_{valid pixels, c} w_c (D(y + n; sigma) - y)^2 ],

with ``n ~ N(0, sigma^2 I)``, sigma from a noise-level distribution (``downscale.diffusion.noise``),
and ``lambda`` a weighting function of ``(sigma, sigma_data)`` chosen in the config
(``_target_`` + ``_partial_``). All weightings are stated in the space of ``D`` (the "x0"
space); a weighting ``w_F`` on the net's target ``F`` (k-diffusion) is ``lambda = w_F / c_out^2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from downscale.diffusion.precond import sigma_data_value
from downscale.utils.errors import UserError

Weighting = Callable[[torch.Tensor, float], torch.Tensor]


def edm_weighting(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """``lambda = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2`` (EDM Table 1): uniform weight on
    the net's EDM target ``F`` (k-diffusion's "karras")."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def snr_weighting(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """``lambda = SNR = 1 / sigma^2``: the x0 loss weighted by the signal-to-noise ratio, i.e. the
    epsilon-prediction MSE of DDPM (Ho et al. 2020); equals k-diffusion's "snr" weighting
    (``sd^2 / (sigma^2 + sd^2)`` on ``F``). ``sigma_data`` is unused (kept for one signature)."""
    del sigma_data
    return sigma.pow(-2)


def soft_min_snr_weighting(
    sigma: torch.Tensor, sigma_data: float = 0.5, gamma: float | None = 5.0
) -> torch.Tensor:
    """Soft-min-SNR (Crowson et al. 2024, HDiT, Sec. on loss weighting): a smooth version of
    Min-SNR-gamma (Hang et al. 2023), ``lambda = 1 / (1/SNR + 1/gamma) = 1 / (sigma^2 + 1/gamma)``.

    ``gamma=None`` takes ``gamma = 1 / sd^2``, which is exactly k-diffusion's "soft-min-snr"
    (``(sigma sd)^2 / (sigma^2 + sd^2)^2`` on ``F``); the default 5 is Hang et al.'s value.
    """
    g = sigma_data**-2 if gamma is None else gamma
    return 1.0 / (sigma**2 + 1.0 / g)


def vp_weighting(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """VP loss weighting ``lambda = 1 / sigma^2`` (Song et al. 2021; EDM Table 1, "VP"): the
    epsilon-prediction MSE, the same curve as :func:`snr_weighting`."""
    return snr_weighting(sigma, sigma_data)


class DiffusionLoss:
    """Weighted, masked denoising loss.

    Args:
        noise_levels: callable ``(n, *, generator, device) -> sigma (n,)``.
        weighting: callable ``(sigma, sigma_data) -> lambda (n,)``.
        sigma_data: data std assumed by the weighting (EDM 0.5).
        variable_weights: one weight per target channel (None: all 1); the channel average is
            ``mean_c w_c e_c``, so all-ones weights give the plain mean.
        trim: pixels removed at each border before averaging (edge effects of patches).
    """

    def __init__(
        self,
        noise_levels: Callable[..., torch.Tensor],
        weighting: Weighting,
        sigma_data: float = 0.5,
        variable_weights: Sequence[float] | None = None,
        trim: int = 0,
    ) -> None:
        if trim < 0:
            raise UserError(f"loss trim={trim} must be >= 0; set a non-negative border width")
        if variable_weights is not None and any(w < 0 for w in variable_weights):
            raise UserError(f"variable_weights {list(variable_weights)} must be >= 0; fix them")
        self.noise_levels = noise_levels
        self.weighting = weighting
        self.sigma_data = sigma_data_value(sigma_data)
        self.variable_weights = None if variable_weights is None else list(variable_weights)
        self.trim = int(trim)

    def _trim(self, t: torch.Tensor) -> torch.Tensor:
        k = self.trim
        return t[..., k:-k, k:-k] if k else t

    def __call__(
        self,
        denoiser: Callable[..., torch.Tensor],
        target: torch.Tensor,
        cond: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **denoiser_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar, "per_sample": (B,), "sigma": (B,)}``.

        ``mask`` (B, 1, H, W) is 1 on valid pixels; extra keyword arguments (e.g. ``anchor``) are
        passed to the denoiser.
        """
        B, C, H, W = target.shape
        if 2 * self.trim >= min(H, W):
            raise UserError(
                f"loss trim={self.trim} removes the whole {H}x{W} patch; lower trim or use "
                "larger patches"
            )
        sigma = self.noise_levels(B, generator=generator, device=target.device).to(torch.float32)
        noise = torch.randn(
            target.shape, generator=generator, device=target.device, dtype=target.dtype
        )
        denoised = denoiser(
            target + noise * sigma[:, None, None, None], sigma, cond, **denoiser_kwargs
        )

        err = (denoised.float() - target.float()).square()
        if self.variable_weights is not None:
            if len(self.variable_weights) != C:
                raise UserError(
                    f"{len(self.variable_weights)} variable_weights for {C} target variables; "
                    "give one weight per variable"
                )
            w = torch.tensor(self.variable_weights, device=err.device, dtype=err.dtype)
            err = err * w[None, :, None, None]
        err = self._trim(err.mean(dim=1, keepdim=True))  # (B, 1, h, w)
        if mask is None:
            per_pixel = err.flatten(1).mean(1)
        else:
            m = self._trim(mask.to(err.dtype))
            valid = torch.where(m > 0, err * m, 0.0)  # where(): NaN-safe on masked pixels
            per_pixel = valid.flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
        per_sample = self.weighting(sigma, self.sigma_data) * per_pixel
        return {"loss": per_sample.mean(), "per_sample": per_sample, "sigma": sigma}
