"""Evaluate samples: ``python -m downscale.evaluate samples=<samples.zarr> [obs=<dataset store>]``.

Writes ``metrics.json``, ``metrics.nc``, ``figures/`` and ``report.html`` into the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import xarray as xr
from omegaconf import DictConfig, OmegaConf

from downscale.utils.cli import run_cli
from downscale.utils.errors import UserError, report_user_errors, require


def evaluate_store(
    samples: str | Path,
    obs: str | Path,
    evaluation: DictConfig,
    out_dir: str | Path,
    variable: str | None = None,
) -> dict[str, float]:
    """Score a samples store against observations with the metrics of ``evaluation``."""
    from downscale.evaluation.runner import evaluate_paths

    metrics = evaluate_paths(samples, obs, variable=variable, cfg=evaluation, out_dir=Path(out_dir))
    print(f"metrics: {Path(out_dir) / 'metrics.json'}")
    print(f"report: {Path(out_dir) / 'report.html'}")
    return metrics


def _obs_of(samples: Path) -> str:
    try:
        store = xr.open_zarr(samples, consolidated=False).attrs.get("obs_store")
    except Exception as exc:  # noqa: BLE001 - unreadable store: say which and stop
        raise UserError(
            f"cannot read samples store {samples} ({type(exc).__name__}); is it complete?"
        ) from exc
    require(
        store is not None, f"{samples} does not record its observations; pass obs=<dataset store>"
    )
    return store


@report_user_errors
def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate; returns the flat metrics."""
    require(
        not OmegaConf.is_missing(cfg, "samples"),
        "no samples given; pass samples=<path to samples.zarr>",
    )
    samples = Path(cfg.samples)
    require(samples.exists(), f"samples store not found: {samples}; check the samples= path")
    obs = cfg.obs or _obs_of(samples)
    return evaluate_store(samples, obs, cfg.evaluation, cfg.out_dir, variable=cfg.get("variable"))


@hydra.main(version_base=None, config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    run_cli("evaluate", main)
