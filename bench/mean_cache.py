"""Benchmark: the residual stage with and without the cache of regression means.

    python bench/mean_cache.py [--epochs 3] [--repeats 2]

The residual model of the Iberia core (``conf/model/residual.yaml`` with net=tiny and a mean
cross-fitted over 2 folds) trained by Lightning on the Iberia-shaped synthetic store of
``bench/read_window.py`` (256 days, batch 32, whole-domain windows): one regression epoch, then
``--epochs`` residual epochs, with ``model.mean_cache_gb`` 1 and 0, alternating, in one thread.
Reports the process CPU seconds of a residual-stage epoch after the first (the first fills the
cache) and their ratio, and the largest difference between the two trainings' final weights (the
cached means differ from recomputed ones by float32 rounding; downscale/models/mean_cache.py).
Writes bench/results/mean_cache.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, write_device_result  # noqa: E402
from bench.read_window import BATCH, datamodule  # noqa: E402


class EpochTimes(L.Callback):
    """Process CPU seconds of each training epoch."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.process_time()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.seconds.append(time.process_time() - self._start)


def residual_model(cond_channels: int, mean_cache_gb: float):
    with initialize_config_dir(version_base=None, config_dir=str(ROOT / "conf"), job_name="bench"):
        cfg = compose(
            "train",
            [
                "model=residual",
                "net=tiny",
                "paths.output_dir=/tmp/unused",
                "model.precond.sigma_data=0.1",
                "model.regression_epochs=1",
                "model.cross_fit=2",
                "model.cross_fit_block=8",
                f"model.mean_cache_gb={mean_cache_gb}",
            ],
        )
    return instantiate(
        cfg.model, net=instantiate(cfg.net), out_channels=1, cond_channels=cond_channels
    )


def train(dm, cond_channels: int, epochs: int, mean_cache_gb: float):
    L.seed_everything(0, verbose=False)
    model = residual_model(cond_channels, mean_cache_gb)
    times = EpochTimes()
    trainer = L.Trainer(
        max_epochs=1 + epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[times],
    )
    trainer.fit(model, datamodule=dm)
    return model, times.seconds[2:]  # residual epochs after the one that fills the cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    epoch = {1.0: [], 0.0: []}
    with tempfile.TemporaryDirectory() as cache:
        dm = datamodule(cache, n_days=8 * BATCH)
        cond_channels = dm.cond_channels
        for _ in range(args.repeats):
            models = {}
            for gb in epoch:
                models[gb], seconds = train(dm, cond_channels, args.epochs, gb)
                epoch[gb] += seconds
            cached, plain = models[1.0].state_dict(), models[0.0].state_dict()
            weight_diff = max((cached[k] - plain[k]).abs().max().item() for k in plain)
    row = {
        "batch": BATCH,
        "days": 8 * BATCH,
        "residual_epochs_timed": len(epoch[1.0]),
        "epoch_s_cached": statistics.median(epoch[1.0]),
        "epoch_s_uncached": statistics.median(epoch[0.0]),
        "max_weight_diff": weight_diff,
    }
    row["ratio"] = row["epoch_s_cached"] / row["epoch_s_uncached"]
    print(f"{'epoch s cached':>15} {'epoch s uncached':>17} {'ratio':>6} {'max weight diff':>16}")
    print(
        f"{row['epoch_s_cached']:>15.2f} {row['epoch_s_uncached']:>17.2f} {row['ratio']:>6.3f} "
        f"{weight_diff:>16.2e}"
    )
    out = write_device_result("mean_cache", "cpu", {"epochs": args.epochs, "rows": [row]})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
