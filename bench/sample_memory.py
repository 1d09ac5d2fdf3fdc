"""Sampling memory: peak RSS while sampling 100 vs 1,000 days in time blocks (should be flat).

Each size runs in its own fresh process: the synthetic store (lazily read: ``in_memory_limit_gb=0``,
so the data module holds no arrays in memory), a cheap analytic model (the exact denoiser of
Gaussian data around the conditioning, so the network costs nothing and only the driver's memory
shows), the Euler sampler, and ``write_samples`` over all days in blocks. A thread polls the RSS
(psutil) every 5 ms during ``write_samples``; ``growth`` = peak RSS during sampling - RSS just
before. The stores are generated beforehand in the parent process and the scalers are fitted on
the same 50 days for both sizes, so the processes differ only in the number of days sampled. Goal: ``ratio`` = peak(1,000 days) / peak(100 days) close to 1 (<= 1.05)::

    OMP_NUM_THREADS=1 python bench/sample_memory.py

Writes ``bench/results/sample_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import git_commit  # noqa: E402

GOAL = 1.05


def measure(n_days: int, size: int, members: int, block: int, batch: int, workdir: Path) -> dict:
    """Sample ``n_days`` days in this process; the RSS figures in MiB."""
    import psutil
    import torch

    from downscale.data.datamodule import DownscaleDataModule
    from downscale.data.scaling import LogScaler, ZScaler
    from downscale.data.synthetic import synthetic_store
    from downscale.sampling.driver import SampleRequest, SamplerRun, write_samples
    from downscale.sampling.samplers import sample_euler
    from downscale.sampling.schedules import sigmas_karras

    class AnalyticModel(torch.nn.Module):
        """Exact denoiser of N(cond_0, s^2) data: costs a few element-wise operations."""

        def denoise(self, x, sigma, cond):
            s2, sig2 = 0.09, sigma.view(-1, 1, 1, 1) ** 2
            return (s2 * x + sig2 * cond[:, :1]) / (s2 + sig2)

        def generate(self, cond, n_members, *, sampler, generators, anchor=None):
            rep = cond.repeat_interleave(n_members, 0)
            x0 = sampler(self.denoise, rep, out_channels=1, generators=generators)
            return x0.view(cond.shape[0], n_members, 1, *cond.shape[-2:])

    store = synthetic_store(workdir / "cache", n_days=n_days, size=size, factor=4)
    dm = DownscaleDataModule(
        store,
        ["precip"],
        ["precip", "humidity"],
        {"precip": LogScaler(), "coarse_precip": LogScaler(), "coarse_humidity": ZScaler()},
        # scalers fitted on the same first 50 days for every size: only sampling differs
        {"train": [0.0, 50 / n_days], "test": [0.0, 1.0]},
        in_memory_limit_gb=0.0,
    )
    dm.prepare()
    request = SampleRequest(
        out=workdir / f"samples-{n_days}.zarr",
        times=dm.split_indices["test"],
        n_members=members,
        seed=0,
        block_size=block,
        attrs={},
    )
    run = SamplerRun(fn=sample_euler, sigmas=sigmas_karras(2, 0.02, 10.0))
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    started = time.perf_counter()
    write_samples(AnalyticModel(), dm, run, request, batch_size=batch, progress=False)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    mib = 2**20
    return {
        "days": len(request.times),
        "blocks": -(-len(request.times) // block),
        "rss_before_mib": before / mib,
        "peak_rss_mib": peak[0] / mib,
        "growth_mib": (peak[0] - before) / mib,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, nargs=2, default=[100, 1000])
    parser.add_argument("--size", type=int, default=64, help="fine grid side (pixels)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        row = measure(args.child, args.size, args.members, args.block, args.batch, args.workdir)
        print(json.dumps(row))
        return
    commit = git_commit()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from downscale.data.synthetic import synthetic_store

        for n in args.days:  # stores generated here, so the measured processes only open them
            synthetic_store(Path(tmp) / "cache", n_days=n, size=args.size, factor=4)
        for n in args.days:
            cmd = [sys.executable, __file__, "--child", str(n), "--workdir", tmp]
            cmd += ["--size", str(args.size), "--members", str(args.members)]
            cmd += ["--block", str(args.block), "--batch", str(args.batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    small, large = rows
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    print("| days | blocks | RSS before MiB | peak RSS MiB | growth MiB | seconds |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['days']} | {r['blocks']} | {r['rss_before_mib']:.1f} | {r['peak_rss_mib']:.1f} "
            f"| {r['growth_mib']:.1f} | {r['seconds']:.1f} |"
        )
    print(f"ratio (peak {large['days']} / peak {small['days']} days) = {ratio:.3f}; goal <= {GOAL}")
    result = {
        "commit": commit,
        "machine": platform.machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "workdir")},
        "rows": rows,
        "baseline": small,
        "ratio": ratio,
        "growth_ratio": large["growth_mib"] / max(small["growth_mib"], 1e-9),
        "goal": GOAL,
    }
    from downscale.utils.atomic import write_text

    write_text(ROOT / "bench/results/sample_memory.json", json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
