"""ADM-style conditional UNet (Dhariwal & Nichol 2021; the ``DhariwalUNet`` of NVlabs/edm).

The net sees ``concat(x, cond[, location])`` where ``x`` is the (preconditioned) noisy target
and ``cond`` the predictors on the fine grid, and is conditioned on the noise level through an
embedding of ``noise_labels`` that drives a scale-shift (FiLM) in every residual block. No
diffusion logic lives here: the preconditioner (``downscale.diffusion.precond``) chooses
``c_in`` and ``c_noise``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from downscale.nets.layers import (
    FourierEmbedding,
    PositionalEmbedding,
    ResBlock,
    group_norm,
    zero_module,
)
from downscale.utils.errors import UserError

# Registry of noise-label embeddings (the config option IS the key).
EMBEDDINGS: dict[str, type[nn.Module]] = {
    "fourier": FourierEmbedding,
    "positional": PositionalEmbedding,
}


class UNet(nn.Module):
    """Conditional ADM UNet.

    Args:
        out_channels: channels of the output (the predictands).
        cond_channels: channels of ``cond`` (predictors + statics + features).
        noisy_channels: channels of the noisy input ``x``; 0 for a regression net (``x`` is then
            ``None``).
        model_channels: base channel count; level ``l`` has ``model_channels * channel_mult[l]``.
        channel_mult: channel multiplier per level; level ``l`` is downsampled by ``2**l``.
        num_blocks: residual blocks per level in the encoder (the decoder has ``num_blocks + 1``).
        attn_levels: downsampling factors (``2**l``) whose blocks get self-attention; the middle
            always has it.
        num_heads: attention heads.
        dropout: dropout probability inside residual blocks.
        embedding_type: ``"fourier"`` (Gaussian Fourier features) or ``"positional"`` (sinusoidal).
        fourier_scale: std of the Fourier frequencies (EDM uses 16).
        channel_mult_emb: the embedding MLP maps to ``channel_mult_emb * model_channels`` (ADM: 4).
        cascade: also inject ``cond`` average-pooled to each coarser level (1x1 conv, added after
            the downsampling block of that level).
        location_channels: channels of a learned location map concatenated to the input (0: none).
        location_size: ``(H, W)`` of the learned location map: the whole (padded) domain that the
            batches' anchors index. With patches or tiles, pass ``anchor`` (B, 2) (row, col of each
            input's top-left corner, as in the batch) to ``forward`` so that each input gets its
            own crop of the map; without ``anchor`` the input must have exactly ``location_size``.
    """

    def __init__(
        self,
        out_channels: int,
        cond_channels: int,
        noisy_channels: int,
        *,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_blocks: int = 4,
        attn_levels: Sequence[int] = (8,),
        num_heads: int = 4,
        dropout: float = 0.1,
        embedding_type: str = "fourier",
        fourier_scale: float = 16.0,
        channel_mult_emb: int = 4,
        cascade: bool = False,
        location_channels: int = 0,
        location_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        channel_mult = list(channel_mult)
        attn_levels = [int(a) for a in attn_levels]
        factors = [2**level for level in range(len(channel_mult))]
        bad = [a for a in attn_levels if a not in factors]
        if bad:
            raise UserError(
                f"net.attn_levels {bad} are not downsampling factors of this net "
                f"(available: {factors}); pick attn_levels from those factors or lengthen "
                "net.channel_mult"
            )
        if embedding_type not in EMBEDDINGS:
            raise UserError(
                f"net.embedding_type={embedding_type!r} is unknown; use one of {sorted(EMBEDDINGS)}"
            )
        if cascade and cond_channels == 0:
            raise UserError("net.cascade=true needs conditioning inputs; set net.cascade=false")
        if location_channels and (location_size is None or len(location_size) != 2):
            raise UserError(
                "net.location_channels > 0 needs net.location_size=[H, W] (the whole, padded domain "
                "size); set it or set net.location_channels=0"
            )
        self.out_channels = out_channels
        self.cond_channels = cond_channels
        self.noisy_channels = noisy_channels
        self.model_channels = model_channels
        self.min_factor = factors[-1]
        self.location_channels = location_channels

        emb_channels = model_channels * channel_mult_emb
        embedding_kwargs = {"scale": fourier_scale} if embedding_type == "fourier" else {}
        self.map_noise = EMBEDDINGS[embedding_type](model_channels, **embedding_kwargs)
        self.map_layer0 = nn.Linear(model_channels, emb_channels)
        self.map_layer1 = nn.Linear(emb_channels, emb_channels)

        if location_channels:
            size = tuple(int(s) for s in location_size)  # type: ignore[union-attr]
            self.location = nn.Parameter(torch.randn(location_channels, *size))
        else:
            self.register_parameter("location", None)

        block = {"emb_channels": emb_channels, "dropout": dropout, "num_heads": num_heads}
        in_channels = noisy_channels + cond_channels + location_channels
        cout = model_channels * channel_mult[0]
        self.conv_in = nn.Conv2d(in_channels, cout, 3, padding=1)
        skips = [cout]

        self.enc = nn.ModuleList()
        self.cascade = nn.ModuleList() if cascade else None
        for level, mult in enumerate(channel_mult):
            blocks = nn.ModuleList()
            if level > 0:
                blocks.append(ResBlock(cout, cout, resample="down", **block))
                skips.append(cout)
                if self.cascade is not None:
                    self.cascade.append(nn.Conv2d(cond_channels, cout, 1))
            for _ in range(num_blocks):
                cin, cout = cout, model_channels * mult
                attn = factors[level] in attn_levels
                blocks.append(ResBlock(cin, cout, attention=attn, **block))
                skips.append(cout)
            self.enc.append(blocks)

        self.mid = nn.ModuleList(
            [ResBlock(cout, cout, attention=True, **block), ResBlock(cout, cout, **block)]
        )

        self.dec = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            blocks = nn.ModuleList()
            if level < len(channel_mult) - 1:
                blocks.append(ResBlock(cout, cout, resample="up", **block))
            for _ in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * channel_mult[level]
                attn = factors[level] in attn_levels
                blocks.append(ResBlock(cin, cout, attention=attn, **block))
            self.dec.append(blocks)

        self.out_norm = group_norm(cout)
        self.out_conv = zero_module(nn.Conv2d(cout, out_channels, 3, padding=1))

    def _location_map(
        self, batch: int, height: int, width: int, anchor: torch.Tensor | None
    ) -> torch.Tensor:
        """The (B, C, H, W) crops of the learned map at ``anchor`` (the whole map without it)."""
        loc = self.location
        size = tuple(loc.shape[1:])
        if anchor is None:
            if size != (height, width):
                raise UserError(
                    f"input is {height}x{width} but the learned location map (net.location_size) is "
                    f"{size[0]}x{size[1]} and no patch anchor was given; pass anchor= (each input's "
                    "top-left (row, col) in the whole domain, as batch['anchor']) or feed the whole "
                    "domain"
                )
            return loc.unsqueeze(0).expand(batch, -1, -1, -1)
        if tuple(anchor.shape) != (batch, 2):
            raise ValueError(f"anchor must have shape ({batch}, 2), got {tuple(anchor.shape)}")
        if not torch.compiler.is_compiling():  # a data-dependent check: eager mode only
            self._check_anchor(anchor, height, width)
        rows = anchor[:, 0, None] + torch.arange(height, device=anchor.device)  # (B, H)
        cols = anchor[:, 1, None] + torch.arange(width, device=anchor.device)  # (B, W)
        crop = loc[:, rows[:, :, None], cols[:, None, :]]  # (C, B, H, W)
        return crop.permute(1, 0, 2, 3)

    def _check_anchor(self, anchor: torch.Tensor, height: int, width: int) -> None:
        """Raise a UserError when a ``height x width`` window at ``anchor`` leaves the map."""
        size = tuple(self.location.shape[1:])
        row0, col0, row1, col1 = torch.cat([anchor.amin(0), anchor.amax(0)]).tolist()
        need = (row1 + height, col1 + width)
        if min(row0, col0) < 0 or need[0] > size[0] or need[1] > size[1]:
            raise UserError(
                f"a {height}x{width} input at anchors rows {row0}..{row1}, cols {col0}..{col1} "
                f"reaches {need[0]}x{need[1]}, outside the learned location map of "
                f"{size[0]}x{size[1]} (net.location_size); set net.location_size to the whole "
                "(padded) domain the inputs come from"
            )

    def forward(
        self,
        x: torch.Tensor | None,
        noise_labels: torch.Tensor | None,
        cond: torch.Tensor | None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return ``(B, out_channels, H, W)``; ``x``, ``noise_labels`` are None in regression."""
        inputs = [t for t in (x, cond) if t is not None]
        if not inputs:
            raise ValueError("UNet needs at least one of x and cond")
        ref = inputs[0]
        B, _, H, W = ref.shape
        if H % self.min_factor or W % self.min_factor:
            raise UserError(
                f"spatial size {H}x{W} is not divisible by {self.min_factor} "
                f"(2**(len(net.channel_mult)-1)); use a patch size that is a multiple of "
                f"{self.min_factor} or pad the domain"
            )
        if (x is None) != (self.noisy_channels == 0):
            raise ValueError(
                "x must be None exactly when noisy_channels == 0 "
                f"(noisy_channels={self.noisy_channels})"
            )
        if self.location is not None:
            inputs.append(self._location_map(B, H, W, anchor).to(ref.dtype))

        # Noise-level embedding; a regression net (no noise labels) gets the embedding of label 0,
        # i.e. a learned constant after the MLP.
        if noise_labels is None:
            noise_labels = torch.zeros(B, device=ref.device)
        noise_labels = noise_labels.reshape(-1).expand(B)
        emb = F.silu(self.map_layer0(self.map_noise(noise_labels)))
        emb = F.silu(self.map_layer1(emb))

        h = self.conv_in(torch.cat(inputs, dim=1))
        skips = [h]
        for level, blocks in enumerate(self.enc):
            for i, blk in enumerate(blocks):
                h = blk(h, emb)
                if i == 0 and level > 0 and self.cascade is not None:
                    pooled = F.avg_pool2d(cond, 2**level)
                    h = h + self.cascade[level - 1](pooled)
                skips.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for blocks in self.dec:
            for blk in blocks:
                if blk.resample != "up":
                    h = torch.cat([h, skips.pop()], dim=1)
                h = blk(h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))
