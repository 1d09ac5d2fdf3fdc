"""Cross-fitted regression means for the residual model (``model.cross_fit=K``).

A regression trained on the days it predicts leaves residuals narrower than on unseen days (it fits
part of their noise), and a residual denoiser trained on them learns too narrow an ensemble. Cross-
fitting (Chernozhukov et al. 2018, "Double/debiased machine learning", section 3) splits the training
days into K folds of consecutive time blocks; net k trains on every fold but k, and the residual of a
day in fold k is taken from net k, which never saw it. New days (validation, sampling) get the mean of
the K nets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from downscale.models.regression import FieldPredictor, RegressionNet
from downscale.utils.errors import require


def time_folds(time: torch.Tensor, n_folds: int, block: int) -> torch.Tensor:
    """The fold of each store time index: consecutive blocks of ``block`` steps, dealt to the folds
    in turn (blocks keep neighbouring, correlated days in one fold)."""
    return torch.div(time, block, rounding_mode="floor") % n_folds


class FoldedRegression(FieldPredictor):
    """K regression nets; ``forward`` without ``time`` is their mean (what ``predict`` gives new
    days), with ``time`` each sample's out-of-fold prediction."""

    def __init__(self, nets: Sequence[RegressionNet], block: int) -> None:
        super().__init__()
        require(len(nets) >= 2, f"cross-fitting needs at least 2 folds, got {len(nets)}")
        require(block >= 1, f"model.cross_fit_block must be >= 1 time steps, got {block}")
        self.folds = nn.ModuleList(nets)
        self.block = int(block)

    def fold_of(self, time: torch.Tensor) -> torch.Tensor:
        return time_folds(time, len(self.folds), self.block)

    def check_folds(self, train_times: torch.Tensor) -> None:
        """Every fold must hold training steps (else a net would predict its days untrained)."""
        counts = torch.bincount(self.fold_of(train_times), minlength=len(self.folds))
        require(
            bool((counts > 0).all()),
            f"model.cross_fit={len(self.folds)} with cross_fit_block={self.block} leaves a fold "
            f"without training steps ({counts.tolist()} of {len(train_times)}); lower "
            "model.cross_fit_block or model.cross_fit",
        )

    def forward(
        self,
        cond: torch.Tensor,
        anchor: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if time is None:
            return torch.stack([net(cond, anchor=anchor) for net in self.folds]).mean(0)
        fold = self.fold_of(time)
        out: torch.Tensor | None = None
        for k, net in enumerate(self.folds):
            rows = torch.nonzero(fold == k).squeeze(1)
            if rows.numel() == 0:
                continue
            pred = _on_rows(net, rows, cond, anchor)
            if out is None:
                out = pred.new_zeros(cond.shape[0], *pred.shape[1:])
            out[rows] = pred
        assert out is not None  # every sample is in some fold
        return out

    def training_mean(
        self,
        cond: torch.Tensor,
        anchor: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each training sample's out-of-fold mean."""
        require(time is not None, "a cross-fitted regression needs the batch's time indices")
        return self(cond, anchor=anchor, time=time)

    def training_loss(
        self,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        cond: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        time: torch.Tensor | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over the nets of each net's loss on the samples outside its fold."""
        require(time is not None, "a cross-fitted regression needs the batch's time indices")
        fold = self.fold_of(time)
        losses = []
        for k, net in enumerate(self.folds):
            rows = torch.nonzero(fold != k).squeeze(1)
            if rows.numel() == 0:  # a batch from fold k alone: nothing for net k to learn
                continue
            pred = _on_rows(net, rows, cond, anchor)
            losses.append(loss_fn(pred, target[rows], mask[rows]))
        return torch.stack(losses).mean()


def _on_rows(
    net: nn.Module, rows: torch.Tensor, cond: torch.Tensor, anchor: torch.Tensor | None
) -> torch.Tensor:
    """``net``'s prediction for the batch rows ``rows``."""
    return net(cond[rows], anchor=None if anchor is None else anchor[rows])
