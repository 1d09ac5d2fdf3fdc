"""Log evaluation results to Weights & Biases: :func:`evaluation_run` starts a run for an
evaluation (offline unless W&B is configured), :func:`log_to_wandb` logs into the active run."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def evaluation_run(
    out_dir: str | Path,
    *,
    enabled: bool = True,
    project: str = "downscale",
    name: str = "evaluate",
    mode: str | None = None,
) -> Iterator[Any]:
    """A W&B run around an evaluation, yielded (None when not logging).

    Reuses an active run (e.g. inside training) and leaves it open; otherwise starts one in
    ``out_dir`` (``wandb/`` files, the run id kept in ``wandb_id.txt`` so a rerun resumes it) in
    :func:`downscale.logging.wandb.wandb_mode` (offline unless W&B is configured;
    ``WANDB_MODE=disabled`` starts nothing) and finishes it when the block ends, also on error.
    """
    if not enabled:
        yield None
        return
    import wandb

    from downscale.logging.wandb import run_id, wandb_mode

    if wandb.run is not None:
        yield wandb.run
        return
    mode = wandb_mode(mode)
    if mode == "disabled":
        yield None
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        name=name,
        dir=str(out_dir),
        id=run_id(out_dir),
        resume="allow",
        mode=mode,
        job_type="evaluate",
    )
    print(f"W&B run ({mode}): {run.dir}")
    exit_code = 1
    try:
        yield run
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)


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
