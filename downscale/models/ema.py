"""Exponential moving average of weights, with a half-life option and a warm-up ramp.

Built on ``torch.optim.swa_utils.AveragedModel`` (which handles copying, buffers and devices); only the
averaging rule is ours: decay = 0.5 ** (1 / halflife_steps) when a half-life is given (as EDM's
``ema_halflife``, counted in optimizer steps here), and the ramp min(decay, (1 + n) / (10 + n)) so that
early averages are not dominated by the random initialisation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from downscale.utils.errors import require


def ema_decay(decay: float | None, halflife_steps: float | None) -> float:
    """Per-step decay from either a decay or a half-life in steps (exactly one must be given)."""
    require(
        (decay is None) != (halflife_steps is None),
        "EMA: give exactly one of model.ema.decay and model.ema.halflife_steps",
    )
    if halflife_steps is not None:
        require(halflife_steps > 0, "EMA: model.ema.halflife_steps must be positive")
        return 0.5 ** (1.0 / halflife_steps)
    require(0.0 <= decay < 1.0, "EMA: model.ema.decay must lie in [0, 1)")
    return float(decay)


class EMA(AveragedModel):
    """EMA copy of ``module``; call :meth:`update_parameters` after each optimizer step."""

    def __init__(
        self,
        module: nn.Module,
        decay: float | None = 0.999,
        halflife_steps: float | None = None,
        warmup: bool = True,
    ) -> None:
        target = ema_decay(decay, halflife_steps)

        @torch.no_grad()
        def average(ema_params, params, num_averaged) -> None:
            n = float(num_averaged)
            beta = min(target, (1.0 + n) / (10.0 + n)) if warmup else target
            torch._foreach_lerp_(ema_params, params, 1.0 - beta)

        super().__init__(module, multi_avg_fn=average, use_buffers=True)
        self.requires_grad_(False)
        self.decay = target
