"""Pixel losses of the regression, GAN and residual models: masked MSE / MAE with per-variable
weights and border trimming, averaged like :class:`downscale.diffusion.loss.DiffusionLoss`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from downscale.utils.errors import UserError, require

ERRORS = {
    "mse": lambda d: d.square(),
    "mae": lambda d: d.abs(),
}


class PixelLoss:
    """``mean_batch( sum_pixels(mask * mean_c(w_c e_c)) / sum_pixels(mask) )`` with
    ``e = (pred - target)^2`` (``mse``) or ``|pred - target|`` (``mae``).

    Masked pixels are excluded with ``where`` (NaN-safe); ``trim`` pixels are cut at every border.
    """

    def __init__(
        self, kind: str = "mse", variable_weights: Sequence[float] | None = None, trim: int = 0
    ) -> None:
        require(kind in ERRORS, f"loss kind={kind} is unknown; use one of {sorted(ERRORS)}")
        require(trim >= 0, f"loss trim={trim} must be >= 0; set a non-negative border width")
        if variable_weights is not None and any(w < 0 for w in variable_weights):
            raise UserError(f"variable_weights {list(variable_weights)} must be >= 0; fix them")
        self.kind = kind
        self.variable_weights = None if variable_weights is None else list(variable_weights)
        self.trim = int(trim)

    def per_sample(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) loss of each sample."""
        err = ERRORS[self.kind](pred.float() - target.float())
        C, H, W = err.shape[1:]
        require(
            2 * self.trim < min(H, W),
            f"loss trim={self.trim} removes the whole {H}x{W} patch; lower trim or use larger patches",
        )
        if self.variable_weights is not None:
            require(
                len(self.variable_weights) == C,
                f"{len(self.variable_weights)} variable_weights for {C} target variables; "
                "give one weight per variable",
            )
            w = torch.tensor(self.variable_weights, device=err.device, dtype=err.dtype)
            err = err * w[None, :, None, None]
        k = self.trim
        err = err.mean(dim=1, keepdim=True)
        err = err[..., k:-k, k:-k] if k else err
        if mask is None:
            return err.flatten(1).mean(1)
        m = mask.to(err.dtype)
        m = m[..., k:-k, k:-k] if k else m
        valid = torch.where(m > 0, err * m, 0.0)
        return valid.flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.per_sample(pred, target, mask).mean()
