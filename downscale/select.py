"""Choose a checkpoint by the CRPS of its samples:
``python -m downscale.select run_dir=<train run> sampler=dpmpp_2m sampler.steps=10 n_members=8``.

A diffusion model's validation loss (the denoising error over all noise levels) does not rank its
checkpoints, or its seeds, the way their ensembles score. On Iberia, the residual EDM's samples on
the validation winter were best up to 30 epochs before that loss was lowest, and the loss could not
tell a good seed from one 0.14 mm/day worse in test CRPS; the CRPS of a validation draw ranked
all four runs in the order of their test CRPS (docs/models.md, "Choosing a checkpoint by its
samples").

Each candidate draws ``split`` (default ``val``) with the configured sampler, members and seed (the
same noise for every candidate) through ``downscale.sample`` (resumable), is scored by its CRPS
against the observations over valid cells, and the best is copied to ``<output_dir>/selected.ckpt``;
``selection.json`` lists every candidate's score.
"""

from __future__ import annotations

import copy
import glob
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
import xarray as xr
from omegaconf import DictConfig, OmegaConf

from downscale.utils.atomic import atomic_path
from downscale.utils.checkpoint import load_checkpoint
from downscale.utils.cli import run_cli
from downscale.utils.errors import report_user_errors, require


def candidate_paths(run_dir: str | None, candidates: list[str] | None) -> list[Path]:
    """The checkpoints to compare: ``candidates`` (paths or glob patterns), or a train run's
    periodic checkpoints (``epoch-*.ckpt``) with its ``best.ckpt`` and ``last.ckpt``."""
    if candidates:
        paths: list[Path] = []
        for pattern in candidates:
            matches = sorted(glob.glob(str(pattern)))
            require(matches, f"candidates: nothing matches {pattern}; check the path or pattern")
            paths += [Path(m) for m in matches]
    else:
        require(
            run_dir is not None,
            "give run_dir=<train run dir> or candidates=[<checkpoint>, ...] to choose from",
        )
        folder = Path(run_dir) / "checkpoints"
        require(folder.is_dir(), f"run_dir has no checkpoints folder: {folder}")
        paths = sorted(folder.glob("epoch-*.ckpt"))
        paths += [folder / n for n in ("best.ckpt", "last.ckpt") if (folder / n).is_file()]
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    require(unique, f"no checkpoints to choose from in {run_dir}/checkpoints")
    return unique


def in_regression_stage(checkpoint: dict[str, Any]) -> bool:
    """A residual model's checkpoint saved before its diffusion stage (its denoiser is untrained):
    its own record, or for checkpoints older than that record, an epoch below the config's
    ``regression_epochs``."""
    info = checkpoint["downscale"]
    if "regression_stage" in info:
        return bool(info["regression_stage"])
    model = info["config"].get("model", {})
    return int(checkpoint.get("epoch", 0)) < int(model.get("regression_epochs") or 0)


def labels(paths: list[Path]) -> list[str]:
    """Short unique names: the file stem, prefixed by the run folder when several runs take part."""
    runs = {p.parent.parent for p in paths}
    if len(runs) == 1:
        return [p.stem for p in paths]
    return [f"{p.parent.parent.name}/{p.stem}" for p in paths]


def sample_crps(path: str | Path, variable: str | None = None) -> float:
    """Ensemble CRPS of a samples store against the observations it was drawn for, over the cells
    where both are finite (physical units)."""
    from downscale.evaluation.metrics.pixel import crps_ensemble

    samples = xr.open_zarr(path, consolidated=False)
    name = variable or next(v for v in samples.data_vars if samples[v].dims[0] == "member")
    obs = xr.open_zarr(samples.attrs["obs_store"], consolidated=False)[name]
    obs = obs.isel(time=samples["time_index"].values).assign_coords(time=samples.time)
    return float(crps_ensemble(samples[name], obs).compute())


def draw_path(out_dir: str | Path, label: str) -> Path:
    """Where the candidate ``label``'s draw is kept (``dry.fit_store`` of the chosen one's rows)."""
    return Path(out_dir) / "draws" / label.replace("/", "__") / "samples.zarr"


def draw_config(cfg: DictConfig, ckpt: Path, out: Path) -> DictConfig:
    """The sampling config of one candidate: its checkpoint, the selection split, no evaluation and
    no drizzle correction (the raw draws are compared)."""
    sub = copy.deepcopy(cfg)
    for key, value in {
        "ckpt": str(ckpt),
        "run_dir": None,
        "out": str(out),
        "evaluate": False,
        "dry": {"threshold": None, "fit_store": None},
    }.items():
        OmegaConf.update(sub, key, value, merge=True, force_add=True)
    return sub


@report_user_errors
def run(cfg: DictConfig) -> dict[str, Any]:
    """Draw and score every candidate; copy the best to ``selected.ckpt``; return the selection."""
    from downscale import sample

    started = time.perf_counter()
    sample.check_options(cfg)
    paths = candidate_paths(cfg.get("run_dir"), cfg.get("candidates"))
    out_dir = Path(cfg.paths.output_dir)
    rows = []
    seen: dict[tuple, str] = {}  # (run folder, epoch, step) -> label: last.ckpt is often a copy
    for path, label in zip(paths, labels(paths), strict=True):
        checkpoint = load_checkpoint(path)
        if in_regression_stage(checkpoint):
            print(f"select: {label} skipped (saved in the regression stage)")
            continue
        moment = (path.parent, checkpoint.get("epoch"), checkpoint.get("global_step"))
        if moment in seen:
            print(f"select: {label} skipped (the same training step as {seen[moment]})")
            continue
        seen[moment] = label
        result = sample.run(draw_config(cfg, path, draw_path(out_dir, label)))
        score = sample_crps(result["path"], cfg.get("variable"))
        rows.append(
            {
                "label": label,
                "checkpoint": str(path),
                "epoch": checkpoint.get("epoch"),
                "crps": score,
                "draw": str(result["path"]),
            }
        )
        print(f"select: {label} (epoch {checkpoint.get('epoch')}): CRPS {score:.4g} on {cfg.split}")
    require(rows, "select: every candidate was saved in the regression stage; train longer")
    # a diverged draw scores NaN; it must lose, not win (NaN compares False with everything)
    best = min(rows, key=lambda row: row["crps"] if math.isfinite(row["crps"]) else math.inf)
    require(
        math.isfinite(best["crps"]),
        "select: no candidate's draw has a finite CRPS (the sampler diverged); try another "
        "sampler or more steps",
    )
    selected = out_dir / "selected.ckpt"
    with atomic_path(selected) as tmp:
        shutil.copyfile(best["checkpoint"], tmp)
    selection = {
        "split": str(cfg.split),
        "n_members": int(cfg.n_members),
        "seed": int(cfg.seed),
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
        "candidates": rows,
        "best": best,
        "selected": str(selected),
        "seconds": time.perf_counter() - started,
    }
    with atomic_path(out_dir / "selection.json") as tmp:
        tmp.write_text(json.dumps(selection, indent=1))
    print(f"selected: {best['label']} (CRPS {best['crps']:.4g}) -> {selected}")
    return selection


@hydra.main(version_base=None, config_path="../conf", config_name="select")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run(cfg)


if __name__ == "__main__":
    run_cli("select", main)
