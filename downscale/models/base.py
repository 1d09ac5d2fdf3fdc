"""Shared LightningModule machinery: optimizers and schedulers from ``_partial_`` configs, EMA,
checkpoint extras (config, scalers, grid), NaN guards and throughput bookkeeping."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from downscale import __version__
from downscale.models.ema import EMA
from downscale.utils.errors import UserError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class DownscaleModule(L.LightningModule):
    """Base class: subclasses build their networks, define ``training_step`` and ``generate``.

    Args:
        optimizer: factory ``(params) -> Optimizer`` (a ``_partial_`` config).
        scheduler: optional factory ``(optimizer) -> LR scheduler``; ``scheduler_interval`` is
            ``step`` or ``epoch`` and ``scheduler_monitor`` names the metric for plateau schedulers.
        ema: optional factory ``(module) -> EMA``; the EMA weights are used for validation and sampling.
    """

    def __init__(
        self,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        scheduler_monitor: str = "val/loss",
        ema: Callable[[nn.Module], EMA] | None = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.ema_factory = ema
        self.run_info: dict[str, Any] = {}
        self._step_started = 0.0

    # --- EMA -----------------------------------------------------------------------------------
    def averaged_module(self) -> nn.Module:
        """The module whose weights the EMA tracks (subclasses override)."""
        raise NotImplementedError

    def setup_ema(self) -> None:
        self.ema = self.ema_factory(self.averaged_module()) if self.ema_factory else None

    def inference_module(self) -> nn.Module:
        """EMA weights when available, else the live ones."""
        return self.ema.module if getattr(self, "ema", None) is not None else self.averaged_module()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if getattr(self, "ema", None) is not None:
            self.ema.update_parameters(self.averaged_module())

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [
            p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("ema.")
        ]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {
            "scheduler": self.scheduler_factory(optimizer),
            "interval": self.scheduler_interval,
            "monitor": self.scheduler_monitor,
        }
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop with the step and a hint when the loss is not finite (never train on NaNs)."""
        if not torch.isfinite(loss).all():
            raise UserError(
                f"loss became {loss.detach().float().mean().item()} at step {self.global_step}; "
                "lower the learning rate (model.optimizer.lr), enable gradient clipping "
                "(trainer.gradient_clip_val) or check the data for NaNs"
            )

    # --- bookkeeping ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def log_throughput(self, batch_size: int) -> None:
        elapsed = time.perf_counter() - self._step_started
        if elapsed > 0:
            self.log("perf/samples_per_s", batch_size / elapsed, on_step=True, on_epoch=False)

    def n_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("ema."))

    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams({"model/n_parameters": self.n_parameters()})

    # --- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["downscale"] = {**self.run_info, "version": __version__}
        checkpoint["rng"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_info = dict(checkpoint.get("downscale", {}))
        rng = checkpoint.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])

    # --- sampling contract ---------------------------------------------------------------------
    def generate(
        self,
        cond: torch.Tensor,
        n_members: int,
        *,
        sampler: Callable | None = None,
        generators: list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """(B, n_members, C_out, H, W) draws in scaled space (see docs/architecture.md)."""
        raise NotImplementedError


def noise_bucket_edges(
    sigma_min: float = 0.002, sigma_max: float = 80.0, n: int = 5
) -> list[float]:
    """Log-spaced edges used to report the loss per noise-level bucket."""
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return [math.exp(lo + (hi - lo) * i / n) for i in range(n + 1)]
