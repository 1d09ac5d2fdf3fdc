"""Benchmark the evaluation: the full scorecard on dask arrays, and our CRPS against xskillscore.

    python bench/evaluate.py                       # small default (a few minutes on 2 cores)
    python bench/evaluate.py --members 16 --days 365 --size 256 --crps-days 30   # full size

1. Full scorecard (conf/evaluation/default.yaml, all figures and report) on lazily generated
   gamma "precipitation" (member, time, lat, lon) chunked over time: wall time and peak RSS.
2. ``pixel.crps_ensemble`` against ``xskillscore.crps_ensemble`` on the same in-memory arrays
   (members x crps-days x size x size): equal to 1e-6, ``ratio`` = our time / xskillscore's
   (goal <= 0.1).

Writes bench/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import dask.array as dsa
import numpy as np
import pandas as pd
import psutil
import xarray as xr
import xskillscore as xs
from omegaconf import OmegaConf

from downscale.evaluation.metrics import pixel
from downscale.evaluation.runner import evaluate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import git_commit  # noqa: E402

GOAL = 0.1


class PeakRSS:
    """Poll this process's resident memory every 50 ms; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def lazy_fields(members: int, days: int, size: int, chunk: int, seed: int = 0):
    rng = dsa.random.default_rng(seed)
    coords = {
        "time": pd.date_range("2001-01-01", periods=days),
        "lat": 30 + 0.1 * np.arange(size),
        "lon": -110 + 0.1 * np.arange(size),
    }
    s = rng.gamma(0.5, 4.0, (members, days, size, size), chunks=(members, chunk, size, size))
    o = rng.gamma(0.5, 4.0, (days, size, size), chunks=(chunk, size, size))
    attrs = {"units": "mm/day"}
    samples = xr.DataArray(
        s.astype(np.float32), dims=("member", "time", "lat", "lon"), coords=coords, attrs=attrs
    )
    obs = xr.DataArray(
        o.astype(np.float32), dims=("time", "lat", "lon"), coords=coords, attrs=attrs
    )
    mask = xr.ones_like(obs.isel(time=0, drop=True), dtype=bool).compute()
    mask[: size // 8, : size // 8] = False
    return samples, obs, mask


def bench_scorecard(args) -> dict:
    samples, obs, mask = lazy_fields(args.members, args.days, args.size, args.chunk)
    cfg = OmegaConf.load(ROOT / "conf" / "evaluation" / "default.yaml")
    cfg.chunks = {"time": args.chunk}
    cfg.wandb = False
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as mem:
        start_rss = mem.peak
        t0 = time.perf_counter()
        flat = evaluate(samples, obs, mask=mask, cfg=cfg, out_dir=Path(tmp))
        wall = time.perf_counter() - t0
    return {
        "members": args.members,
        "days": args.days,
        "size": args.size,
        "chunk_days": args.chunk,
        "data_gb": (samples.nbytes + obs.nbytes) / 1e9,
        "wall_s": wall,
        "peak_rss_gb": mem.peak / 1e9,
        "rss_increase_gb": (mem.peak - start_rss) / 1e9,
        "n_metrics": len(flat),
        "crps": flat["crps"],
    }


def bench_crps(args) -> dict:
    rng = np.random.default_rng(1)
    shape = (args.members, args.crps_days, args.size, args.size)
    dims = ("member", "time", "lat", "lon")
    samples = xr.DataArray(rng.gamma(0.5, 4.0, shape).astype(np.float32), dims=dims)
    obs = xr.DataArray(rng.gamma(0.5, 4.0, shape[1:]).astype(np.float32), dims=dims[1:])
    t0 = time.perf_counter()
    ours = float(pixel.crps_ensemble(samples, obs))
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = float(xs.crps_ensemble(obs, samples, member_dim="member").mean())
    t_ref = time.perf_counter() - t0
    return {
        "shape": list(shape),
        "ours_s": t_ours,
        "xskillscore_s": t_ref,
        "ours": ours,
        "xskillscore": ref,
        "abs_diff": abs(ours - ref),
        "equal_1e-6": abs(ours - ref) <= 1e-6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=16, help="days per dask chunk")
    parser.add_argument("--crps-members", type=int, default=16)
    parser.add_argument("--crps-days", type=int, default=10)
    parser.add_argument("--crps-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "evaluate.json")
    args = parser.parse_args()

    commit = git_commit()  # the code measured: read before the (long) run
    scorecard = bench_scorecard(args)
    crps_args = argparse.Namespace(
        members=args.crps_members, crps_days=args.crps_days, size=args.crps_size
    )
    crps = bench_crps(crps_args)
    ratio = crps["ours_s"] / crps["xskillscore_s"]
    result = {
        "scorecard": scorecard,
        "crps": crps,
        "ratio": ratio,
        "goal": GOAL,
        "ratio_definition": "our crps_ensemble time / xskillscore.crps_ensemble time",
        "commit": commit,
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    s = scorecard
    print("| part | size | wall [s] | peak RSS [GB] | note |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| full scorecard | {s['members']}x{s['days']}x{s['size']}x{s['size']} "
        f"({s['data_gb']:.3f} GB) | {s['wall_s']:.1f} | {s['peak_rss_gb']:.2f} | "
        f"{s['n_metrics']} numbers |"
    )
    shape = "x".join(str(n) for n in crps["shape"])
    print(f"| crps (ours) | {shape} | {crps['ours_s']:.2f} | | {crps['ours']:.6f} |")
    print(
        f"| crps (xskillscore) | {shape} | {crps['xskillscore_s']:.2f} | | "
        f"{crps['xskillscore']:.6f} |"
    )
    print(f"ratio {ratio:.3f} (goal <= {GOAL}); |diff| {crps['abs_diff']:.2e}")


if __name__ == "__main__":
    main()
