"""Score-based diffusion model (EDM or VP preconditioning) as a LightningModule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from downscale.models.base import DownscaleModule, build_net, noise_bucket_edges, repeat_members
from downscale.utils.errors import require


def log_sigma_buckets(module: DownscaleModule, out: dict, edges: list[float]) -> None:
    """Log the validation loss per noise-level bucket (``val/loss_sigma_<lo>-<hi>``)."""
    per_sample, sigma = out["per_sample"].detach(), out["sigma"].detach().flatten()
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (sigma >= lo) & (sigma < hi)
        if inside.any():
            module.log(
                f"val/loss_sigma_{lo:.3g}-{hi:.3g}",
                per_sample[inside].mean(),
                batch_size=int(inside.sum()),
                sync_dist=True,
            )


class DiffusionModel(DownscaleModule):
    """A denoiser D(x; sigma, cond) = precond(net) trained with a denoising score-matching loss
    (Karras et al. 2022, Eq. 2 and Table 1) and sampled with any ODE/SDE sampler.

    Args:
        net: factory ``(out_channels, cond_channels, noisy_channels) -> nn.Module`` (``conf/net``).
        precond: factory ``(net) -> denoiser`` (``EDMPrecond``, ``VPPrecond``).
        loss: ``DiffusionLoss``: ``loss(denoiser, target, cond, mask, anchor=...) -> {loss,
            per_sample, sigma}`` (``anchor`` goes on to the net).
        out_channels, cond_channels: from the data (filled in by the train entry point).
        val_seed: fixed seed of validation noise so validation losses compare across epochs.
        net_overrides: net arguments this model needs whatever the ``net`` config says (VP:
            ``embedding_type: positional``, because its noise labels are times in [0, 999]).
    """

    def __init__(
        self,
        net: Callable[..., nn.Module],
        precond: Callable[[nn.Module], nn.Module],
        loss: Callable[..., dict],
        out_channels: int,
        cond_channels: int,
        val_seed: int = 1234,
        net_overrides: Mapping[str, Any] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.out_channels, self.cond_channels = out_channels, cond_channels
        self.denoiser = precond(
            build_net(
                net,
                net_overrides,
                out_channels=out_channels,
                cond_channels=cond_channels,
                noisy_channels=out_channels,
            )
        )
        self.loss_fn = loss
        self.val_seed = val_seed
        self.bucket_edges = noise_bucket_edges()
        self.setup_ema()
        self.maybe_compile()

    def averaged_module(self) -> nn.Module:
        return self.denoiser

    def compiled_modules(self) -> list[nn.Module]:
        return [self.denoiser.net]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.loss_fn(
            self.denoiser,
            batch["target"],
            batch["cond"],
            batch["mask"],
            anchor=batch.get("anchor"),
        )
        self.check_finite(out["loss"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=batch["target"].shape[0])
        self.log_throughput(batch["target"].shape[0])
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator(device=batch["target"].device).manual_seed(
            self.val_seed + batch_idx
        )
        out = self.loss_fn(
            self.inference_module(),
            batch["target"],
            batch["cond"],
            batch["mask"],
            generator=generator,
            anchor=batch.get("anchor"),
        )
        n = batch["target"].shape[0]
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=n, sync_dist=True)
        log_sigma_buckets(self, out, self.bucket_edges)

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
        require(sampler is not None, "a diffusion model needs a sampler to generate (sampler=...)")
        b, _, h, w = cond.shape
        cond_rep = cond.repeat_interleave(n_members, dim=0)
        x0 = sampler(
            self.inference_module(),
            cond_rep,
            out_channels=self.out_channels,
            generators=generators,
            anchor=repeat_members(anchor, n_members),
        )
        return x0.view(b, n_members, self.out_channels, h, w)
