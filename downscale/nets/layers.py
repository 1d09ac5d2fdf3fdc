"""Building blocks of the ADM UNet (Dhariwal & Nichol 2021, as in NVlabs/edm ``networks.py``).

Plain ``torch.nn`` modules: noise-level embeddings, group norm sized for small channel counts,
the residual block with scale-shift (FiLM) conditioning and optional self-attention, and a
zero-initialised conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(
    channels: int, num_groups: int = 32, min_channels_per_group: int = 4
) -> nn.GroupNorm:
    """GroupNorm with ``min(num_groups, channels // min_channels_per_group)`` groups (EDM).

    Keeps at least ``min_channels_per_group`` channels per group so that tiny test nets
    (16 channels) still normalise over several channels; eps 1e-5 as in EDM.
    """
    groups = max(1, min(num_groups, channels // min_channels_per_group))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-5)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (ADM ``zero_module``) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of a scalar (EDM ``PositionalEmbedding``, no endpoint).

    ``emb = [cos(x w_i), sin(x w_i)]`` with ``w_i = (1 / max_positions) ** (i / (C/2))``; suited
    to noise labels on [0, 1000) such as VP's ``(M - 1) t``.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000) -> None:
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"num_channels must be even, got {num_channels}")
        half = num_channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x.float(), self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Gaussian random Fourier features of a scalar (Tancik et al. 2020; EDM ``FourierEmbedding``).

    ``emb = [cos(2 pi x f_i), sin(2 pi x f_i)]`` with fixed ``f_i ~ N(0, scale^2)``; suited to EDM's
    ``c_noise = log(sigma) / 4`` which lies roughly in [-1.5, 1.5].
    """

    def __init__(self, num_channels: int, scale: float = 16.0) -> None:
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"num_channels must be even, got {num_channels}")
        # A fixed generator makes the (non-trained) frequencies identical across runs and ranks.
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(num_channels // 2, generator=gen) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x.float(), (2 * math.pi) * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention over pixels, pre-norm, zero-initialised projection (ADM)."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        # each (B, heads, HW, C/heads), contiguous: the fused (flash / memory-efficient) kernels
        # need a unit stride in the last dimension, else SDPA falls back to materialising the
        # HW x HW matrix (64 GiB for 1024 128 x 128 tiles of net=tiny on a GPU)
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(out)


class ResBlock(nn.Module):
    """ADM residual block: GN-SiLU-conv, FiLM from the embedding, GN, SiLU, dropout, zero-init conv.

    ``h = conv1(dropout(silu(norm1(conv0(silu(norm0(x)))) * (1 + scale) + shift)))``, output
    ``skip(x) + h`` then optional attention. ``resample`` is ``"down"`` (2x2 average pool), ``"up"``
    (nearest x2) or ``None``, applied to both branches as in ADM.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        dropout: float = 0.0,
        resample: str | None = None,
        attention: bool = False,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.norm0 = group_norm(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * out_channels)
        self.norm1 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels or resample is not None
            else nn.Identity()
        )
        self.attn = Attention(out_channels, num_heads) if attention else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm0(x))
        h = self.conv0(self._resample(h))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        x = self.skip(self._resample(x)) + h
        if self.attn is not None:
            x = self.attn(x)
        return x
