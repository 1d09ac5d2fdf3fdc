"""Evaluate samples: ``python -m downscale.evaluate samples=<samples.zarr> [obs=<dataset store>]``.

Writes ``metrics.json``, ``scorecard.json``, ``metrics.nc``, ``figures/`` and ``report.html`` into the
run directory, with the baselines of ``evaluation.baselines`` beside the model, and logs them to a
W&B run when ``evaluation.wandb`` is true.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import numpy as np
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
    """Score a samples store against observations with the metrics of ``evaluation``.

    The baselines of ``evaluation.baselines`` are computed from ``obs`` (a dataset store) on the
    samples' days and scored beside the model; with ``evaluation.wandb`` the results go to a W&B
    run (:func:`downscale.logging.wandb_logging.evaluation_run`).
    """
    from downscale.evaluation.runner import evaluate_paths
    from downscale.logging.wandb_logging import evaluation_run

    baselines, skipped = store_baselines(samples, obs, evaluation, variable)
    with evaluation_run(
        out_dir,
        enabled=bool(evaluation.get("wandb")),
        project=str(evaluation.get("wandb_project") or "downscale"),
    ):
        metrics = evaluate_paths(
            samples,
            obs,
            variable=variable,
            cfg=evaluation,
            out_dir=Path(out_dir),
            baselines=baselines,
            skipped=skipped,
        )
    print(f"metrics: {Path(out_dir) / 'metrics.json'}")
    print(f"report: {Path(out_dir) / 'report.html'}")
    return metrics


def _same_store(a: str | Path | None, b: str | Path) -> bool:
    return a is not None and Path(a).resolve() == Path(b).resolve()


def store_baselines(
    samples: str | Path, obs: str | Path, evaluation: DictConfig, variable: str | None = None
) -> tuple[dict[str, xr.DataArray], dict[str, str]]:
    """The baselines of ``evaluation.baselines`` on the samples' days, and those skipped (reason).

    Test days are the samples' ``time`` coordinate; training days (for analogs) come from the
    samples store's ``train_time_index`` attribute (indices into the time axis of its
    ``obs_store``, written by ``downscale.sample``), used only when ``obs`` is that store.
    """
    if not evaluation.get("baselines"):
        return {}, {}
    from downscale.evaluation.baselines import available_baselines
    from downscale.evaluation.runner import open_data, pick_variable

    sds = open_data(samples, {})
    store = open_data(obs, {})
    var = pick_variable(sds, variable, "samples")
    train_times, why = None, "the samples store records no training days (train_time_index)"
    index = sds.attrs.get("train_time_index")
    index = json.loads(index) if isinstance(index, str) else index
    if index:
        if _same_store(sds.attrs.get("obs_store"), obs):
            train_times = store["time"].values[np.asarray(index, dtype=np.int64)]
        else:
            why = "its training days index another store than the observations given"
    found, skipped = available_baselines(
        store,
        sds["time"].values,
        train_times,
        evaluation,
        variable=var,
        why_no_training_days=why,
    )
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    return found, skipped


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
