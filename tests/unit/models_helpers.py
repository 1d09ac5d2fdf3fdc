"""Tiny nets, batches and samplers shared by the model tests (no data store needed)."""

from __future__ import annotations

import functools

import torch

from downscale.diffusion.loss import DiffusionLoss, edm_weighting
from downscale.diffusion.noise import LogNormal
from downscale.diffusion.precond import EDMPrecond
from downscale.models.ema import EMA
from downscale.nets.unet import UNet
from downscale.sampling.driver import SamplerRun
from downscale.sampling.samplers import sample_euler
from downscale.sampling.schedules import sigmas_karras

C_OUT, C_COND, SIZE = 1, 3, 16

tiny_net = functools.partial(
    UNet,
    model_channels=8,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_levels=[],
    num_heads=1,
    dropout=0.0,
)
adam = functools.partial(torch.optim.Adam, lr=1e-3)
ema = functools.partial(EMA, decay=0.9)


def batch(b: int = 2, seed: int = 0, size: int = SIZE) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 1, size, size)
    mask[:, :, :2, :3] = 0
    return {
        "target": torch.randn(b, C_OUT, size, size, generator=g) * 0.5,
        "cond": torch.randn(b, C_COND, size, size, generator=g),
        "mask": mask,
        "time": torch.arange(b),
        "anchor": torch.zeros(b, 2, dtype=torch.long),
    }


def diffusion_loss() -> DiffusionLoss:
    return DiffusionLoss(LogNormal(-1.2, 1.2), edm_weighting)


def edm_precond():
    return functools.partial(EDMPrecond, sigma_data=0.5)


def quick_sampler(steps: int = 3) -> SamplerRun:
    return SamplerRun(fn=sample_euler, sigmas=sigmas_karras(steps, 0.02, 80.0))


def generators(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]
