"""Conditional discriminator with a shared trunk, a global head and a patch head.

The trunk (strided 4x4 convolutions with LeakyReLU, no normalisation so that gradient penalties are
per-sample) reads ``concat(y, cond)``. The global head scores the whole field from its average-pooled
features; the patch head scores each quarter of the field (the four ``H/2 x W/2`` quadrants, run
through the same trunk), so local texture and the large-scale pattern are judged separately.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from downscale.utils.errors import require


class Discriminator(nn.Module):
    """``D(y, cond) -> {"global": (B, 1), "patch": (B, 4)}`` real/fake scores (logits).

    Args:
        in_channels: target + conditioning channels.
        channels: trunk widths; each stage after the first halves the resolution.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        require(len(channels) >= 1, "discriminator channels must list at least one width")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.trunk = nn.Sequential(*layers)
        self.global_head = nn.Linear(channels[-1], 1)
        self.patch_head = nn.Linear(channels[-1], 1)
        self.min_size = 2 ** len(channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, y: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.cat([y, cond.to(y.dtype)], dim=1)
        B, _, H, W = x.shape
        require(
            min(H, W) >= self.min_size,
            f"discriminator input {H}x{W} is smaller than {self.min_size} pixels; use larger "
            "patches or fewer discriminator channels",
        )
        h, w = H // 2, W // 2
        quarters = torch.cat(
            [
                x[..., :h, :w],
                x[..., :h, w : 2 * w],
                x[..., h : 2 * h, :w],
                x[..., h : 2 * h, w : 2 * w],
            ]
        )
        patch = self.patch_head(self.features(quarters)).view(4, B).t()
        return {"global": self.global_head(self.features(x)), "patch": patch}
