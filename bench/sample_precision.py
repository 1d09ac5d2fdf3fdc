"""Sampling precision: one dpmpp_2m draw of a batch of fields through the EDM-preconditioned tiny
net in float32 (``precision=32-true``) against the same draw under bf16 autocast
(``precision=bf16-mixed``, :func:`downscale.sampling.driver.network_precision`), in the same
process.

The two alternate ``--repeats`` times; the table gives the fastest draw of each (thread time on the
CPU, so other processes on the machine do not count; wall time with synchronisation on CUDA),
``speed-up`` = float32 / bf16, and how far the bf16 draw lands from the float32 one with the same
noise (mean absolute difference over the float32 draw's standard deviation). The net is untrained
but perturbed, so its output is not the zero of a fresh output layer::

    OMP_NUM_THREADS=1 python bench/sample_precision.py
    python bench/sample_precision.py --device cuda --batch 256 --size 128 --steps 10

Writes ``bench/results/sample_precision[_<device>].json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_device_result  # noqa: E402
from downscale.diffusion.precond import EDMPrecond  # noqa: E402
from downscale.nets.unet import UNet  # noqa: E402
from downscale.sampling.driver import SamplerRun, network_precision  # noqa: E402
from downscale.sampling.samplers import sample_dpmpp_2m  # noqa: E402
from downscale.sampling.schedules import sigmas_karras  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")


def tiny_denoiser(device: torch.device, cond_channels: int) -> EDMPrecond:
    cfg = yaml.safe_load((ROOT / "conf" / "net" / "tiny.yaml").read_text())
    torch.manual_seed(0)
    net = UNet(1, cond_channels, 1, **{k: v for k, v in cfg.items() if not k.startswith("_")})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return EDMPrecond(net, sigma_data=0.5).to(device).eval()


def draw(
    denoiser: EDMPrecond, cond: torch.Tensor, run: SamplerRun, precision: str
) -> tuple[torch.Tensor, float]:
    """One seeded draw and its time (thread time on CPU; synchronised wall time on CUDA)."""
    cuda = cond.device.type == "cuda"
    generators = [torch.Generator(cond.device).manual_seed(i) for i in range(len(cond))]
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter() if cuda else time.thread_time()
    with torch.no_grad(), network_precision(cond.device, precision):
        x0 = run(denoiser, cond, out_channels=1, generators=generators)
    if cuda:
        torch.cuda.synchronize()
    return x0, (time.perf_counter() if cuda else time.thread_time()) - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="fields per draw")
    parser.add_argument("--size", type=int, default=32, help="field side in pixels")
    parser.add_argument("--steps", type=int, default=2, help="dpmpp_2m steps (NFE)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    denoiser = tiny_denoiser(device, cond_channels=2)
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(args.batch, 2, args.size, args.size, generator=g).to(device)
    run = SamplerRun(fn=sample_dpmpp_2m, sigmas=sigmas_karras(args.steps, 0.002, 80.0))
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    draws: dict[str, torch.Tensor] = {}
    for precision in PRECISIONS:  # warm-up (kernel selection, allocations)
        draw(denoiser, cond, run, precision)
    for _ in range(args.repeats):
        for precision in PRECISIONS:
            draws[precision], seconds = draw(denoiser, cond, run, precision)
            times[precision].append(seconds)
    best = {p: min(t) for p, t in times.items()}
    exact, mixed = draws["32-true"].float(), draws["bf16-mixed"].float()
    rel_diff = float((mixed - exact).abs().mean() / exact.std())
    speedup = best["32-true"] / best["bf16-mixed"]
    print(f"{args.batch} fields of {args.size} x {args.size}, dpmpp_2m {args.steps} NFE, {device}")
    print(f"{'precision':<12} {'best s':>10}")
    for precision in PRECISIONS:
        print(f"{precision:<12} {best[precision]:>10.4f}")
    print(f"speed-up (float32 / bf16): {speedup:.2f}x; bf16 draw off by {rel_diff:.4f} std")
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        "steps": args.steps,
        "repeats": args.repeats,
        "seconds": best,
        "speedup": speedup,
        "mean_abs_diff_over_std": rel_diff,
    }
    out = write_device_result("sample_precision", device.type, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
