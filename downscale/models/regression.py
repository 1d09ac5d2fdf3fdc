"""Deterministic regression: the UNet maps the predictors straight to the target (one member)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from downscale.models.base import DownscaleModule, build_net
from downscale.models.losses import PixelLoss
from downscale.sampling.tiling import tiled_one_shot
from downscale.utils.errors import require


class FieldPredictor(nn.Module):
    """A regression ``f(cond, anchor=...)`` of a field on its predictors: its prediction over large
    inputs, and the mean and loss of a training batch (which a cross-fitted regression,
    :class:`~downscale.models.crossfit.FoldedRegression`, takes out of fold)."""

    def training_mean(
        self,
        cond: torch.Tensor,
        anchor: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean a training sample's residual is taken from (``time``: its store time index)."""
        return self(cond, anchor=anchor)

    def training_loss(
        self,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        cond: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        time: torch.Tensor | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``loss_fn(prediction, target, mask)`` of a training batch."""
        return loss_fn(self(cond, anchor=anchor), target, mask)

    def predict(
        self,
        cond: torch.Tensor,
        out_channels: int,
        wrap: Callable | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, C, H, W) prediction, through a denoiser wrapper such as tiling when ``wrap`` is
        given (:func:`~downscale.sampling.tiling.tiled_one_shot`); ``anchor``: the inputs' patch
        anchors (B, 2)."""
        field = cond.new_zeros(cond.shape[0], out_channels, *cond.shape[-2:])
        return tiled_one_shot(lambda _field, c, a: self(c, anchor=a), field, cond, wrap, anchor)


def one_member(
    predictor: FieldPredictor,
    cond: torch.Tensor,
    out_channels: int,
    n_members: int,
    sampler: Callable | None,
    anchor: torch.Tensor | None,
    name: str = "regression model",
) -> torch.Tensor:
    """The single draw ``(B, 1, C, H, W)`` of a deterministic ``predictor``, through the sampling
    config's tiling (``sampler.wrap``); ``n_members`` other than 1 is a user error."""
    require(
        n_members == 1,
        f"the {name} is deterministic: n_members={n_members} must be 1; use n_members=1",
    )
    return predictor.predict(cond, out_channels, getattr(sampler, "wrap", None), anchor)[:, None]


class RegressionNet(FieldPredictor):
    """``y_hat = F(cond)``: a UNet with ``noisy_channels=0`` called with ``x=None`` and no noise label
    (its noise embedding is then a learned constant)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, cond: torch.Tensor, **net_kwargs: Any) -> torch.Tensor:
        return self.net(None, None, cond, **net_kwargs).to(torch.float32)


def regression_net(
    net: Callable[..., nn.Module],
    net_overrides: Mapping[str, Any] | None,
    out_channels: int,
    cond_channels: int,
) -> RegressionNet:
    """A ``RegressionNet`` around a net of the ``conf/net`` factory (no noisy channels)."""
    return RegressionNet(
        build_net(
            net,
            net_overrides,
            out_channels=out_channels,
            cond_channels=cond_channels,
            noisy_channels=0,
        )
    )


class RegressionModel(DownscaleModule):
    """The conditional mean (MSE) or median (MAE) of the target given the predictors.

    ``generate`` returns one deterministic member ``(B, 1, C, H, W)``: the model is not stochastic
    and needs no sampler (``downscale.sample`` reads the class attributes).

    Args:
        net: net factory (``conf/net``), called with ``noisy_channels=0``.
        loss: ``mse`` or ``mae``; ``variable_weights`` and ``trim`` as in the diffusion loss.
    """

    stochastic = False
    needs_sampler = False

    def __init__(
        self,
        net: Callable[..., nn.Module],
        out_channels: int,
        cond_channels: int,
        loss: str = "mse",
        variable_weights: Sequence[float] | None = None,
        trim: int = 0,
        net_overrides: Mapping[str, Any] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.out_channels, self.cond_channels = out_channels, cond_channels
        self.regressor = regression_net(net, net_overrides, out_channels, cond_channels)
        self.loss_fn = PixelLoss(loss, variable_weights, trim)
        self.setup_ema()
        self.maybe_compile()

    def averaged_module(self) -> nn.Module:
        return self.regressor

    def compiled_modules(self) -> list[nn.Module]:
        return [self.regressor.net]

    def forward(self, cond: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        return self.regressor(cond, anchor=anchor)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred = self.regressor(batch["cond"], anchor=batch.get("anchor"))
        loss = self.loss_fn(pred, batch["target"], batch["mask"])
        self.check_finite(loss)
        n = batch["target"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_throughput(n)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred = self.inference_module()(batch["cond"], anchor=batch.get("anchor"))
        loss = self.loss_fn(pred, batch["target"], batch["mask"])
        n = batch["target"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)

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
        predictor = self.inference_module()
        return one_member(predictor, cond, self.out_channels, n_members, sampler, anchor)
