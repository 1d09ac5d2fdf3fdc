"""Conditional GAN: the UNet as a generator with injected noise, trained against a discriminator
with global and patch heads, plus a content loss on the mean of several draws.

Generator loss (after the content-only warm-up):

    L_G = L1(mask; mean_k G(cond, z_k), y) + w L_adv,
    w = clamp(||grad_theta L_content|| / (||grad_theta L_adv|| + 1e-4), 0, w_max)

with ``theta`` the generator's last layer (the adaptive weight of Esser et al. 2021, VQGAN, Eq. 7).
``L_adv`` is non-saturating (``softplus(-D(fake))``, Goodfellow et al. 2014) or Wasserstein
(``-D(fake)``, Arjovsky et al. 2017); the discriminator minimises ``softplus(-D(real)) +
softplus(D(fake))`` or ``D(fake) - D(real)``, with an optional gradient penalty (R1 on real data for
the non-saturating loss, Mescheder et al. 2018; WGAN-GP on interpolates, Gulrajani et al. 2017).
Generator and discriminator steps alternate (one each per batch), with separate optimizers, using
Lightning's manual optimization.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from downscale.models.base import DownscaleModule, build_net, repeat_members
from downscale.models.losses import PixelLoss
from downscale.sampling.samplers import randn_like
from downscale.sampling.tiling import tiled_one_shot
from downscale.utils.errors import require

LOSSES = ("nonsaturating", "wasserstein")


class NoiseGenerator(nn.Module):
    """``G(cond, z) = F(concat(cond, z))`` with ``z ~ N(0, I)`` of ``noise_channels`` channels."""

    def __init__(self, net: nn.Module, noise_channels: int) -> None:
        super().__init__()
        self.net = net
        self.noise_channels = noise_channels

    def noise(self, cond: torch.Tensor, generators: Any = None) -> torch.Tensor:
        """Noise for each batch element; ``generators`` as in the samplers (None, one, or a list)."""
        b, _, h, w = cond.shape
        shape = (b, self.noise_channels, h, w)
        return randn_like(torch.empty(shape, device=cond.device, dtype=cond.dtype), generators)

    def forward(
        self,
        cond: torch.Tensor,
        z: torch.Tensor | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One draw per batch element; ``anchor`` (B, 2) goes to the net (learned location map)."""
        z = self.noise(cond) if z is None else z
        inputs = torch.cat([cond, z.to(cond.dtype)], dim=1)
        return self.net(None, None, inputs, anchor=anchor).to(torch.float32)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.net.out_conv.weight


def adaptive_weight(
    content: torch.Tensor, adversarial: torch.Tensor, layer: torch.Tensor, max_weight: float = 100.0
) -> torch.Tensor:
    """``clamp(||d content / d layer|| / (||d adversarial / d layer|| + 1e-4), 0, max_weight)``
    (VQGAN's adaptive weight), detached."""
    g_content = torch.autograd.grad(content, layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adversarial, layer, retain_graph=True)[0]
    weight = g_content.norm() / (g_adv.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def _scores(out: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [out["global"], out["patch"]]


def generator_adv_loss(kind: str, fake_scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Adversarial generator loss averaged over the heads."""
    terms = [
        F.softplus(-s).mean() if kind == "nonsaturating" else -s.mean()
        for s in _scores(fake_scores)
    ]
    return sum(terms) / len(terms)


def discriminator_loss(
    kind: str, real_scores: dict[str, torch.Tensor], fake_scores: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Discriminator loss averaged over the heads."""
    terms = []
    for real, fake in zip(_scores(real_scores), _scores(fake_scores), strict=True):
        if kind == "nonsaturating":
            terms.append(F.softplus(-real).mean() + F.softplus(fake).mean())
        else:
            terms.append(fake.mean() - real.mean())
    return sum(terms) / len(terms)


class GANModel(DownscaleModule):
    """Conditional GAN (generator = the UNet with noise channels concatenated to ``cond``).

    Args:
        net: net factory (``conf/net``), called with ``cond_channels + noise_channels`` inputs
            and ``noisy_channels=0``.
        discriminator: factory ``(in_channels) -> Discriminator``.
        d_optimizer: optimizer factory of the discriminator (``optimizer`` is the generator's).
        noise_channels: channels of injected Gaussian noise.
        loss: ``nonsaturating`` or ``wasserstein``.
        gradient_penalty: weight of the gradient penalty (0: none).
        content_draws: generator draws whose mean enters the content (L1) loss.
        max_adaptive_weight: clamp of the adaptive weight.
        warmup_steps: generator steps trained on the content loss alone (REFERENCE: 5000).
    """

    needs_sampler = False
    ddp_find_unused_parameters = True  # a D step never touches G and the reverse

    def __init__(
        self,
        net: Callable[..., nn.Module],
        discriminator: Callable[..., nn.Module],
        d_optimizer: Callable[..., torch.optim.Optimizer],
        out_channels: int,
        cond_channels: int,
        noise_channels: int = 4,
        loss: str = "nonsaturating",
        gradient_penalty: float = 0.0,
        content_loss: str = "mae",
        content_draws: int = 4,
        max_adaptive_weight: float = 100.0,
        warmup_steps: int = 5000,
        val_seed: int = 1234,
        net_overrides: Mapping[str, Any] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        require(loss in LOSSES, f"model.loss={loss} is unknown; use one of {list(LOSSES)}")
        require(noise_channels >= 1, "model.noise_channels must be >= 1 (the GAN needs noise)")
        require(content_draws >= 1, "model.content_draws must be >= 1")
        require(gradient_penalty >= 0, "model.gradient_penalty must be >= 0")
        require(
            self.scheduler_factory is None,
            "the GAN does not take an LR schedule; use scheduler=none",
        )
        self.automatic_optimization = False
        self.out_channels, self.cond_channels = out_channels, cond_channels
        self.generator = NoiseGenerator(
            build_net(
                net,
                net_overrides,
                out_channels=out_channels,
                cond_channels=cond_channels + noise_channels,
                noisy_channels=0,
            ),
            noise_channels,
        )
        self.discriminator = discriminator(in_channels=out_channels + cond_channels)
        self.d_optimizer_factory = d_optimizer
        self.loss_kind = loss
        self.gradient_penalty = float(gradient_penalty)
        self.content_loss = PixelLoss(content_loss)
        self.content_draws = int(content_draws)
        self.max_adaptive_weight = float(max_adaptive_weight)
        self.warmup_steps = int(warmup_steps)
        self.val_seed = val_seed
        # set by downscale.train from trainer.gradient_clip_val (manual optimization clips itself)
        self.gradient_clip_val: float | None = None
        self.register_buffer("gen_steps", torch.zeros((), dtype=torch.long))
        self._standalone_optimizers: list[torch.optim.Optimizer] | None = None
        self.setup_ema()
        self.maybe_compile()

    def averaged_module(self) -> nn.Module:
        return self.generator

    def compiled_modules(self) -> list[nn.Module]:
        return [self.generator.net]

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            self.optimizer_factory(list(self.generator.parameters())),
            self.d_optimizer_factory(list(self.discriminator.parameters())),
        ]

    def _optimizers(self) -> list[Any]:
        """Lightning's optimizers, or our own when stepped outside a Trainer (tests, benchmarks)."""
        if self._trainer is not None:
            return list(self.optimizers())
        if self._standalone_optimizers is None:
            self._standalone_optimizers = self.configure_optimizers()
        return self._standalone_optimizers

    def _step(self, optimizer: Any, loss: torch.Tensor, params: list[nn.Parameter]) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self._trainer is not None:
            self.manual_backward(loss)
            if self.gradient_clip_val:
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val)
        else:
            loss.backward()
            if self.gradient_clip_val:
                torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_val)
        optimizer.step()

    def _penalty(self, target: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor):
        if self.loss_kind == "wasserstein":  # WGAN-GP on random interpolates
            eps = torch.rand(target.shape[0], 1, 1, 1, device=target.device)
            x = (eps * target + (1 - eps) * fake).requires_grad_(True)
        else:  # R1 on real data
            x = target.detach().requires_grad_(True)
        score = sum(s.sum() for s in _scores(self.discriminator(x, cond)))
        (grad,) = torch.autograd.grad(score, x, create_graph=True)
        norm = grad.flatten(1).norm(dim=1)
        if self.loss_kind == "wasserstein":
            return self.gradient_penalty * (norm - 1).square().mean()
        return 0.5 * self.gradient_penalty * norm.square().mean()

    def draws(
        self,
        cond: torch.Tensor,
        k: int,
        generators: Any = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, k, C, H, W) generator draws (live weights)."""
        b, _, h, w = cond.shape
        cond_k = cond.repeat_interleave(k, dim=0)
        noise = self.generator.noise(cond_k, generators)
        out = self.generator(cond_k, noise, anchor=repeat_members(anchor, k))
        return out.view(b, k, self.out_channels, h, w)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        g_opt, d_opt = self._optimizers()
        target, cond, mask = batch["target"], batch["cond"], batch["mask"]
        anchor = batch.get("anchor")
        target = target * mask  # the discriminator never sees invalid pixels
        n = target.shape[0]
        adversarial = int(self.gen_steps) >= self.warmup_steps

        if adversarial:  # discriminator step on one detached draw
            with torch.no_grad():
                fake = self.generator(cond, anchor=anchor) * mask
            d_loss = discriminator_loss(
                self.loss_kind, self.discriminator(target, cond), self.discriminator(fake, cond)
            )
            if self.gradient_penalty > 0:
                d_loss = d_loss + self._penalty(target, fake, cond)
            self.check_finite(d_loss)
            self._step(d_opt, d_loss, list(self.discriminator.parameters()))
            self.log("train/d_loss", d_loss, batch_size=n)

        self.discriminator.requires_grad_(False)
        try:
            draws = self.draws(cond, self.content_draws, anchor=anchor)
            content = self.content_loss(draws.mean(dim=1), target, mask)
            g_loss = content
            if adversarial:
                adv = generator_adv_loss(
                    self.loss_kind, self.discriminator(draws[:, 0] * mask, cond)
                )
                weight = adaptive_weight(
                    content, adv, self.generator.last_layer, self.max_adaptive_weight
                )
                g_loss = content + weight * adv
                self.log("train/adv_loss", adv, batch_size=n)
                self.log("train/adaptive_weight", weight, batch_size=n)
            self.check_finite(g_loss)
            self._step(g_opt, g_loss, list(self.generator.parameters()))
        finally:
            self.discriminator.requires_grad_(True)
        self.gen_steps += 1
        self.log("train/content_loss", content, batch_size=n)
        self.log("train/loss", g_loss, prog_bar=True, batch_size=n)
        self.log_throughput(n)
        return g_loss.detach()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        target, cond, mask = batch["target"], batch["cond"], batch["mask"]
        g = torch.Generator(device=cond.device).manual_seed(self.val_seed + batch_idx)
        b, _, h, w = cond.shape
        k = self.content_draws
        cond_k = cond.repeat_interleave(k, dim=0)
        generator = self.inference_module()
        anchor_k = repeat_members(batch.get("anchor"), k)
        draws = generator(cond_k, generator.noise(cond_k, g), anchor=anchor_k).view(b, k, -1, h, w)
        loss = self.content_loss(draws.mean(dim=1), target, mask)
        self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)

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
        """Members from the EMA generator; member ``i`` of the flattened (time, member) order takes
        its noise from ``generators[i]``."""
        b, _, h, w = cond.shape
        generator = self.inference_module()
        cond_rep = cond.repeat_interleave(n_members, dim=0)
        out = tiled_one_shot(
            lambda z, c, a: generator(c, z, anchor=a),
            generator.noise(cond_rep, generators),
            cond_rep,
            getattr(sampler, "wrap", None),
            repeat_members(anchor, n_members),
        )
        return out.view(b, n_members, self.out_channels, h, w)
