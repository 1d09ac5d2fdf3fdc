"""Train a model: ``python -m downscale.train [model=edm] [data=synthetic] [net=tiny] ...``.

``run(cfg)`` does the work (tests call it with configs from Hydra's compose API); ``main`` is the thin
command-line wrapper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig

from downscale.utils.checkpoint import load_checkpoint
from downscale.utils.cli import run_cli
from downscale.utils.config import to_plain
from downscale.utils.errors import report_user_errors, require
from downscale.utils.seeding import check_accelerator, check_trainer_types

CONFIG_KEYS_SAVED = ("data", "model", "net", "seed")


def _resume_checkpoint(cfg: DictConfig) -> str | None:
    if cfg.get("resume") is None:
        return None
    path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
    require(
        path.is_file(),
        f"cannot resume: {path} does not exist; pass resume=<train run dir> of a run that saved a checkpoint",
    )
    return str(path)


def _init_from(model: L.LightningModule, path: str) -> None:
    checkpoint = load_checkpoint(path)
    missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    require(
        not unexpected and not [k for k in missing if not k.startswith("ema.")],
        f"init_from={path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
        "fine-tune with the same model/net/data channels",
    )


def build(cfg: DictConfig) -> tuple[Any, L.LightningModule, L.Trainer]:
    """Instantiate the DataModule, the model and the Trainer of a train config."""
    check_accelerator(cfg.trainer.accelerator, cfg.trainer.precision)
    check_trainer_types(cfg.trainer)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    channels = {"out_channels": datamodule.out_channels, "cond_channels": datamodule.cond_channels}
    model = instantiate(cfg.model, net=instantiate(cfg.net), **channels)
    model.run_info = {
        "config": {k: to_plain(cfg[k]) for k in CONFIG_KEYS_SAVED if k in cfg},
        "channels": channels,
        "scalers": datamodule.scaler_states(),
        "grid": datamodule.grid(),
    }
    if cfg.get("init_from"):
        _init_from(model, cfg.init_from)
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values()]
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    return datamodule, model, trainer


@report_user_errors
def run(cfg: DictConfig) -> dict[str, Any]:
    """Train; returns the run dir, checkpoint paths and the final logged metrics."""
    resume_from = _resume_checkpoint(cfg)
    run_dir = Path(cfg.run_dir)
    datamodule, model, trainer = build(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams(model.run_info["config"])
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    finally:
        _finish_wandb()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v)}
    last = run_dir / "checkpoints" / "last.ckpt"
    print(f"checkpoint: {last}")
    return {
        "run_dir": run_dir,
        "last_ckpt": last,
        "best_ckpt": run_dir / "checkpoints" / "best.ckpt",
        "metrics": metrics,
    }


def _finish_wandb() -> None:
    """Close the W&B run even on failure so that multirun jobs never share a run."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    run_cli("train", main)
