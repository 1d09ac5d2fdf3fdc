"""Shared LightningModule machinery: optimizers and schedulers from ``_partial_`` configs, EMA,
checkpoint extras (config, scalers, grid, RNG states), NaN guards, torch.compile and throughput
bookkeeping."""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from downscale import __version__
from downscale.models.ema import EMA
from downscale.utils.errors import UserError, require

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def build_net(
    factory: Callable[..., nn.Module], overrides: Mapping[str, Any] | None = None, **channels: int
) -> nn.Module:
    """Call a net factory (``conf/net``, ``_partial_``) with the data's channel counts and the
    model's ``net_overrides`` (e.g. VP sets ``embedding_type: positional``)."""
    return factory(**channels, **dict(overrides or {}))


def make_scheduler(
    factory: SchedulerFactory, optimizer: torch.optim.Optimizer, total_steps: int | None
) -> Any:
    """Call a scheduler factory; ``total_steps`` (the run's optimizer steps) is passed to factories
    that take it (cosine, one-cycle), torch's own classes get only the optimizer."""
    target = getattr(factory, "func", factory)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    given = getattr(factory, "keywords", {}) or {}
    if "total_steps" in params and "total_steps" not in given:
        if total_steps is None or total_steps <= 0 or total_steps == float("inf"):
            raise UserError(
                "this LR schedule needs the number of training steps; set trainer.max_epochs or "
                "trainer.max_steps, or give scheduler.factory.total_steps"
            )
        return factory(optimizer, total_steps=int(total_steps))
    return factory(optimizer)


def rng_state() -> dict[str, Any]:
    """Torch, CUDA, NumPy and Python RNG states as tensors and plain lists (``weights_only``-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [int(py_state[0]), list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state` (missing entries are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class DownscaleModule(L.LightningModule):
    """Base class: subclasses build their networks, define ``training_step`` and ``generate``.

    Args:
        optimizer: factory ``(params) -> Optimizer`` (a ``_partial_`` config).
        scheduler: optional factory ``(optimizer[, total_steps]) -> LR scheduler``, or a mapping
            ``{factory, interval, monitor, horizon_epochs}`` (the ``scheduler`` config group);
            ``interval`` / ``scheduler_interval`` is ``step`` or ``epoch``, ``monitor`` /
            ``scheduler_monitor`` names the metric for plateau schedulers, and
            ``horizon_epochs`` / ``scheduler_horizon_epochs`` the epochs a ``total_steps``
            schedule spans (None: the run's; more: the run stops part way along it).
        ema: optional factory ``(module) -> EMA``; the EMA weights are used for validation and sampling.
        compile: compile the network(s) with ``torch.compile`` (in place: checkpoints keep their keys).
        compile_kwargs: keyword arguments of ``torch.compile`` (e.g. ``backend``, ``mode``).
    """

    #: draws differ from member to member (False: one deterministic member, see downscale.sample)
    stochastic = True
    #: ``generate`` needs a sampler and a schedule (False: a single forward pass)
    needs_sampler = True
    #: some training steps leave parameters without gradients (DDP must look for them)
    ddp_find_unused_parameters = False

    def __init__(
        self,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | Mapping[str, Any] | None = None,
        scheduler_interval: str = "step",
        scheduler_monitor: str = "val/loss",
        scheduler_horizon_epochs: int | None = None,
        ema: Callable[[nn.Module], EMA] | None = None,
        compile: bool = False,
        compile_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(scheduler, Mapping):
            scheduler_interval = scheduler.get("interval") or scheduler_interval
            scheduler_monitor = scheduler.get("monitor") or scheduler_monitor
            scheduler_horizon_epochs = scheduler.get("horizon_epochs", scheduler_horizon_epochs)
            scheduler = scheduler.get("factory")
        if scheduler_interval not in ("step", "epoch"):
            raise UserError(
                f"scheduler_interval={scheduler_interval} is not step or epoch; use one of them"
            )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.scheduler_horizon_epochs = scheduler_horizon_epochs
        self.ema_factory = ema
        self.compile_net = bool(compile)
        self.compile_kwargs = dict(compile_kwargs or {})
        self.run_info: dict[str, Any] = {}
        self._step_started = 0.0
        self._fit_started = 0.0
        self._train_steps = 0
        self._train_samples = 0
        self._train_seconds = 0.0

    # --- EMA -----------------------------------------------------------------------------------
    def averaged_module(self) -> nn.Module:
        """The module whose weights the EMA tracks (subclasses override)."""
        raise NotImplementedError

    def setup_ema(self) -> None:
        self.ema = self.ema_factory(self.averaged_module()) if self.ema_factory else None

    def inference_module(self) -> nn.Module:
        """EMA weights when available, else the live ones."""
        return self.ema.module if getattr(self, "ema", None) is not None else self.averaged_module()

    def update_ema(self) -> None:
        if getattr(self, "ema", None) is not None:
            self.ema.update_parameters(self.averaged_module())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_ema()
        self._train_steps += 1
        self._train_seconds += time.perf_counter() - self._step_started

    # --- torch.compile -------------------------------------------------------------------------
    def compiled_modules(self) -> list[nn.Module]:
        """The networks ``compile=true`` compiles (subclasses override)."""
        return []

    def maybe_compile(self) -> None:
        """Compile the networks in place (``nn.Module.compile``) so state-dict keys are unchanged."""
        if self.compile_net:
            for module in self.compiled_modules():
                module.compile(**self.compile_kwargs)

    # --- optimisation --------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [
            p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("ema.")
        ]

    def total_steps(self) -> int | None:
        """Optimizer steps a cosine / one-cycle schedule spans: the whole run's, or
        ``scheduler_horizon_epochs`` epochs' worth of them."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return None
        steps = trainer.estimated_stepping_batches
        horizon = self.scheduler_horizon_epochs
        if horizon is None:
            return steps
        max_epochs = trainer.max_epochs
        require(
            trainer.max_steps == -1 and max_epochs is not None and max_epochs > 0,
            "scheduler.horizon_epochs counts epochs; set trainer.max_epochs (not trainer.max_steps)",
        )
        require(
            horizon >= max_epochs,
            f"scheduler.horizon_epochs={horizon} ends before trainer.max_epochs={max_epochs}; "
            "give a horizon of at least max_epochs (or null for the run's length)",
        )
        # Lightning's estimate is ceil(batches / accumulation) x max_epochs: whole epochs of steps
        return steps // max_epochs * horizon

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {
            "scheduler": make_scheduler(self.scheduler_factory, optimizer, self.total_steps()),
            "interval": self.scheduler_interval,
            "monitor": self.scheduler_monitor,
        }
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop with the step and a hint when the loss is not finite (never train on NaNs)."""
        if not torch.isfinite(loss).all():
            raise UserError(
                f"loss became {loss.detach().float().mean().item()} at step {self.global_step}; "
                "lower the learning rate (optimizer.lr), enable gradient clipping "
                "(trainer.gradient_clip_val) or check the data for NaNs"
            )

    # --- bookkeeping ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def log_throughput(self, batch_size: int) -> None:
        """Count samples; log samples/s on the steps the loggers write (``log_every_n_steps``):
        ``self.log`` costs about a millisecond, which a small net on a fast GPU would notice."""
        self._train_samples += batch_size
        trainer = self._trainer
        every = getattr(trainer, "log_every_n_steps", 1) if trainer is not None else 1
        elapsed = time.perf_counter() - self._step_started
        if elapsed > 0 and self._train_steps % max(1, every) == 0:
            self.log("perf/samples_per_s", batch_size / elapsed, on_step=True, on_epoch=False)

    def n_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("ema."))

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()
        for logger in self.loggers:
            logger.log_hyperparams({"model/n_parameters": self.n_parameters()})

    def run_summary(self) -> dict[str, float | int | str]:
        """Model size and training throughput of this process (for the run summary)."""
        seconds = self._train_seconds
        return {
            "model": type(self).__name__,
            "n_parameters": self.n_parameters(),
            "train_steps": self._train_steps,
            "train_seconds": seconds,
            "steps_per_s": self._train_steps / seconds if seconds > 0 else float("nan"),
            "samples_per_s": self._train_samples / seconds if seconds > 0 else float("nan"),
        }

    # --- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = [
            k
            for k, v in checkpoint.get("state_dict", {}).items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:  # a diverged step: never write weights that cannot be used
            raise UserError(
                f"weights became non-finite ({bad[0]}) at step {self.global_step}; lower the learning "
                "rate (optimizer.lr), enable gradient clipping (trainer.gradient_clip_val) or check "
                "the data for NaNs"
            )
        checkpoint["downscale"] = {**self.run_info, "version": __version__}
        checkpoint["rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_info = dict(checkpoint.get("downscale", {}))
        rng = checkpoint.get("rng")
        if rng is not None:
            set_rng_state(rng)

    # --- sampling contract ---------------------------------------------------------------------
    def generate(
        self,
        cond: torch.Tensor,
        n_members: int,
        *,
        sampler: Callable | None = None,
        generators: list[torch.Generator] | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, n_members, C_out, H, W) draws in scaled space (see docs/architecture.md); ``anchor``
        (B, 2) is the (row, col) of each input's top-left corner in the whole domain (the batch's
        ``anchor``), which nets with a learned location map need for patches and tiles."""
        raise NotImplementedError


def repeat_members(anchor: torch.Tensor | None, n_members: int) -> torch.Tensor | None:
    """Anchors (B, 2) repeated per member like ``cond`` in ``generate`` (None stays None)."""
    return None if anchor is None else anchor.repeat_interleave(n_members, dim=0)


def noise_bucket_edges(
    sigma_min: float = 0.002, sigma_max: float = 80.0, n: int = 5
) -> list[float]:
    """Log-spaced edges used to report the loss per noise-level bucket."""
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return [math.exp(lo + (hi - lo) * i / n) for i in range(n + 1)]
