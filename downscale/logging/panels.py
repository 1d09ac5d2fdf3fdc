"""Image panels of validation samples next to the truth, every N epochs (a Lightning callback).

A quick few-step sample of the first validation batch with the EMA model, drawn with fixed seeds, shown
in physical units with one colour scale per row; saved as ``<run dir>/panels/epoch_XXXX.png`` and
logged to W&B when a ``WandbLogger`` is attached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from downscale.sampling.driver import SamplerRun
from downscale.sampling.samplers import sample_euler
from downscale.sampling.schedules import denoiser_sigma_data, sigma_max_scale, sigmas_karras
from downscale.utils.atomic import atomic_path


def plot_panels(truth: np.ndarray, members: np.ndarray, title: str, path: Path) -> Path:
    """Rows: fields; columns: truth then members, one colour scale per row (the truth's).

    ``truth`` (N, H, W), ``members`` (N, M, H, W)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n, m = members.shape[:2]
    fig, axes = plt.subplots(n, m + 1, figsize=(2.2 * (m + 1), 2.2 * n), squeeze=False)
    for i in range(n):
        # the truth sets the colour scale (outlying draws saturate instead of washing it out)
        finite = truth[i][np.isfinite(truth[i])]
        if not finite.size or finite.min() == finite.max():
            finite = members[i][np.isfinite(members[i])]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        images = [truth[i], *members[i]]
        for j, (ax, image) in enumerate(zip(axes[i], images, strict=True)):
            shown = ax.imshow(image, origin="lower", vmin=vmin, vmax=vmax, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("truth" if j == 0 else f"member {j}", fontsize=8)
        fig.colorbar(shown, ax=axes[i].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


class SamplePanels(L.Callback):
    """Every ``every_n_epochs`` epochs: sample the first validation batch and save a panel.

    Args:
        every_n_epochs: how often (in epochs).
        n_images: fields of the batch shown (rows).
        n_members: members drawn per field (1 for deterministic models).
        steps: Euler steps of the quick sample (diffusion models), on a Karras schedule
            ``sigma_min..sigma_max``, ``sigma_max`` written for data of std ``schedule_sigma_data``
            (scaled to the model's ``sigma_data`` like ``downscale.sample`` does; None: as
            written).
        seed: seed of the draws, so panels of successive epochs compare.
        dirname: sub-directory of the run dir.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        n_images: int = 3,
        n_members: int = 3,
        steps: int = 8,
        sigma_min: float = 0.02,
        sigma_max: float = 80.0,
        schedule_sigma_data: float | None = None,
        seed: int = 0,
        dirname: str = "panels",
    ) -> None:
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.n_images, self.n_members, self.steps = n_images, n_members, steps
        self.sigma_min, self.sigma_max, self.seed = sigma_min, sigma_max, seed
        self.schedule_sigma_data = schedule_sigma_data
        self.dirname = dirname
        self._batch: dict[str, torch.Tensor] | None = None
        self.saved: list[Path] = []

    def due(self, trainer: L.Trainer) -> bool:
        return self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero and self.due(trainer):
            keys = [k for k in ("cond", "target", "mask", "anchor") if k in batch]
            self._batch = {k: batch[k][: self.n_images].detach() for k in keys}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or trainer.sanity_checking:
            return
        batch, self._batch = self._batch, None
        members = self.sample(pl_module, batch["cond"], batch.get("anchor"))
        truth = batch["target"].float().cpu().numpy()
        draws = members.float().cpu().numpy()
        mask = batch["mask"].cpu().numpy()[:, 0].astype(bool)
        truth, draws = self.to_physical(trainer, truth, draws)
        truth = np.where(mask, truth[:, 0], np.nan)
        draws = np.where(mask[:, None], draws[:, :, 0], np.nan)
        run_dir = Path(trainer.default_root_dir)
        epoch = trainer.current_epoch
        path = plot_panels(
            truth,
            draws,
            f"{type(pl_module).__name__}, epoch {epoch}",
            run_dir / self.dirname / f"epoch_{epoch:04d}.png",
        )
        self.saved.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/panels", images=[str(path)], step=trainer.global_step)

    @torch.no_grad()
    def sample(
        self, module: L.LightningModule, cond: torch.Tensor, anchor: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, M, C, H, W) draws with the model's EMA weights, one seeded generator per draw;
        ``anchor`` (B, 2): the batch's patch anchors (for a learned location map)."""
        stochastic = getattr(module, "stochastic", True)
        m = self.n_members if stochastic else 1
        generators = [
            torch.Generator(device=cond.device).manual_seed(self.seed * 100_003 + i)
            for i in range(cond.shape[0] * m)
        ]
        sampler = None
        if getattr(module, "needs_sampler", True):
            scale = sigma_max_scale(denoiser_sigma_data(module), self.schedule_sigma_data)
            sigmas = sigmas_karras(self.steps, self.sigma_min, self.sigma_max * scale)
            sampler = SamplerRun(fn=sample_euler, sigmas=sigmas)
        was_training = module.training
        module.eval()
        try:
            return module.generate(cond, m, sampler=sampler, generators=generators, anchor=anchor)
        finally:
            module.train(was_training)

    @staticmethod
    def to_physical(trainer: L.Trainer, truth: np.ndarray, draws: np.ndarray):
        """Inverse-scale the first target variable when the DataModule has its scaler."""
        datamodule = getattr(trainer, "datamodule", None)
        scalers = getattr(datamodule, "scalers", None)
        targets = getattr(datamodule, "targets", None)
        if not scalers or not targets or targets[0] not in scalers:
            return truth, draws
        scaler = scalers[targets[0]]
        return (
            np.asarray(scaler.inverse(truth.astype(np.float64))),
            np.asarray(scaler.inverse(draws.astype(np.float64))),
        )
