"""Attention input layout: the tiny net's forward with contiguous q, k, v (``Attention`` now)
against the strided views it passed before, in the same process.

``scaled_dot_product_attention`` runs its fused kernels only on inputs with a unit stride in the
last dimension; strided views fall back to the reference implementation (on a GPU it builds the
HW x HW matrix). For each input shape the two layouts alternate ``--repeats`` times; the table
gives the fastest forward of each (thread time on the CPU, so other processes on the machine do not
count; wall time with synchronisation on CUDA) and ``ratio`` = strided / contiguous.
``--backward`` times a training step's forward and backward instead (training mode)::

    OMP_NUM_THREADS=1 python bench/attention_layout.py [--backward]
    python bench/attention_layout.py --device cuda

Writes ``bench/results/attention_layout[_backward][_<device>].json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_device_result  # noqa: E402
from downscale.nets import layers  # noqa: E402
from downscale.nets.unet import UNet  # noqa: E402

# (batch, height, width): an Iberia batch, radar 64 px tiles (CPU bench), radar 128 px tiles
SHAPES = ((64, 24, 32), (16, 64, 64), (16, 128, 128))


def strided_forward(self: layers.Attention, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` as it was: q, k, v are transposed views (last-dimension stride HW)."""
    B, C, H, W = x.shape
    qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
    q, k, v = qkv.transpose(-1, -2).unbind(1)
    out = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backward", action="store_true", help="forward + backward, as training")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cfg = yaml.safe_load((ROOT / "conf" / "net" / "tiny.yaml").read_text())
    net = UNet(1, 2, 1, **{k: v for k, v in cfg.items() if not k.startswith("_")}).to(device)
    net.train(args.backward)
    layouts = {"strided": strided_forward, "contiguous": layers.Attention.forward}

    def timed(x, s, c) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter() if cuda else time.thread_time()
        out = net(x, s, c)
        if args.backward:
            out.square().mean().backward()
            net.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() if cuda else time.thread_time()) - start

    rows = []
    try:
        with torch.set_grad_enabled(args.backward):
            for b, h, w in SHAPES:
                x = torch.randn(b, 1, h, w, device=device)
                c, s = torch.randn(b, 2, h, w, device=device), torch.ones(b, device=device)
                times: dict[str, list[float]] = {name: [] for name in layouts}
                for _ in range(args.repeats):
                    for name, forward in layouts.items():
                        layers.Attention.forward = forward
                        times[name].append(timed(x, s, c))
                best = {name: min(t) for name, t in times.items()}
                rows.append(
                    {
                        "shape": [b, h, w],
                        "strided_ms": 1e3 * best["strided"],
                        "contiguous_ms": 1e3 * best["contiguous"],
                        "ratio": best["strided"] / best["contiguous"],
                    }
                )
    finally:
        layers.Attention.forward = layouts["contiguous"]
    print(f"{'shape':<16} {'strided ms':>11} {'contiguous ms':>14} {'ratio':>6}")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{shape:<16} {r['strided_ms']:>11.1f} {r['contiguous_ms']:>14.1f} {r['ratio']:>6.2f}"
        )
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "pass": "forward + backward" if args.backward else "forward",
        "rows": rows,
    }
    name = "attention_layout_backward" if args.backward else "attention_layout"
    write_device_result(name, device.type, result)
    return result


if __name__ == "__main__":
    main()
