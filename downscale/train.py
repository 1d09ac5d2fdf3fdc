"""Train a model: ``python -m downscale.train [model=edm] [data=synthetic] [net=tiny] ...``.

``run(cfg)`` does the work (tests call it with configs from Hydra's compose API); ``main`` is the thin
command-line wrapper.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_info
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from downscale.utils.atomic import write_text
from downscale.utils.checkpoint import load_checkpoint
from downscale.utils.cli import run_cli
from downscale.utils.config import instantiate_user, to_plain
from downscale.utils.errors import UserError, report_user_errors, require
from downscale.utils.seeding import check_accelerator, check_trainer_types, device_label

CONFIG_KEYS_SAVED = ("data", "model", "net", "seed")


def _resume_checkpoint(cfg: DictConfig) -> str | None:
    """``last.ckpt`` of the run to resume, or its ``on_exception.ckpt`` (saved on SIGTERM or an
    error) if that is further along: the higher global step, the newer file on a tie. Not the newer
    file alone: a resume that fails before the fit loop restores the training state (e.g. on a
    config error in ``on_fit_start``) leaves an ``on_exception.ckpt`` at step 0, which would restart
    the run's loops, optimizer and stages from the beginning."""
    if cfg.get("resume") is None:
        return None
    folder = Path(cfg.resume) / "checkpoints"
    path = folder / "last.ckpt"
    found = [p for p in (path, folder / "on_exception.ckpt") if p.is_file()]
    require(
        bool(found),
        f"cannot resume: {path} does not exist; pass resume=<train run dir> of a run that saved a checkpoint",
    )
    return str(max(found, key=lambda p: (_global_step(p), p.stat().st_mtime_ns)))


def _global_step(path: Path) -> int:
    """A checkpoint's optimizer step count, read without loading its tensors (memory-mapped); -1
    for a file that cannot be read (cut short by a kill), so that the other one is resumed."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - truncated or corrupt files all rank last
        return -1
    return int(checkpoint.get("global_step", 0))


def _refuse_used_run_dir(cfg: DictConfig) -> None:
    """A new training never writes over another run's checkpoints. (Lightning would also quietly
    resume from them: with an ``OnExceptionCheckpoint`` callback, ``fit`` without ``ckpt_path``
    loads the newest ``last`` checkpoint it finds.) Continuing a run is ``resume=``."""
    if cfg.get("resume") is not None:
        return
    folder = Path(cfg.run_dir) / "checkpoints"
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    require(
        not found,
        f"{cfg.run_dir} already holds the checkpoints of a training ({', '.join(found)}); continue "
        f"it with resume={cfg.run_dir}, or train into another paths.output_dir",
    )


def _init_from(model: L.LightningModule, path: str, channels: dict, targets: list) -> None:
    """Load the weights of another checkpoint (fine-tuning); refuse one that does not fit."""
    checkpoint = load_checkpoint(path)
    info = checkpoint["downscale"]
    require(
        info.get("channels", channels) == channels,
        f"init_from={path} was trained with channels {info.get('channels')} but this data gives "
        f"{channels}; fine-tune with the same variables (data.targets, data.coarse, data.statics)",
    )
    old_targets = info.get("grid", {}).get("targets", targets)
    require(
        list(old_targets) == list(targets),
        f"init_from={path} predicts {old_targets} but this data has targets {targets}; "
        "fine-tune on the same target variables",
    )
    try:
        missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UserError(
            f"init_from={path} does not fit this model ({lines[1] if len(lines) > 1 else lines[0]}); "
            "fine-tune with the same model/net config"
        ) from exc
    require(
        not unexpected and not [k for k in missing if not k.startswith("ema.")],
        f"init_from={path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
        "fine-tune with the same model/net/data channels",
    )


def _model_class_attribute(model_cfg: DictConfig, name: str) -> Any:
    """A class attribute of the model ``_target_`` (None when the target does not import: the
    model's instantiation then reports it)."""
    try:
        return getattr(get_class(str(model_cfg.get("_target_"))), name, None)
    except Exception:  # noqa: BLE001 - any import failure is reported by instantiate_user
        return None


def resolve_sigma_data(cfg: DictConfig, datamodule: Any) -> None:
    """``model.precond.sigma_data=auto``: set it to the std of the scaled training targets, in the
    config itself, so that checkpoints and the loss weighting see the number.

    A model that denoises something else (the residual model: target - regression mean) measures
    its own once it can (``measures_own_sigma_data``); the targets' std is its provisional value.
    """
    precond = cfg.model.get("precond")
    if not isinstance(precond, DictConfig) or precond.get("sigma_data") != "auto":
        return
    precond.sigma_data = round(datamodule.scaled_target_std(), 4)
    loss = cfg.model.get("loss")
    if isinstance(loss, DictConfig) and loss.get("sigma_data") == "auto":  # a resolved config
        loss.sigma_data = precond.sigma_data
    if _model_class_attribute(cfg.model, "measures_own_sigma_data"):
        cfg.model.measure_sigma_data = True
        rank_zero_info(
            f"sigma_data=auto: measured by the model once it can (provisional {precond.sigma_data}, "
            "the std of the scaled training targets)"
        )
        return
    rank_zero_info(f"sigma_data=auto: {precond.sigma_data} (std of the scaled training targets)")


def _instantiate_entries(cfg: DictConfig, group: str) -> list[Any]:
    """Instantiate every entry of a dict-of-components group (``logger``, ``callbacks``)."""
    entries = cfg.get(group) or {}
    for name, node in entries.items():
        require(
            isinstance(node, DictConfig) and "_target_" in node,
            f"{group}.{name} has settings but no _target_: the chosen {group}= config has no "
            f"'{name}' entry (an experiment may set one); choose a {group}= config that has it, "
            f"or drop it with ~{group}.{name}",
        )
    return [instantiate(node) for node in entries.values()]


def build(cfg: DictConfig) -> tuple[Any, L.LightningModule, L.Trainer]:
    """Instantiate the DataModule, the model and the Trainer of a train config."""
    check_accelerator(cfg.trainer.accelerator, cfg.trainer.precision)
    check_trainer_types(cfg.trainer)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    datamodule.train_dataloader()  # a patch larger than the domain fails here, before any output
    resolve_sigma_data(cfg, datamodule)
    channels = {"out_channels": datamodule.out_channels, "cond_channels": datamodule.cond_channels}
    model = instantiate_user(cfg.model, net=instantiate(cfg.net), **channels)
    model.run_info = {
        "config": {k: to_plain(cfg[k]) for k in CONFIG_KEYS_SAVED if k in cfg},
        "channels": channels,
        "scalers": datamodule.scaler_states(),
        "grid": datamodule.grid(),
    }
    if cfg.get("init_from"):
        _init_from(model, cfg.init_from, channels, list(datamodule.targets))
    loggers = _instantiate_entries(cfg, "logger")
    callbacks = _instantiate_entries(cfg, "callbacks")
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer_kwargs: dict[str, Any] = {}
    if not model.automatic_optimization:
        # Lightning refuses automatic clipping with manual optimization: the model clips itself
        model.gradient_clip_val = cfg.trainer.get("gradient_clip_val")
        trainer_kwargs["gradient_clip_val"] = None
    strategy = cfg.trainer.get("strategy")
    if (
        getattr(model, "ddp_find_unused_parameters", False)
        and isinstance(strategy, DictConfig)
        and str(strategy.get("_target_", "")).endswith("DDPStrategy")
    ):
        # GAN steps (D or G alone) and the residual model's stages leave parameters without gradients
        trainer_kwargs["strategy"] = instantiate(strategy, find_unused_parameters=True)
    trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, **trainer_kwargs
    )
    return datamodule, model, trainer


@report_user_errors
def run(cfg: DictConfig) -> dict[str, Any]:
    """Train; returns the run dir, checkpoint paths and the final logged metrics."""
    # before anything is written: a bad resume= or a used run dir changes nothing
    ckpt_path = _resume_checkpoint(cfg)
    _refuse_used_run_dir(cfg)
    run_dir = Path(cfg.run_dir)
    datamodule, model, trainer = build(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams(model.run_info["config"])
        try:
            with warnings.catch_warnings():
                # a fresh run (no checkpoint in its dir, checked above): Lightning's look for a
                # "last" checkpoint to resume finds none, and says so twice; resuming is resume=
                warnings.filterwarnings("ignore", message=r".*ckpt_path=None.* was called without")
                warnings.filterwarnings("ignore", message=r'.*ckpt_path="last"\) is set, but there')
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:
            # Lightning stopped after the current batch and OnExceptionCheckpoint saved the state
            print(f"stopped by SIGTERM; continue with resume={run_dir}", file=sys.stderr)
            sys.exit(143)
        summary = model.run_summary()
        if trainer.is_global_zero:
            write_summary(run_dir, summary, trainer)
    finally:
        _finish_wandb()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v)}
    last = run_dir / "checkpoints" / "last.ckpt"
    if trainer.is_global_zero:
        print(f"checkpoint: {last}")
    return {
        "run_dir": run_dir,
        "last_ckpt": last,
        "best_ckpt": run_dir / "checkpoints" / "best.ckpt",
        "metrics": metrics,
        "summary": summary,
    }


def write_summary(run_dir: Path, summary: dict[str, Any], trainer: L.Trainer) -> None:
    """Model size and throughput: ``<run_dir>/summary.json`` and the W&B run summary."""
    summary = {
        **summary,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "device": device_label(trainer.strategy.root_device),
        "devices": trainer.world_size,
        "precision": str(trainer.precision),
    }
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if isinstance(logger, WandbLogger) and experiment is not None:
            experiment.summary.update({f"run/{k}": v for k, v in summary.items()})


def _finish_wandb() -> None:
    """Close the W&B run even on failure so that multirun jobs never share a run."""
    wandb = sys.modules.get("wandb")  # never imported: no W&B logger, no run to close
    if wandb is not None and wandb.run is not None:
        wandb.finish()


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    run_cli("train", main)
