"""Tiled-inference overhead: ``TiledDenoiser`` (one gather and one scatter-add per chunk of tiles)
against the per-tile loop it replaced (a copy and a blend per tile), in the same run.

Both wrap the same cheap denoiser (one 3 x 3 convolution) over a ``--height`` x ``--width`` field
in ``--tile`` tiles with ``--overlap``, ``--max-batch`` tiles per call, so the time is the
wrapper's own work. ``ratio`` = loop time / vectorised time (median of ``--repeats`` pairs);
the two outputs are checked to agree. On a GPU the per-tile loop costs ~3 kernel launches a tile
(7224 tiles a call over 8 fields of 2048 x 4096). On the CPU the time is thread time::

    python bench/tiling.py                       # CPU
    python bench/tiling.py --device cuda --height 2048 --width 4096 --batch 8

Writes ``bench/results/tiling[_<device>].json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_device_result  # noqa: E402
from downscale.sampling.tiling import TiledDenoiser  # noqa: E402


def per_tile_loop(tiled: TiledDenoiser, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
    """The reference: the tiling of ``tiled`` with one slice copy and one blend per tile, as the
    implementation before the vectorised gather / scatter-add ran it (its plan cached the
    normaliser; the 1-D weights are moved to the device once per call here)."""
    b, _, h, w = x.shape
    th, ys, wy = tiled._axis(h)
    tw, xs, wx = tiled._axis(w)
    wy, wx = ({k: v.to(x) for k, v in d.items()} for d in (wy, wx))
    out = torch.zeros_like(x)
    items = [(i, y, z) for i in range(b) for y in ys for z in xs]
    chunk = tiled.max_batch or len(items)
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        xt = torch.stack([x[i, :, y : y + th, z : z + tw] for i, y, z in part])
        ct = torch.stack([cond[i, :, y : y + th, z : z + tw] for i, y, z in part])
        index = torch.tensor([i for i, _, _ in part], device=sigma.device)
        x0 = tiled.denoiser(xt, sigma[index], ct)
        for k, (i, y, z) in enumerate(part):
            out[i, :, y : y + th, z : z + tw] += x0[k] * (wy[y][:, None] * wx[z][None, :])
    return out * tiled._plan(h, w, x.device, x.dtype)[-1]


def _time(fn, cuda: bool) -> float:
    """Wall time with synchronisation on CUDA; on the CPU the thread's CPU time, which other
    processes on the machine do not inflate."""
    clock = time.perf_counter if cuda else time.thread_time
    if cuda:
        torch.cuda.synchronize()
    start = clock()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return clock() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 1, 3, padding=1).to(device).eval()

    def denoiser(x: Tensor, sigma: Tensor, cond: Tensor, anchor: Tensor | None = None) -> Tensor:
        return conv(torch.cat([x, cond], dim=1))

    tiled = TiledDenoiser(denoiser, args.tile, args.overlap, max_batch=args.max_batch)
    x = torch.randn(args.batch, 1, args.height, args.width, device=device)
    cond = torch.randn_like(x)
    sigma = torch.ones(args.batch, device=device)
    cuda = device.type == "cuda"
    with torch.no_grad():
        new, old = tiled(x, sigma, cond), per_tile_loop(tiled, x, sigma, cond)
        max_diff = float((new - old).abs().max())
        pairs = [
            (
                _time(lambda: per_tile_loop(tiled, x, sigma, cond), cuda),
                _time(lambda: tiled(x, sigma, cond), cuda),
            )
            for _ in range(args.repeats)
        ]
    n_tiles = len(tiled._plan(args.height, args.width, device, x.dtype)[2]) * args.batch
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "field": [args.batch, args.height, args.width],
        "tile": args.tile,
        "overlap": args.overlap,
        "max_batch": args.max_batch,
        "tiles_per_call": n_tiles,
        "loop_s": min(p[0] for p in pairs),
        "vectorised_s": min(p[1] for p in pairs),
        "ratio": statistics.median(p[0] / p[1] for p in pairs),
        "max_abs_diff": max_diff,
    }
    print(f"{'wrapper':<12} {'s per call':>12}  ({n_tiles} tiles, {args.device})")
    print(f"{'per tile':<12} {result['loop_s']:>12.4f}")
    print(f"{'vectorised':<12} {result['vectorised_s']:>12.4f}")
    print(f"ratio {result['ratio']:.2f}, outputs differ by at most {max_diff:.2e}")
    write_device_result("tiling", device.type, result)
    return result


if __name__ == "__main__":
    main()
