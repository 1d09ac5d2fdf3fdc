"""Residual diffusion (CorrDiff, Mardani et al. 2024): ``y = mu(cond) + r``, where the regression
UNet ``mu`` predicts the conditional mean and an EDM diffusion model learns the residual
``r = y - mu(cond)``, conditioned on the predictors and (by default) on ``mu``.

The denoiser the samplers see produces the residual; :meth:`ResidualModel.generate` adds the mean.
The regression comes from a regression checkpoint (``regression_ckpt``) or is trained first, for
``regression_epochs`` epochs, by the same run (two stages, one command).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_info
from torch import nn

from downscale.models.base import DownscaleModule, build_net, noise_bucket_edges, repeat_members
from downscale.models.crossfit import FoldedRegression
from downscale.models.diffusion import log_sigma_buckets
from downscale.models.losses import PixelLoss
from downscale.models.mean_cache import MeanCache
from downscale.models.regression import FieldPredictor, RegressionNet, one_member, regression_net
from downscale.utils.checkpoint import load_checkpoint, load_model
from downscale.utils.errors import UserError, require


def regression_state(path: str | Path, out_channels: int, cond_channels: int) -> dict:
    """EMA weights of the ``RegressionNet`` in a regression checkpoint, after checking that it is
    one and that its channels fit the data."""
    path = Path(path)
    require(
        path.is_file(),
        f"model.regression_ckpt={path} does not exist; train one with model=regression (or drop "
        "regression_ckpt to train both stages in one run with model.regression_epochs=N)",
    )
    checkpoint = load_checkpoint(path)
    info = checkpoint["downscale"]
    target = str(info["config"].get("model", {}).get("_target_", ""))
    require(
        target.endswith(".RegressionModel"),
        f"model.regression_ckpt={path} is a {target.rsplit('.', 1)[-1] or 'unknown'} checkpoint, "
        "not a regression one; pass a checkpoint trained with model=regression",
    )
    channels = info.get("channels", {})
    want = {"out_channels": out_channels, "cond_channels": cond_channels}
    require(
        channels == want,
        f"model.regression_ckpt={path} has channels {channels} but the data gives {want}; "
        "train the regression on the same variables",
    )
    return load_model(checkpoint, path).inference_module().state_dict()


@torch.no_grad()
def residual_std(
    regression: FieldPredictor,
    batches: Iterable[dict],
    device: torch.device,
    max_batches: int = 100,
) -> float:
    """Standard deviation of ``target - regression(cond)`` (out of fold when cross-fitted) over
    valid cells, pooled over the target variables, from at most ``max_batches`` batches: the
    ``sigma_data`` of the residual denoiser (the residual's counterpart of
    ``DownscaleDataModule.scaled_target_std``)."""
    total = torch.zeros(3, dtype=torch.float64, device=device)  # count, sum, sum of squares
    was_training = regression.training
    regression.eval()
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        target, cond = batch["target"].to(device), batch["cond"].to(device)
        anchor, time = (batch.get(k) for k in ("anchor", "time"))
        anchor = None if anchor is None else anchor.to(device)
        time = None if time is None else time.to(device)
        mask = batch["mask"].to(device).expand_as(target) > 0
        residual = (target - regression.training_mean(cond, anchor, time)).double()
        valid = mask & torch.isfinite(residual)
        values = residual[valid]
        total += torch.stack(
            [values.new_tensor(values.numel()), values.sum(), values.square().sum()]
        )
    regression.train(was_training)
    count, s1, s2 = total.tolist()
    require(count > 1, "cannot measure sigma_data=auto: the training data has no valid cells")
    return max(s2 / count - (s1 / count) ** 2, 0.0) ** 0.5


class ResidualModel(DownscaleModule):
    """CorrDiff-style residual diffusion.

    Args:
        net: net factory (``conf/net``) for both the regression and the residual denoiser.
        precond: preconditioner factory of the residual denoiser (EDM).
        loss: ``DiffusionLoss`` applied to the residual target ``y - mu``.
        regression_ckpt: a ``model=regression`` checkpoint whose EMA weights give ``mu`` (frozen).
        regression_epochs: without ``regression_ckpt``, epochs of the first (regression) stage.
        regression_loss: ``mse`` or ``mae`` for the regression stage.
        mean_conditioning: give ``mu`` to the denoiser as extra conditioning channels (CorrDiff's
            ``hr_mean_conditioning``).
        regression_trained: the regression weights come with the state dict (set in checkpoints so
            that sampling never needs the original regression checkpoint).
        measure_sigma_data: replace the precond's (provisional) ``sigma_data`` by the std of the
            residual ``y - mu`` over the training data once the regression is trained (set by
            ``downscale.train`` for ``model.precond.sigma_data=auto``).
        regression_keep_best: the residual stage starts from the regression's (EMA) weights of the
            regression-stage validation with the lowest ``val/regression_loss``, not from its last
            epoch. An overfitted regression leaves training residuals smaller than held-out ones,
            and the residual EDM learns that too-narrow distribution (docs/models.md).
        cross_fit: K >= 2 trains K regressions, each on all training days but one fold, and the
            denoiser on out-of-fold residuals (:mod:`downscale.models.crossfit`); 0: one regression.
        cross_fit_block: consecutive time steps per fold block (30: about a month of days).
        mean_cache_gb: in the residual stage, keep each training sample's regression mean (at
            most this many GB, on the training device) when the training items are fixed windows
            (:mod:`downscale.models.mean_cache`); 0: compute it every step.
    """

    #: ``sigma_data=auto`` means the residual's std, which only this model can measure
    measures_own_sigma_data = True

    def __init__(
        self,
        net: Callable[..., nn.Module],
        precond: Callable[[nn.Module], nn.Module],
        loss: Callable[..., dict],
        out_channels: int,
        cond_channels: int,
        regression_ckpt: str | None = None,
        regression_epochs: int = 10,
        regression_loss: str = "mse",
        mean_conditioning: bool = True,
        regression_trained: bool = False,
        measure_sigma_data: bool = False,
        regression_keep_best: bool = True,
        cross_fit: int = 0,
        cross_fit_block: int = 30,
        mean_cache_gb: float = 1.0,
        variable_weights: Sequence[float] | None = None,
        val_seed: int = 1234,
        net_overrides: Mapping[str, Any] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.out_channels, self.cond_channels = out_channels, cond_channels
        self.mean_conditioning = bool(mean_conditioning)
        extra = out_channels if mean_conditioning else 0
        require(
            cross_fit == 0 or cross_fit >= 2,
            f"model.cross_fit={cross_fit}: use 0 (one regression) or a number of folds >= 2",
        )
        require(
            not (cross_fit and regression_ckpt),
            "model.cross_fit trains its own fold regressions; drop model.regression_ckpt or set "
            "model.cross_fit=0",
        )
        regressions = [
            regression_net(net, net_overrides, out_channels, cond_channels)
            for _ in range(max(cross_fit, 1))
        ]
        regression = FoldedRegression(regressions, cross_fit_block) if cross_fit else regressions[0]
        denoiser = precond(
            build_net(
                net,
                net_overrides,
                out_channels=out_channels,
                cond_channels=cond_channels + extra,
                noisy_channels=out_channels,
            )
        )
        self.body = nn.ModuleDict({"regression": regression, "denoiser": denoiser})
        self.loss_fn = loss
        self.pixel_loss = PixelLoss(regression_loss, variable_weights)
        self.val_seed = val_seed
        self.bucket_edges = noise_bucket_edges()
        self.regression_ckpt = regression_ckpt
        self.measure_sigma_data = bool(measure_sigma_data)
        self.measured_sigma_data: float | None = None
        self.regression_epochs = 0 if (regression_ckpt or regression_trained) else regression_epochs
        self.regression_keep_best = bool(regression_keep_best)
        # the best regression-stage validation so far: {"epoch", "loss", "state"} (state dropped
        # once the residual stage has started from it)
        self.best_regression: dict[str, Any] | None = None
        self._val_regression: list[tuple[torch.Tensor, int]] = []
        require(mean_cache_gb >= 0, f"model.mean_cache_gb={mean_cache_gb} must be >= 0 (0: off)")
        self.mean_cache_bytes = int(mean_cache_gb * 1e9)
        self.mean_cache: MeanCache | None = None
        # two stages: the denoiser gets no gradient in the first, the regression none in the second
        self.ddp_find_unused_parameters = self.regression_epochs > 0
        if regression_ckpt:
            state = regression_state(regression_ckpt, out_channels, cond_channels)
            try:
                regression.load_state_dict(state)
            except RuntimeError as exc:
                raise UserError(
                    f"model.regression_ckpt={regression_ckpt} does not fit this net config "
                    f"({str(exc).splitlines()[0]}); use the net the regression was trained with"
                ) from exc
            regression.requires_grad_(False)
        elif not regression_trained:
            require(
                regression_epochs >= 1,
                "the residual model needs a regression: pass model.regression_ckpt=<regression "
                "checkpoint> or model.regression_epochs=N (>= 1) to train it first in this run",
            )
        self.setup_ema()
        self.maybe_compile()

    # --- modules -------------------------------------------------------------------------------
    def averaged_module(self) -> nn.Module:
        return self.body

    def compiled_modules(self) -> list[nn.Module]:
        nets = [m.net for m in self.body["regression"].modules() if isinstance(m, RegressionNet)]
        return [*nets, self.body["denoiser"].net]

    @property
    def denoiser(self) -> nn.Module:
        return self.body["denoiser"]

    @property
    def regression(self) -> nn.Module:
        return self.body["regression"]

    def in_regression_stage(self) -> bool:
        return self.current_epoch < self.regression_epochs

    def denoiser_cond(self, cond: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        return torch.cat([cond, mean.to(cond.dtype)], dim=1) if self.mean_conditioning else cond

    # --- stages --------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        max_epochs = self.trainer.max_epochs
        require(
            self.regression_epochs == 0
            or max_epochs is None
            or max_epochs > self.regression_epochs,
            f"trainer.max_epochs={max_epochs} leaves no residual stage after "
            f"model.regression_epochs={self.regression_epochs}; raise max_epochs",
        )
        datamodule = getattr(self.trainer, "datamodule", None)
        train = getattr(datamodule, "split_indices", {}).get("train")
        if isinstance(self.regression, FoldedRegression) and train is not None:
            self.regression.check_folds(torch.as_tensor(train))
        self.mean_cache = None

    def on_train_epoch_start(self) -> None:
        """Entering the residual stage: the regression takes its chosen weights (the best
        validation's, else the last EMA weights) and is frozen, and a pending ``sigma_data`` is
        measured on the residual."""
        if not self.in_regression_stage():
            if self.regression_epochs and self.current_epoch == self.regression_epochs:
                self._start_from_chosen_regression()
            # frozen, and in eval mode: with dropout in the net (net=small and larger) a training-
            # mode regression would give the denoiser residuals around a randomly perturbed mean,
            # not around the mean that sigma_data=auto measures and sampling adds residuals to
            self.regression.requires_grad_(False).eval()
            if self.mean_cache is None and self._fixed_training_items():
                self.mean_cache = MeanCache(self.mean_cache_bytes)
        if (
            self.measure_sigma_data
            and self.measured_sigma_data is None
            and not self.in_regression_stage()
        ):
            value = residual_std(self.regression, self.trainer.datamodule.train_dataloader(),
                                 self.device)  # fmt: skip
            # every rank uses rank 0's value (random patches differ between ranks)
            self.set_sigma_data(float(self.trainer.strategy.broadcast(value, src=0)))
            rank_zero_info(
                f"sigma_data=auto: {self.measured_sigma_data} (std of target - regression mean "
                "over the training data)"
            )

    def _fixed_training_items(self) -> bool:
        """Whether a training sample's (time, anchor) always names the same predictors (whole
        domain or a fixed region, not random patches) and a mean cache is allowed."""
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        return self.mean_cache_bytes > 0 and bool(getattr(dataset, "fixed_items", False))

    def _start_from_chosen_regression(self) -> None:
        ema = getattr(self, "ema", None)
        best = self.best_regression
        if best is not None and "state" in best:
            state = best["state"]
            rank_zero_info(
                f"residual stage: the regression of epoch {best['epoch']} (best "
                f"val/regression_loss {best['loss']:.4g}) is kept"
            )
        elif ema is not None:
            state = ema.module["regression"].state_dict()
        else:
            return
        self.regression.load_state_dict(state)
        if ema is not None:  # the EMA copy is what validates and samples
            ema.module["regression"].load_state_dict(state)
        if best is not None:
            self.best_regression = {k: v for k, v in best.items() if k != "state"}

    def on_validation_epoch_start(self) -> None:
        self._val_regression = []

    def on_validation_epoch_end(self) -> None:
        """In the regression stage: remember the weights of the best validation so far."""
        if (
            not self.regression_keep_best
            or not self.in_regression_stage()
            or not self._val_regression
            or self.trainer.sanity_checking
        ):
            return
        total = torch.stack([loss * n for loss, n in self._val_regression]).sum()
        count = torch.tensor(float(sum(n for _, n in self._val_regression)), device=total.device)
        reduce = self.trainer.strategy.reduce
        loss = float(reduce(total, reduce_op="sum") / reduce(count, reduce_op="sum"))
        if self.best_regression is None or loss < self.best_regression["loss"]:
            state = self.inference_module()["regression"].state_dict()
            self.best_regression = {
                "epoch": int(self.current_epoch),
                "loss": loss,
                "state": {k: v.detach().cpu().clone() for k, v in state.items()},
            }

    def set_sigma_data(self, value: float) -> None:
        """Use ``value`` as the residual's ``sigma_data`` in the preconditioning (live and EMA
        denoisers) and the loss weighting; checkpoints then record it in their config."""
        value = round(float(value), 4)
        require(
            value > 0,
            "cannot set sigma_data=auto: target - regression mean has no spread over the training "
            "data; set model.precond.sigma_data to a number",
        )
        denoisers = [self.denoiser]
        if getattr(self, "ema", None) is not None:
            denoisers.append(self.ema.module["denoiser"])
        for denoiser in denoisers:
            denoiser.sigma_data = value
        self.loss_fn.sigma_data = value
        self.measured_sigma_data = value

    # --- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        target, cond, mask = batch["target"], batch["cond"], batch["mask"]
        anchor = batch.get("anchor")
        n = target.shape[0]
        if self.in_regression_stage():
            loss = self.regression.training_loss(
                self.pixel_loss, cond, target, mask, batch.get("time"), anchor
            )
            self.check_finite(loss)
            self.log("train/regression_loss", loss, prog_bar=True, batch_size=n)
        else:
            with torch.no_grad():
                mean = self._training_mean(cond, anchor, batch.get("time"))
            out = self.loss_fn(
                self.denoiser, target - mean, self.denoiser_cond(cond, mean), mask, anchor=anchor
            )
            loss = out["loss"]
            self.check_finite(loss)
            self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_throughput(n)
        return loss

    def _training_mean(
        self, cond: torch.Tensor, anchor: torch.Tensor | None, time: torch.Tensor | None
    ) -> torch.Tensor:
        """The frozen regression's mean of a residual-stage batch, from the cache where it has
        one."""

        def compute(rows: torch.Tensor | None) -> torch.Tensor:
            if rows is None:
                return self.regression.training_mean(cond, anchor, time)
            pick = [None if x is None else x[rows] for x in (anchor, time)]
            return self.regression.training_mean(cond[rows], *pick)

        if self.mean_cache is None or anchor is None or time is None:
            return compute(None)
        return self.mean_cache.mean(compute, time, anchor)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        target, cond, mask = batch["target"], batch["cond"], batch["mask"]
        anchor = batch.get("anchor")
        n = target.shape[0]
        body = self.inference_module()
        mean = body["regression"](cond, anchor=anchor)
        reg_loss = self.pixel_loss(mean, target, mask)
        self.log("val/regression_loss", reg_loss, batch_size=n, sync_dist=True)
        if self.in_regression_stage():
            self._val_regression.append((reg_loss.detach().float(), n))
            # val/loss ranks checkpoints; a regression-stage model must never be the best one
            self.log("val/loss", float("inf"), prog_bar=True, batch_size=n, sync_dist=True)
            return
        generator = torch.Generator(device=target.device).manual_seed(self.val_seed + batch_idx)
        out = self.loss_fn(
            body["denoiser"],
            target - mean,
            self.denoiser_cond(cond, mean),
            mask,
            generator=generator,
            anchor=anchor,
        )
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=n, sync_dist=True)
        log_sigma_buckets(self, out, self.bucket_edges)

    def run_summary(self) -> dict[str, float | int | str]:
        """The base summary and the residual denoiser's ``sigma_data`` (measured or set)."""
        summary = {**super().run_summary(), "sigma_data": self.denoiser.sigma_data}
        if self.best_regression is not None:
            summary["regression_best_epoch"] = self.best_regression["epoch"]
            summary["regression_best_val_loss"] = self.best_regression["loss"]
        if self.mean_cache is not None:
            summary["mean_cache_samples"] = len(self.mean_cache)
            summary["mean_cache_hits"] = self.mean_cache.hits
        return summary

    # --- checkpoints and sampling --------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        config = checkpoint["downscale"].get("config")
        if config and "model" in config:
            # the weights travel in the state dict: sampling must not need the regression file
            config = copy.deepcopy(config)
            config["model"]["regression_ckpt"] = None
            config["model"]["regression_trained"] = True
            if self.measured_sigma_data is not None:
                config["model"]["measure_sigma_data"] = False
                for part in ("precond", "loss"):
                    if isinstance(config["model"].get(part), dict):
                        config["model"][part]["sigma_data"] = self.measured_sigma_data
            checkpoint["downscale"]["config"] = config
        # a checkpoint of the first stage has an untrained denoiser (downscale.select skips it)
        checkpoint["downscale"]["regression_stage"] = self.in_regression_stage()
        if self.measured_sigma_data is not None:
            checkpoint["downscale"]["residual_sigma_data"] = self.measured_sigma_data
        if self.best_regression is not None:
            checkpoint["downscale"]["best_regression"] = self.best_regression

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run keeps the ``sigma_data`` it measured (not re-measured mid-training) and
        the best regression-stage validation it has seen."""
        super().on_load_checkpoint(checkpoint)
        self.mean_cache = None
        value = checkpoint.get("downscale", {}).get("residual_sigma_data")
        if value is not None and self.measure_sigma_data:
            self.set_sigma_data(value)
        self.best_regression = checkpoint.get("downscale", {}).get("best_regression")

    def conditional_mean(self) -> ConditionalMean:
        """Its regression stage as a one-shot model (``downscale.sample residual_mean=true``)."""
        return ConditionalMean(self.inference_module()["regression"], self.out_channels)

    @torch.no_grad()
    def generate(
        self,
        cond: torch.Tensor,
        n_members: int,
        *,
        sampler: Callable | None = None,
        generators: list[torch.Generator] | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        require(sampler is not None, "the residual model needs a sampler to generate (sampler=...)")
        b, _, h, w = cond.shape
        body = self.inference_module()
        # the mean through the sampler's wrapper too (tiling=...): a large domain stays in tiles
        mean = (
            body["regression"]
            .predict(cond, self.out_channels, getattr(sampler, "wrap", None), anchor)
            .repeat_interleave(n_members, dim=0)
        )
        cond_rep = cond.repeat_interleave(n_members, dim=0)
        residual = sampler(
            body["denoiser"],
            self.denoiser_cond(cond_rep, mean),
            out_channels=self.out_channels,
            generators=generators,
            anchor=repeat_members(anchor, n_members),
        )
        return (mean + residual).view(b, n_members, self.out_channels, h, w)


class ConditionalMean(nn.Module):
    """A residual model's regression ``mu(cond)`` (Mardani et al. 2024's first stage) drawn like a
    regression model: one deterministic member, tiled with the sampling config's ``tiling=``. It is
    exactly the mean :meth:`ResidualModel.generate` adds its residuals to, so a store of it scores
    the diffusion stage's contribution against the same regression."""

    #: the sampling driver draws one member and passes no stepped sampler
    stochastic = False
    needs_sampler = False

    def __init__(self, regression: FieldPredictor, out_channels: int) -> None:
        super().__init__()
        self.regression, self.out_channels = regression, out_channels

    @torch.no_grad()
    def generate(
        self,
        cond: torch.Tensor,
        n_members: int = 1,
        *,
        sampler: Callable | None = None,
        generators: list[torch.Generator] | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return one_member(
            self.regression, cond, self.out_channels, n_members, sampler, anchor, "conditional mean"
        )
