"""Log evaluation results to Weights & Biases when a run is active (no-op otherwise)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path


def log_to_wandb(
    metrics: Mapping[str, float],
    figures_dir: str | Path,
    scorecard: Mapping[str, Mapping[str, float]],
    *,
    prefix: str = "eval/",
) -> bool:
    """Headline metrics to the run summary, figures as images, the scorecard as a table.

    Returns True when something was logged (a wandb run is active), False otherwise.
    """
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency, but stay harmless
        return False
    run = wandb.run
    if run is None:
        return False
    for key, value in metrics.items():
        run.summary[f"{prefix}{key}"] = value if math.isfinite(value) else None
    images = {
        f"{prefix}figures/{png.stem}": wandb.Image(str(png))
        for png in sorted(Path(figures_dir).glob("*.png"))
    }
    columns = ["metric", *scorecard]
    keys = list(dict.fromkeys(k for row in scorecard.values() for k in row))
    data = [[k, *(scorecard[c].get(k) for c in scorecard)] for k in keys]
    run.log({**images, f"{prefix}scorecard": wandb.Table(columns=columns, data=data)})
    return True
