"""Tiled inference: run a patch-trained denoiser over a domain larger than its training patch.

:class:`TiledDenoiser` wraps a denoiser so that every call evaluates overlapping tiles of ``x`` and
``cond`` and blends the tiles' ``x0_hat`` with smooth weights normalised by their sum. Because every
denoiser evaluation is blended, the sampler only ever sees one consistent full-domain field
(MultiDiffusion: Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion Paths for Controlled Image
Generation", eq. 5, whose least-squares fusion of overlapping views is this weighted average). Tiles
are evaluated in chunks of at most ``max_batch`` (tile, batch element) pairs, so memory is bounded
whatever the domain size. Each tile is passed its own patch anchor (the input's anchor plus the tile's
offset), so a net with a learned location map reads the map where the tile lies.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from downscale.utils.errors import UserError

__all__ = ["TiledDenoiser", "blend_window", "tile_starts", "tiled_one_shot"]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` overlapping by ``overlap`` along an axis of
    ``size``.

    The stride is ``tile - overlap``; when ``size - tile`` is not a multiple of it, the last tile is
    aligned to the far border (so it overlaps its neighbour by more). A domain no larger than one
    tile gives ``[0]`` (the tile is then clipped to the domain).
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise UserError(
            f"tiling needs tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}; "
            "choose a smaller overlap"
        )
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, tile - overlap))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def blend_window(
    length: int, overlap: int, *, ramp_start: bool, ramp_end: bool, halo: int = 0
) -> Tensor:
    """1-D blending weights of one tile (float64).

    At an edge shared with a neighbouring tile (``ramp_start`` / ``ramp_end``) the weight is 0 on
    the first ``halo`` pixels, then rises as a raised cosine ``(1 - cos(pi u)) / 2`` with ``u = (d -
    halo + 1/2) / (overlap - 2 halo)`` (d the distance from the edge) and is 1 beyond. The two ramps
    of neighbours spaced by the nominal stride sum to exactly 1. With ``halo = 0`` the window never
    reaches 0; a ``halo`` drops the tile-edge pixels that see the tile's zero padding. Edges on the
    domain border are flat (weight 1).
    """
    d = torch.arange(length, dtype=torch.float64)
    w = torch.ones(length, dtype=torch.float64)
    ramp_len = overlap - 2 * halo
    if ramp_len <= 0:
        return w

    def ramp(dist: Tensor) -> Tensor:
        u = ((dist - halo + 0.5) / ramp_len).clamp(0.0, 1.0)
        return torch.where(dist < halo, torch.zeros_like(u), 0.5 - 0.5 * torch.cos(math.pi * u))

    if ramp_start:
        w = w * ramp(d)
    if ramp_end:
        w = w * ramp(length - 1 - d)
    return w


class TiledDenoiser:
    """Wrap ``denoiser(x, sigma, cond, anchor=...) -> x0_hat`` to evaluate it on overlapping tiles
    and blend.

    ``tile``: tile side in pixels (the training patch size); ``overlap``: pixels shared by
    neighbouring tiles; ``max_batch``: most tiles per denoiser call (None: all tiles of the whole
    batch at once); ``halo``: pixels at each shared tile edge given zero weight (must satisfy ``2
    halo < overlap``). ``cond`` must be ``None`` or on the same grid as ``x``: ``(B, C, H, W)``.
    ``anchor`` (B, 2) is the (row, col) of each input's top-left corner in the whole domain (None:
    (0, 0)); the tile at offset (y, x) gets ``anchor + (y, x)``. Domains no larger than a tile are
    passed through in one call, with ``anchor`` as given.
    """

    def __init__(
        self,
        denoiser: Callable[..., Tensor],
        tile: int,
        overlap: int,
        max_batch: int | None = None,
        halo: int = 0,
    ) -> None:
        tile_starts(tile, tile, overlap)  # validates tile and overlap
        if halo < 0 or (halo > 0 and 2 * halo >= overlap):
            raise UserError(
                f"tiling halo must satisfy 0 <= 2 halo < overlap, got halo={halo}, "
                f"overlap={overlap}; "
                "lower halo or raise overlap"
            )
        if max_batch is not None and max_batch < 1:
            raise UserError(f"max_batch must be >= 1 or None, got {max_batch}; set it to e.g. 16")
        self.denoiser, self.tile, self.overlap = denoiser, tile, overlap
        self.max_batch, self.halo = max_batch, halo
        self._plans: dict[tuple, tuple] = {}

    def _axis(self, size: int) -> tuple[int, list[int], dict[int, Tensor]]:
        length = min(self.tile, size)
        starts = tile_starts(size, self.tile, self.overlap)
        windows = {
            s: blend_window(
                length, self.overlap, ramp_start=s > 0, ramp_end=s + length < size, halo=self.halo
            )
            for s in starts
        }
        return length, starts, windows

    def _plan(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple:
        key = (h, w, device, dtype)
        if key not in self._plans:
            th, ys, wy = self._axis(h)
            tw, xs, wx = self._axis(w)
            total = torch.zeros(h, w, dtype=torch.float64)
            for y in ys:
                for x in xs:
                    total[y : y + th, x : x + tw] += wy[y][:, None] * wx[x][None, :]
            if not bool((total > 0).all()):  # guaranteed by construction; guards future edits
                raise RuntimeError("tiling leaves pixels with zero total weight")
            # every tile's blend weights, in the order of (ys x xs)
            weights = torch.stack([wy[y][:, None] * wx[x][None, :] for y in ys for x in xs])
            corners = torch.tensor([(y, x) for y in ys for x in xs], device=device)
            self._plans[key] = (
                th,
                tw,
                corners,
                weights.to(device, dtype),
                (1.0 / total).to(device, dtype),
            )
        return self._plans[key]

    def __call__(
        self, x: Tensor, sigma: Tensor, cond: Tensor | None, anchor: Tensor | None = None
    ) -> Tensor:
        b, _, h, w = x.shape
        if h <= self.tile and w <= self.tile:
            return self.denoiser(x, sigma, cond, anchor=anchor)
        if cond is not None and tuple(cond.shape[-2:]) != (h, w):
            raise UserError(
                f"tiled sampling needs cond on the target grid {(h, w)}, "
                f"got {tuple(cond.shape[-2:])}; "
                "bring the predictors to the fine grid first"
            )
        th, tw, corners, weights, inv_total = self._plan(h, w, x.device, x.dtype)
        if anchor is None:
            anchor = torch.zeros(b, 2, dtype=torch.int64, device=x.device)
        # every (batch element, tile) pair, batch-major; each chunk is one gather per input and one
        # scatter-add into the output, where a per-tile copy and blend cost ~3 kernel launches a
        # tile on a GPU (bench/tiling.py; 0.014 s a call over 8 fields of 2048 x 4096 on an H100)
        n_tiles = len(corners)
        element = torch.arange(b, device=x.device).repeat_interleave(n_tiles)
        tile = torch.arange(n_tiles, device=x.device).repeat(b)
        x, cond = x.contiguous(), None if cond is None else cond.contiguous()
        chunk = self.max_batch or len(element)
        out: Tensor | None = None
        for start in range(0, len(element), chunk):
            i, t = element[start : start + chunk], tile[start : start + chunk]
            xt = x.view(-1)[_flat_index(i, corners[t], x.shape[1], (h, w), (th, tw))]
            ct = None
            if cond is not None:
                ct = cond.view(-1)[_flat_index(i, corners[t], cond.shape[1], (h, w), (th, tw))]
            at = anchor[i.to(anchor.device)] + corners[t].to(anchor.device)
            x0 = self.denoiser(xt, sigma[i.to(sigma.device)], ct, anchor=at)
            if out is None:
                # at least x's precision: half-precision tiles (autocast) blend in float32
                dtype = torch.promote_types(x0.dtype, x.dtype)
                out = x0.new_zeros((b, x0.shape[1], h, w), dtype=dtype)
            index = _flat_index(i, corners[t], x0.shape[1], (h, w), (th, tw))
            out.view(-1).index_add_(0, index.reshape(-1), (x0 * weights[t, None]).reshape(-1))
        return out * inv_total


def _flat_index(
    i: Tensor, corner: Tensor, channels: int, size: tuple[int, int], tile: tuple[int, int]
) -> Tensor:
    """Flat indices (n, channels, th, tw) of n tiles of a contiguous (B, channels, h, w) tensor:
    tile k is batch element ``i[k]`` with its top-left pixel at ``corner[k]`` (row, col)."""
    (h, w), (th, tw) = size, tile
    base = (i * (channels * h) + corner[:, 0]) * w + corner[:, 1]  # (n,)
    c, r, q = (torch.arange(n, device=i.device) for n in (channels, th, tw))
    pattern = c[:, None, None] * (h * w) + r[None, :, None] * w + q[None, None, :]
    return base[:, None, None, None] + pattern


def tiled_one_shot(
    fn: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    field: Tensor,
    cond: Tensor,
    wrap: Callable | None,
    anchor: Tensor | None = None,
) -> Tensor:
    """``fn(field, cond, anchor)`` of a one-shot model (a regression net, a GAN generator with its
    noise ``field``), through a denoiser wrapper such as :class:`TiledDenoiser` when ``wrap`` is
    given.

    ``field`` (B, C, H, W) is tiled along with ``cond``; a regression net ignores its tiles (pass
    any tensor of the target's size). ``anchor`` (B, 2) or None is the inputs' patch anchors; each
    tile gets its own. The blend is the same as for a diffusion denoiser, so a net with global
    attention runs over a large domain in bounded memory.
    """
    if wrap is None:
        return fn(field, cond, anchor)
    sigma = cond.new_zeros(cond.shape[0])  # unused by one-shot models
    tiled = wrap(lambda x, _sigma, c, anchor=None: fn(x, c, anchor))
    return tiled(field, sigma, cond, anchor=anchor)
