"""Optimizer steps per second of our LightningModule (DiffusionModel under a Lightning Trainer) against a
bare PyTorch loop with the same network, batch, loss, optimizer, gradient clipping, EMA and precision,
measured side by side (alternating repeats, median of each) in one run.

On CUDA, steps/s are per wall-clock second. On CPU they are per second of process CPU time
(``time.process_time``): on a shared machine the wall clock of the same loop varies by 2-3x with other
users' load, while the CPU time our process spends per step does not; on an idle machine with
``OMP_NUM_THREADS=1`` the two agree. Wall-clock figures are recorded too.

    python bench/train_step.py [--net tiny] [--batch 8] [--size 32] [--steps 30] [--precision 32]

Prints a table and writes bench/results/train_step.json with ``ratio`` = ours / bare (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import IterableDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, not another installed copy

import downscale.utils.resolvers  # noqa: E402, F401  (registers ${first:...})
from bench.common import git_commit  # noqa: E402

C_OUT, C_COND = 1, 3


class SameBatch(IterableDataset):
    """Yields the same (device) batch ``n`` times: no data loading in either loop."""

    def __init__(self, batch: dict, n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


def clocks() -> tuple[float, float]:
    """(wall, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


def rates(steps: int, start: tuple[float, float], end: tuple[float, float]) -> dict[str, float]:
    return {
        "wall": steps / (end[0] - start[0]),
        "cpu": steps / (end[1] - start[1]),
    }


class StepTimer(L.Callback):
    """Clocks from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = (0.0, 0.0)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.start = clocks()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.max_steps - 1:
            self._sync()
            self.end = clocks()


def make_model(net: str, steps: int):
    with initialize_config_dir(version_base=None, config_dir=str(ROOT / "conf"), job_name="bench"):
        # batches are N(0, 0.5^2) (make_batch): sigma_data 0.5, not measured from a store
        cfg = compose(
            "train", [f"net={net}", "paths.output_dir=/tmp/unused", "model.precond.sigma_data=0.5"]
        )
    torch.manual_seed(0)
    model = instantiate(
        cfg.model, net=instantiate(cfg.net), out_channels=C_OUT, cond_channels=C_COND
    )
    return model, cfg


def make_batch(batch: int, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {
        "target": torch.randn(batch, C_OUT, size, size, generator=g) * 0.5,
        "cond": torch.randn(batch, C_COND, size, size, generator=g),
        "mask": torch.ones(batch, 1, size, size),
        "time": torch.arange(batch),
        "anchor": torch.zeros(batch, 2, dtype=torch.long),
    }
    return {k: v.to(device) for k, v in out.items()}


def run_lightning(args, device: torch.device) -> dict[str, float]:
    model, cfg = make_model(args.net, args.steps)
    timer = StepTimer(args.warmup, device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=args.steps,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(
        SameBatch(make_batch(args.batch, args.size, device), args.steps), batch_size=None
    )
    trainer.fit(model, train_dataloaders=loader)
    return rates(args.steps - args.warmup, timer.start, timer.end)


def run_bare(args, device: torch.device) -> dict[str, float]:
    model, cfg = make_model(args.net, args.steps)
    denoiser = copy.deepcopy(model.denoiser).to(device).train()
    ema = instantiate(cfg.model.ema)(denoiser)
    loss_fn = model.loss_fn
    optimizer = instantiate(cfg.model.optimizer)(list(denoiser.parameters()))
    clip = cfg.trainer.gradient_clip_val
    batch = make_batch(args.batch, args.size, device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision == "bf16-mixed"
        else torch.autocast(device.type, dtype=torch.float16)
        if args.precision == "16-mixed"
        else nullcontext()
    )
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    start = (0.0, 0.0)
    for step in range(args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clocks()
        with autocast:
            loss = loss_fn(denoiser, batch["target"], batch["cond"], batch["mask"])["loss"]
        if not torch.isfinite(loss):
            raise RuntimeError("loss is not finite")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        ema.update_parameters(denoiser)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return rates(args.steps - args.warmup, start, clocks())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_step.json"))
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ours, bare = [], []
    for _ in range(args.repeats):  # alternate so that machine load hits both alike
        bare.append(run_bare(args, device))
        ours.append(run_lightning(args, device))
    clock = "wall" if device.type == "cuda" else "cpu"
    med = {
        (loop, c): statistics.median(r[c] for r in runs)
        for loop, runs in (("ours", ours), ("bare", bare))
        for c in ("wall", "cpu")
    }
    ratio = med["ours", clock] / med["bare", clock]
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    print(
        f"device {name}, net {args.net}, batch {args.batch}, {args.size}x{args.size}, "
        f"precision {args.precision}; ratio on {clock} time"
    )
    print(f"{'loop':<24}{'steps/s cpu (median)':>22}{'steps/s wall (median)':>23}")
    for label, loop in (("bare PyTorch", "bare"), ("DiffusionModel+Trainer", "ours")):
        print(f"{label:<24}{med[loop, 'cpu']:>22.2f}{med[loop, 'wall']:>23.2f}")
    print(f"ratio {ratio:.3f} (goal >= 0.95)")
    result = {
        "benchmark": "train_step",
        "commit": git_commit(),
        "device": name,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "clock": clock,
        "ours_steps_per_s": med["ours", clock],
        "bare_steps_per_s": med["bare", clock],
        "ours_steps_per_wall_s": med["ours", "wall"],
        "bare_steps_per_wall_s": med["bare", "wall"],
        "wall_ratio": med["ours", "wall"] / med["bare", "wall"],
        "ours_repeats": ours,
        "bare_repeats": bare,
        "ratio": ratio,
        "goal": 0.95,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
