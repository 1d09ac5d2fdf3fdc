"""Sweep summaries: every job writes ``summary.json`` into its run dir; at the end of a multirun the
``SweepSummary`` Hydra callback gathers them into ``summary.csv``, ``summary.md``, plots of each
headline metric against NFE per sampler, a ``report.html`` and (when W&B is on) a W&B table.

Reading the job dirs (rather than in-process return values) works with every launcher, local or SLURM.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from downscale.utils.atomic import atomic_path, write_text

SUMMARY = "summary.json"
HEADLINE_METRICS = ("crps", "mae", "rmse", "bias", "ralsd", "spread_skill")


def write_job_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write one job's flat summary (parameters, cost, metrics) as ``summary.json``."""
    path = Path(run_dir) / SUMMARY
    write_text(path, json.dumps(summary, indent=1, sort_keys=True, default=str))
    return path


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job summary found below ``sweep_dir`` (ordered by job number)."""
    rows = []
    for path in sorted(
        Path(sweep_dir).glob(f"*/{SUMMARY}"), key=lambda p: _job_number(p.parent.name)
    ):
        row = {"job": path.parent.name, **json.loads(path.read_text())}
        rows.append(row)
    return pd.DataFrame(rows)


def _job_number(name: str) -> float:
    return float(name) if name.isdigit() else math.inf


def plot_against_nfe(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per headline metric: the metric against NFE, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if "nfe" not in table or "sampler" not in table:
        return paths
    for metric in (m for m in HEADLINE_METRICS if m in table):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, group in table.sort_values("nfe").groupby("sampler"):
            ax.plot(group["nfe"], group[metric], marker="o", label=name)
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(metric)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"sweep_{metric}_vs_nfe.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def summarise_sweep(sweep_dir: str | Path) -> pd.DataFrame | None:
    """Write the sweep summary files into ``sweep_dir``; returns the table (None: no job summaries)."""
    from downscale.evaluation.report import write_sweep_report

    sweep_dir = Path(sweep_dir)
    table = collect(sweep_dir)
    if table.empty:
        return None
    with atomic_path(sweep_dir / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text(sweep_dir / "summary.md", table.to_markdown(index=False, floatfmt=".4g") + "\n")
    plot_against_nfe(table, sweep_dir)
    write_sweep_report(table.to_dict("records"), sweep_dir, title=f"sweep {sweep_dir.name}")
    _log_table(table, sweep_dir)
    return table


def _log_table(table: pd.DataFrame, sweep_dir: Path) -> None:
    """Log the table to W&B as its own run, unless W&B is disabled."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return
    import wandb

    from downscale.logging.wandb import wandb_mode

    run = wandb.init(
        project="downscale",
        job_type="sweep-summary",
        dir=str(sweep_dir),
        name=f"sweep-{sweep_dir.name}",
        mode=wandb_mode(None),
        reinit="finish_previous",
    )
    try:
        run.log({"sweep_summary": wandb.Table(dataframe=table.astype(str))})
    finally:
        run.finish()


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        table = summarise_sweep(config.hydra.sweep.dir)
        if table is not None:
            print(f"sweep summary: {Path(config.hydra.sweep.dir) / 'summary.md'}")
