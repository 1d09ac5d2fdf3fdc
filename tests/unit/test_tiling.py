"""Tiled inference: tile layout, exactness for local operators, no seams, bounded chunks."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from downscale.sampling.tiling import TiledDenoiser, blend_window, tile_starts, tiled_one_shot
from downscale.utils.errors import UserError


def test_tile_starts_cover_and_align_last_tile() -> None:
    assert tile_starts(100, 32, 12) == [0, 20, 40, 60, 68]
    assert tile_starts(92, 32, 12) == [0, 20, 40, 60]
    assert tile_starts(20, 32, 12) == [0]
    for size in range(33, 300, 7):
        starts = tile_starts(size, 32, 8)
        assert starts[0] == 0 and starts[-1] == size - 32
        assert all(0 < b - a <= 24 for a, b in zip(starts[:-1], starts[1:], strict=False))
    with pytest.raises(UserError):
        tile_starts(100, 16, 16)


def test_window_ramps_sum_to_one_and_never_vanish_without_halo() -> None:
    tile, overlap = 32, 12
    a = blend_window(tile, overlap, ramp_start=True, ramp_end=True)
    assert a.min() > 0
    # right ramp of one tile + left ramp of the next (spaced by the stride) = 1 on the overlap
    stride = tile - overlap
    torch.testing.assert_close(a[stride:] + a[:overlap], torch.ones(overlap, dtype=a.dtype))
    h = blend_window(tile, overlap, ramp_start=True, ramp_end=False, halo=3)
    assert (h[:3] == 0).all() and h[3] > 0 and (h[overlap:] == 1).all()


def conv_denoiser(kernel: torch.Tensor):
    def denoise(x, sigma, cond, anchor=None):
        return F.conv2d(x + cond, kernel, padding=kernel.shape[-1] // 2) / (
            1 + sigma[:, None, None, None]
        )

    return denoise


def test_local_operator_tiled_equals_full_domain() -> None:
    g = torch.Generator().manual_seed(0)
    kernel = torch.randn(1, 1, 5, 5, generator=g)
    x = torch.randn(2, 1, 80, 100, generator=g)
    cond = torch.randn(2, 1, 80, 100, generator=g)
    sigma = torch.tensor([0.5, 3.0])
    full = conv_denoiser(kernel)(x, sigma, cond)
    tiled = TiledDenoiser(conv_denoiser(kernel), tile=32, overlap=12, max_batch=5, halo=2)
    out = tiled(x, sigma, cond)
    r = 2  # kernel radius: the full-domain result itself sees zero padding within r of the border
    torch.testing.assert_close(out[..., r:-r, r:-r], full[..., r:-r, r:-r], rtol=1e-5, atol=1e-5)
    # without a halo the tile-edge pixels leak in with small weights: close but not exact
    loose = TiledDenoiser(conv_denoiser(kernel), tile=32, overlap=12)(x, sigma, cond)
    err = (loose - full)[..., r:-r, r:-r].abs().max().item()
    assert 1e-5 < err < 0.5 * full.abs().max().item()


def smooth_field_denoiser(seed: int, length_scale: float = 3.0):
    """Returns a fresh smooth random field (Gaussian-filtered white noise, unit variance) per
    tile."""
    g = torch.Generator().manual_seed(seed)
    r = int(3 * length_scale)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k1 = torch.exp(-0.5 * (t / length_scale) ** 2)
    k2 = (k1[:, None] * k1[None, :])[None, None]
    k2 = k2 / k2.square().sum().sqrt()

    def denoise(x, sigma, cond, anchor=None):
        n, _, h, w = x.shape
        noise = torch.randn(n, 1, h + 2 * r, w + 2 * r, generator=g)
        return F.conv2d(noise, k2)

    return denoise


def border_to_interior_gradient_ratio(out: torch.Tensor, starts: list[int], tile: int) -> float:
    gx = (out[..., 1:] - out[..., :-1]).square().mean(dim=(0, 1, 2))  # per column boundary
    edges = sorted({s for s in starts if s > 0} | {s + tile - 1 for s in starts[:-1]})
    at_edges = gx[[e - 1 for e in edges] + [e for e in edges if e < gx.numel()]].mean()
    covered = torch.zeros(gx.numel(), dtype=torch.int64)
    for s in starts:
        covered[s : s + tile - 1] += 1
    interior = gx[covered == 1].mean()  # columns inside exactly one tile
    return float(at_edges / interior)


def test_no_seams_with_random_field_denoiser() -> None:
    tile, overlap, w = 64, 32, 256
    x = torch.zeros(4, 1, 64, w)
    sigma = torch.ones(4)
    blended = TiledDenoiser(smooth_field_denoiser(1), tile, overlap)(x, sigma, None)
    starts = tile_starts(w, tile, overlap)
    assert border_to_interior_gradient_ratio(blended, starts, tile) < 1.25
    # the metric does detect seams: hard-edged tiles (no overlap) have large jumps at their borders
    hard = TiledDenoiser(smooth_field_denoiser(1), tile, 0)(x, sigma, None)
    assert border_to_interior_gradient_ratio(hard, tile_starts(w, tile, 0), tile) > 3.0


def test_large_domain_runs_in_bounded_chunks() -> None:
    batches = []

    def cheap(x, sigma, cond, anchor=None):
        batches.append(x.shape[0])
        return 0.5 * x + cond * sigma[:, None, None, None]

    x = torch.randn(1, 1, 1024, 2048)
    cond = torch.randn(1, 1, 1024, 2048)
    sigma = torch.tensor([2.0])
    out = TiledDenoiser(cheap, tile=128, overlap=32, max_batch=8)(x, sigma, cond)
    n_tiles = len(tile_starts(1024, 128, 32)) * len(tile_starts(2048, 128, 32))
    assert max(batches) <= 8 and sum(batches) == n_tiles and len(batches) == -(-n_tiles // 8)
    torch.testing.assert_close(out, 0.5 * x + 2.0 * cond, rtol=1e-5, atol=1e-5)


def test_small_domain_passes_through_and_cond_grid_checked() -> None:
    calls = []

    def den(x, sigma, cond, anchor=None):
        calls.append(x.shape)
        return x

    tiled = TiledDenoiser(den, tile=64, overlap=16)
    x = torch.randn(1, 1, 48, 64)
    assert tiled(x, torch.ones(1), None) is x and calls == [x.shape]
    with pytest.raises(UserError, match="fine grid"):
        tiled(torch.randn(1, 1, 100, 100), torch.ones(1), torch.randn(1, 1, 50, 50))
    with pytest.raises(UserError):
        TiledDenoiser(den, tile=64, overlap=16, halo=8)


def test_one_shot_model_tiled_equals_full_domain_for_a_local_operator() -> None:
    """tiled_one_shot tiles the noise field along with cond (a GAN generator's inputs)."""
    g = torch.Generator().manual_seed(1)
    kernel = torch.randn(1, 2, 5, 5, generator=g)
    noise = torch.randn(3, 1, 48, 72, generator=g)
    cond = torch.randn(3, 1, 48, 72, generator=g)

    def generator(z, c, anchor=None):
        return F.conv2d(torch.cat([c, z], dim=1), kernel, padding=2)

    full = tiled_one_shot(generator, noise, cond, None)
    torch.testing.assert_close(full, generator(noise, cond))
    wrap = functools.partial(TiledDenoiser, tile=24, overlap=12, max_batch=4, halo=2)
    out = tiled_one_shot(generator, noise, cond, wrap)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], full[..., 2:-2, 2:-2], rtol=1e-5, atol=1e-5)


def test_half_precision_tiles_blend_in_float32() -> None:
    """Under bf16 autocast a one-shot net's tiles come back in bf16; they are blended in float32,
    so the tiled field equals the bf16 tiles blended exactly (and is float32)."""
    g = torch.Generator().manual_seed(2)
    field = torch.randn(2, 1, 48, 72, generator=g)

    def half(z, c, anchor=None):
        return z.to(torch.bfloat16)  # a pointwise "net" with a bf16 output

    wrap = functools.partial(TiledDenoiser, tile=24, overlap=12, max_batch=4)
    out = tiled_one_shot(half, field, field, wrap)
    assert out.dtype == torch.float32
    # blending copies of one value with weights summing to 1 gives that value back
    torch.testing.assert_close(out, field.to(torch.bfloat16).float(), rtol=1e-6, atol=1e-6)


def test_each_tile_gets_the_input_anchor_plus_its_offset() -> None:
    """Every tile's anchor is its input's anchor (None: (0, 0)) plus the tile's (row, col) offset;
    the tile's pixels, which encode their position, confirm it."""
    b, h, w = 2, 16, 20
    rows, cols = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    position = 1000 * rows[:, None] + cols[None, :]  # pixel value = 1000 row + col
    x = torch.stack([position + 1e6 * i for i in range(b)])[:, None]
    seen = []

    def record(xt, sigma, cond, anchor=None):
        seen.append((xt[:, 0, 0, 0].clone(), anchor.clone()))
        return xt

    ys, xs = tile_starts(h, 8, 4), tile_starts(w, 8, 4)
    for base in (torch.tensor([[3, 5], [10, 0]]), None):
        seen.clear()
        out = TiledDenoiser(record, tile=8, overlap=4, max_batch=5)(x, torch.ones(b), None, base)
        torch.testing.assert_close(out, x)
        corners = torch.cat([c for c, _ in seen]).long()
        anchors = torch.cat([a for _, a in seen])
        assert anchors.dtype == torch.int64 and len(anchors) == b * len(ys) * len(xs)
        assert max(len(a) for _, a in seen) == 5
        item, offset = corners // 1_000_000, corners % 1_000_000
        offsets = torch.stack([offset // 1000, offset % 1000], dim=1)
        expected = (torch.zeros(b, 2, dtype=torch.int64) if base is None else base)[item] + offsets
        torch.testing.assert_close(anchors, expected)
        assert {tuple(o) for o in offsets.tolist()} == {(y, z) for y in ys for z in xs}
    # a domain no larger than a tile passes the anchor through unchanged
    small = TiledDenoiser(record, tile=32, overlap=4)
    seen.clear()
    small(x, torch.ones(b), None, anchor=torch.tensor([[1, 2], [3, 4]]))
    assert seen[0][1].tolist() == [[1, 2], [3, 4]]
