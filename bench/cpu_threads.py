"""Training throughput of the CPU's cores used by one process (every core as a torch thread) against
one process per core (1 thread each, side by side): why ``make bench-skill`` runs its suites side by
side (``--jobs 2``).

Each worker runs bare EDM training steps of a net (bench/train_step.py's loop without EMA) on a
fixed batch and reports steps per wall-clock second; the side-by-side figure is the sum over its
workers. The two layouts alternate over the repeats, medians are reported. Wall clock: run it on an
otherwise idle machine.

    python bench/cpu_threads.py [--net tiny] [--steps 20] [--repeats 3]

Prints a table and writes bench/results/cpu_threads.json with ``ratio`` = side by side / one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, not another installed copy

from bench.common import git_commit  # noqa: E402

# (batch, size): a radar crop batch (16 patches of 64 x 64) and an Iberia-sized one (32 of 32 x 32)
SHAPES = ((16, 64), (32, 32))


def worker(net: str, batch: int, size: int, steps: int, warmup: int) -> float:
    """Steps per wall-clock second of bare EDM training steps in this process."""
    import torch  # the workers only: the parent process needs no torch

    from bench.train_step import make_batch, make_model

    model, _ = make_model(net, steps)
    denoiser = model.denoiser.train()
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-4)
    data = make_batch(batch, size, torch.device("cpu"))
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        loss = model.loss_fn(denoiser, data["target"], data["cond"], data["mask"])["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def layout(args, batch: int, size: int, processes: int, threads: int) -> float:
    """Summed steps/s of ``processes`` workers started together, ``threads`` torch threads each."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", "--net", args.net, "--steps", str(args.steps)]
    cmd += ["--batch", str(batch), "--size", str(size), "--warmup", str(args.warmup)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    rates = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            sys.exit(f"error: a worker failed (exit {proc.returncode})")
        rates.append(float(out.strip().splitlines()[-1]))
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_threads.json"))
    args = parser.parse_args()
    if args.worker:
        print(worker(args.net, args.batch, args.size, args.steps, args.warmup))
        return
    cores = os.cpu_count() or 1
    rows = []
    for batch, size in SHAPES:
        one, side = [], []
        for _ in range(args.repeats):  # alternate so that machine load hits both alike
            one.append(layout(args, batch, size, 1, cores))
            side.append(layout(args, batch, size, cores, 1))
        one_med, side_med = statistics.median(one), statistics.median(side)
        rows.append(
            {
                "batch": batch,
                "size": size,
                "one_process_steps_per_s": one_med,
                "side_by_side_steps_per_s": side_med,
                "ratio": side_med / one_med,
            }
        )
    print(
        f"{'batch x size':>14} {f'1 x {cores} threads':>16} {f'{cores} x 1 thread':>16} {'ratio':>7}"
    )
    for r in rows:
        print(
            f"{r['batch']:>6} x {r['size']:<5} {r['one_process_steps_per_s']:>16.2f} "
            f"{r['side_by_side_steps_per_s']:>16.2f} {r['ratio']:>7.2f}"
        )
    result = {
        "command": "python " + " ".join(sys.argv),
        "commit": git_commit(),
        "machine": f"{platform.node()} {platform.machine()}, {cores} CPU",
        "net": args.net,
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
