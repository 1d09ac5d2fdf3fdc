"""Learning-rate schedules that torch does not ship in one piece: linear warm-up, and warm-up
followed by a cosine decay (Loshchilov & Hutter 2017, SGDR without restarts). Both are
``LambdaLR`` multipliers of the optimizer's base LR, stepped once per optimizer step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from downscale.utils.errors import require


def warmup_factor(step: int, warmup_steps: int) -> float:
    """``min(1, (step + 1) / warmup_steps)``: linear ramp to the base LR (1 without warm-up)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Warm-up, then ``r + (1 - r) (1 + cos(pi p)) / 2`` with ``p`` the fraction of the decay done."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int = 1000) -> LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then the constant base LR."""
    require(warmup_steps >= 0, f"warmup_steps={warmup_steps} must be >= 0")
    return LambdaLR(optimizer, lambda step: warmup_factor(step, warmup_steps))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` x base LR at ``total_steps``."""
    require(
        0 <= warmup_steps < total_steps,
        f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}); shorten the "
        "warm-up or train longer",
    )
    require(0.0 <= min_lr_ratio <= 1.0, f"min_lr_ratio={min_lr_ratio} must lie in [0, 1]")
    return LambdaLR(
        optimizer, lambda step: cosine_factor(step, total_steps, warmup_steps, min_lr_ratio)
    )
