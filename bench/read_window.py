"""Benchmark: the data loader's share of a training step on a whole-domain dataset.

    python bench/read_window.py [--steps 20] [--repeats 3]

An Iberia-shaped synthetic store (a 28 x 28 fine grid at x4 of a 7 x 7 coarse one, 2 coarse
predictors at 2 time offsets, a static, padded to 32 x 32) through ``DownscaleDataModule`` +
``UpsampleDataset`` + ``DataLoader`` (batch 32, no worker processes, as the Iberia configs), against
one training step of the tiny net (EDM loss, Adam) on such a batch, alternating, both in process CPU
seconds with one thread. ``ratio`` = reading a batch / one training step: the part of training the
loader adds (before the vectorised ``read_window``: 9% on the Iberia store). Writes
bench/results/read_window.json.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import downscale.utils.resolvers  # noqa: E402, F401  (registers ${first:...})
from bench.common import ROOT, write_device_result  # noqa: E402
from downscale.data.datamodule import DownscaleDataModule  # noqa: E402
from downscale.data.datasets import UpsampleDataset  # noqa: E402
from downscale.data.scaling import LogScaler, ZScaler  # noqa: E402
from downscale.data.synthetic import synthetic_store  # noqa: E402

BATCH = 32


def datamodule(cache: str, n_days: int = 4 * BATCH) -> DownscaleDataModule:
    store = synthetic_store(cache, n_days=n_days, size=28, factor=4, seed=0)
    dm = DownscaleDataModule(
        store=store,
        targets=["precip"],
        coarse=["precip", "humidity"],
        statics=["terrain"],
        coarse_offsets=[0, 1],
        variables={
            "precip": LogScaler(),
            "coarse_precip": LogScaler(),
            "coarse_humidity": ZScaler(),
            "static_terrain": ZScaler(),
        },
        splits={"train": [0.0, 1.0]},
        train_dataset=functools.partial(UpsampleDataset, pad_to_multiple=8),
        batch_size=BATCH,
    )
    dm.prepare()
    return dm


def edm_model(cond_channels: int):
    """The EDM of conf/model/edm.yaml with net=tiny."""
    with initialize_config_dir(version_base=None, config_dir=str(ROOT / "conf"), job_name="bench"):
        cfg = compose(
            "train", ["net=tiny", "paths.output_dir=/tmp/unused", "model.precond.sigma_data=0.5"]
        )
    return instantiate(
        cfg.model, net=instantiate(cfg.net), out_channels=1, cond_channels=cond_channels
    )


def cpu_seconds(fn, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as cache:
        dm = datamodule(cache)
        loader = dm.train_dataloader()
        batches = iter(())

        def read() -> dict:
            nonlocal batches
            batch = next(batches, None)
            if batch is None:
                batches = iter(loader)
                batch = next(batches)
            return batch

        batch = read()
        _, c_cond, height, width = batch["cond"].shape
        model = edm_model(c_cond)
        denoiser = model.denoiser.train()
        opt = torch.optim.Adam(denoiser.parameters(), lr=1e-3)

        def step() -> None:
            loss = model.loss_fn(denoiser, batch["target"], batch["cond"], batch["mask"])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(), read()  # warm-up
        reads, steps = [], []
        for _ in range(args.repeats):
            reads.append(cpu_seconds(read, args.steps))
            steps.append(cpu_seconds(step, args.steps))
    row = {
        "batch": BATCH,
        "size": [height, width],
        "cond_channels": c_cond,
        "read_ms": 1e3 * statistics.median(reads),
        "step_ms": 1e3 * statistics.median(steps),
    }
    row["ratio"] = row["read_ms"] / row["step_ms"]
    print(f"{'batch':>6} {'size':>8} {'read ms':>8} {'step ms':>8} {'read/step':>9}")
    print(
        f"{BATCH:>6} {height:>3} x {width:<3} {row['read_ms']:>8.1f} {row['step_ms']:>8.1f} "
        f"{row['ratio']:>9.3f}"
    )
    out = write_device_result("read_window", "cpu", {"steps": args.steps, "rows": [row]})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
