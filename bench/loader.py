"""Benchmark: training patches per second read from a zarr dataset store vs the same data in memory.

    python bench/loader.py                         # 24 days of 1024 x 1024, 8 coarse + 1 static
    python bench/loader.py --n 2048 --nt 36        # radar-sized frames

A synthetic store with the dataset-store schema: a fine predictand (``precip``, 70% dry, log-scaled),
8 coarse predictors at x8 (z-scored) and a fine static, i.e. 9 conditioning channels. The same
``DownscaleDataModule`` + ``RandomPatchDataset`` (128 x 128 patches) + ``DataLoader`` (batch 8, no
worker processes) run on each store layout (predictand chunking and codec) three ways, interleaved:
every array loaded into numpy (the baseline: only the per-patch work of scaling and nearest-neighbour
upsampling remains), every array read from the store window by window (``in_memory_limit_gb=0``), and
the predictand read from the store with the coarse predictors in memory (the DataModule's policy for
a store above its memory budget). ``ratio`` = all-from-zarr patches/s / in-memory patches/s for the
chosen layout (goal >= 0.5). Writes bench/results/loader.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downscale.data.build import CODECS  # noqa: E402
from downscale.data.datamodule import DownscaleDataModule  # noqa: E402
from downscale.data.datasets import RandomPatchDataset  # noqa: E402
from downscale.data.scaling import LogScaler, ZScaler  # noqa: E402

COARSE = [f"x{i}" for i in range(8)]
# (fine-grid spatial chunk edge, 0 = whole frames; codec as the build's `codec` recipe key)
LAYOUTS = [
    (128, "zstd"),
    (256, "zstd"),
    (512, "zstd"),
    (0, "zstd"),
    (256, "lz4"),
    (128, "none"),
    (256, "none"),
]
CHOSEN = (256, "none")


def make_dataset(n: int, nt: int, factor: int) -> xr.Dataset:
    rng = np.random.default_rng(0)
    nc = n // factor
    lat, lon = np.linspace(30, 40, n), np.linspace(-100, -90, n)
    coarse_lat = lat.reshape(nc, factor).mean(1)
    coarse_lon = lon.reshape(nc, factor).mean(1)
    # intermittent like rain: 70% dry pixels, gamma-distributed wet values
    wet = rng.random((nt, n, n)) < 0.3
    precip = np.where(wet, rng.gamma(0.5, 4.0, size=(nt, n, n)), 0.0).astype(np.float32)
    precip[:, :, : n // 20] = np.nan  # 5% no coverage
    data = {"precip": (("time", "lat", "lon"), precip)}
    for name in COARSE:
        data[f"coarse_{name}"] = (
            ("time", "lat_coarse", "lon_coarse"),
            rng.standard_normal((nt, nc, nc)).astype(np.float32),
        )
    data["static_terrain"] = (("lat", "lon"), rng.random((n, n)).astype(np.float32))
    data["valid_mask"] = (("lat", "lon"), np.isfinite(precip[0]).astype(np.uint8))
    coords = {
        "time": pd.date_range("2000-01-01", periods=nt, freq="D"),
        "lat": lat,
        "lon": lon,
        "lat_coarse": coarse_lat,
        "lon_coarse": coarse_lon,
    }
    return xr.Dataset(data, coords=coords)


def write_store(ds: xr.Dataset, path: Path, edge: int, codec: str) -> None:
    n = ds.sizes["lat"]
    fine = (1, n, n) if edge == 0 else (1, edge, edge)
    compressors = CODECS[codec]()
    enc = {"precip": {"chunks": fine, "compressors": compressors}}
    for name in COARSE:
        shape = (1, *ds[f"coarse_{name}"].shape[1:])
        enc[f"coarse_{name}"] = {"chunks": shape, "compressors": compressors}
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3, encoding=enc)


def patches_per_second(store: Path, limit_gb: float, n_patches: int, batch: int) -> float:
    """Patches/s through the DataModule with ``in_memory_limit_gb=limit_gb`` (arrays are loaded
    smallest first while they fit; the rest is read from the store window by window)."""
    scalers = {"precip": LogScaler(), "static_terrain": ZScaler()}
    scalers.update({f"coarse_{c}": ZScaler() for c in COARSE})
    dm = DownscaleDataModule(
        store=store,
        targets=["precip"],
        coarse=COARSE,
        statics=["terrain"],
        variables=scalers,
        splits={"train": [0.0, 1.0]},
        in_memory_limit_gb=limit_gb,
    )
    dm.prepare()
    torch.manual_seed(0)
    dataset = RandomPatchDataset(
        dm.fields, dm.split_indices["train"], patch_size=128, patches_per_time=10_000
    )
    loader = iter(DataLoader(dataset, batch_size=batch, shuffle=True))
    next(loader)  # warm-up: opens chunks, caches codecs
    done, t0 = 0, time.perf_counter()
    while done < n_patches:
        out = next(loader)
        done += out["target"].shape[0]
    assert out["cond"].shape[1] == len(COARSE) + 1
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="fine grid n x n")
    ap.add_argument("--nt", type=int, default=24, help="time steps")
    ap.add_argument("--patches", type=int, default=400, help="patches timed per configuration")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    ds = make_dataset(args.n, args.nt, factor=8)
    # a budget that holds the coarse predictors but not the predictand: what the DataModule does with
    # a store larger than memory (the predictand is ~64x larger than each x8 coarse predictor)
    coarse_gb = sum(ds[f"coarse_{c}"].nbytes for c in COARSE) / 2**30 * 1.01

    def label(layout: tuple[int, str]) -> str:
        edge, codec = layout
        return f"(1, {edge or args.n}, {edge or args.n}) {codec}"

    all_zarr, fine_zarr, sizes = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        stores = {}
        for layout in LAYOUTS:
            stores[layout] = Path(tmp, f"store_{layout[0]}_{layout[1]}.zarr")
            write_store(ds, stores[layout], *layout)
            files = (stores[layout] / "precip").rglob("*")
            sizes[layout] = sum(f.stat().st_size for f in files if f.is_file()) / 2**20

        # memory, all-zarr and predictand-zarr runs interleaved per layout and repeat, so that
        # load from other processes on the (shared) machine hits them alike; best of `repeat` each
        memory_runs, all_zarr, fine_zarr = {}, {}, {}
        for layout in LAYOUTS:
            runs = {"memory": [], "all": [], "fine": []}
            for _ in range(args.repeat):
                for mode, limit in (("memory", 64.0), ("all", 0.0), ("fine", coarse_gb)):
                    runs[mode].append(
                        patches_per_second(stores[layout], limit, args.patches, args.batch)
                    )
            memory_runs[layout] = max(runs["memory"])
            all_zarr[layout], fine_zarr[layout] = max(runs["all"]), max(runs["fine"])

    print(
        f"{args.nt} x {args.n} x {args.n} predictand, 8 coarse predictors at x8 + 1 static; "
        f"128 x 128 patches, batch {args.batch}, no workers"
    )
    header = (
        f"{'precip chunks, codec':28s} {'MiB':>6s} {'memory/s':>9s} {'all zarr/s':>10s} {'ratio':>6s} "
        f"{'precip zarr/s':>13s} {'ratio':>6s}"
    )
    print(header + "\n" + "-" * len(header))
    for layout in LAYOUTS:
        name = label(layout) + (" *" if layout == CHOSEN else "")
        a, f, m = all_zarr[layout], fine_zarr[layout], memory_runs[layout]
        print(
            f"{name:28s} {sizes[layout]:6.1f} {m:9.1f} {a:10.1f} {a / m:6.2f} "
            f"{f:13.1f} {f / m:6.2f}"
        )
    print("memory: the same store loaded into numpy arrays (the baseline, measured alongside)")
    print("all zarr: every array read from the store window by window (in_memory_limit_gb=0)")
    print("precip zarr: predictand from the store, coarse predictors in memory (the DataModule's")
    print("  policy for a store larger than its memory budget: smallest arrays are loaded first)")
    ratio = all_zarr[CHOSEN] / memory_runs[CHOSEN]
    print(f"* chosen layout; ratio = all zarr / in-memory = {ratio:.2f} (goal >= 0.5)")
    report = {
        "field": f"{args.nt} x {args.n} x {args.n} float32 predictand (70% dry), "
        "8 coarse predictors at x8, 1 static",
        "patch": [128, 128],
        "cond_channels": len(COARSE) + 1,
        "batch_size": args.batch,
        "num_workers": 0,
        "in_memory_patches_per_s": {label(k): v for k, v in memory_runs.items()},
        "precip_store_mib": {label(k): v for k, v in sizes.items()},
        "zarr_all_arrays_patches_per_s": {label(k): v for k, v in all_zarr.items()},
        "zarr_predictand_only_patches_per_s": {label(k): v for k, v in fine_zarr.items()},
        "chosen_layout": label(CHOSEN),
        "ratio": ratio,
        "ratio_predictand_from_zarr": fine_zarr[CHOSEN] / memory_runs[CHOSEN],
        "goal": "ratio = zarr patches/s (every array from the store) / in-memory patches/s >= 0.5",
        "repeat": args.repeat,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
