"""CPU time of the tiny net's forward pass and training step with glibc's default allocator settings
against ``downscale.utils.malloc.tune_malloc`` (raised mmap and trim thresholds), in one run.

The settings are process-wide and cannot be undone, so each measurement runs in a fresh child
process; the two settings alternate (``--repeats`` pairs) and ``ratio`` = tuned / default is the
median over the pairs of the thread-CPU-time medians (load-robust, as ``bench/sampler_overhead.py``).
The shapes are Iberia's: ``net=tiny``, 24 x 32 fields, 1 noisy + 10 conditioning channels (5
predictors at 2 time steps), batch 64 (sampling) and 32 (training). Peak RSS is recorded too.

    OMP_NUM_THREADS=1 python bench/cpu_malloc.py

Writes ``bench/results/cpu_malloc.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import git_commit  # noqa: E402

COND, HEIGHT, WIDTH = 10, 24, 32


def child(tuned: bool, forward_batch: int, train_batch: int, calls: int) -> dict:
    """One measurement in this process: median forward and train-step thread CPU times."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from downscale.utils.malloc import tune_malloc

    applied = tune_malloc() if tuned else False
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", ["net=tiny", "paths.output_dir=/tmp/unused"])
    net = instantiate(cfg.net)(out_channels=1, cond_channels=COND, noisy_channels=1)

    def inputs(batch: int) -> tuple:
        return (
            torch.randn(batch, 1, HEIGHT, WIDTH),
            torch.rand(batch),
            torch.randn(batch, COND, HEIGHT, WIDTH),
        )

    x, sigma, cond = inputs(forward_batch)
    net.eval()
    forward = []
    with torch.no_grad():
        for i in range(calls + 3):
            start = time.thread_time()
            net(x, sigma, cond)
            if i >= 3:  # warm-up
                forward.append(time.thread_time() - start)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, sigma, cond = inputs(train_batch)
    steps = []
    for i in range(calls + 3):
        start = time.thread_time()
        net(x, sigma, cond).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 3:
            steps.append(time.thread_time() - start)
    return {
        "applied": applied,
        "forward_ms": statistics.median(forward) * 1e3,
        "train_step_ms": statistics.median(steps) * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--forward-batch", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_malloc.json")
    ap.add_argument("--child", choices=["default", "tuned"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = child(args.child == "tuned", args.forward_batch, args.train_batch, args.calls)
        print(json.dumps(result))
        return
    commit = git_commit()
    runs: dict[str, list[dict]] = {"default": [], "tuned": []}
    for _ in range(args.repeats):
        for mode in ("default", "tuned"):
            cmd = [sys.executable, __file__, "--child", mode, "--calls", str(args.calls),
                   "--forward-batch", str(args.forward_batch),
                   "--train-batch", str(args.train_batch)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = {}
    print(f"{'quantity':16s} {'default':>10s} {'tuned':>10s} {'ratio':>7s}")
    for key in ("forward_ms", "train_step_ms", "peak_rss_mb"):
        ratios = [t[key] / d[key] for d, t in zip(runs["default"], runs["tuned"], strict=True)]
        default = statistics.median(r[key] for r in runs["default"])
        tuned = statistics.median(r[key] for r in runs["tuned"])
        rows[key] = {"default": default, "tuned": tuned, "ratio": statistics.median(ratios)}
        print(f"{key:16s} {default:10.1f} {tuned:10.1f} {rows[key]['ratio']:7.3f}")
    record = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
        "commit": commit,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "applied": all(r["applied"] for r in runs["tuned"]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": rows,
        "statistic": "ratio: median over alternating child-process pairs of tuned / default",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
