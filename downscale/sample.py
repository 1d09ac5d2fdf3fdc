"""Draw an ensemble: ``python -m downscale.sample run_dir=<train run> [sampler=heun] [schedule=karras]``.

Loads the checkpoint alone (its config and scalers are inside), downscales a split of the dataset store
block by block into ``samples.zarr`` (resumable), then evaluates it unless ``evaluate=false``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from downscale.logging.sweep import write_job_summary
from downscale.sampling.driver import SampleRequest, SamplerRun, write_samples
from downscale.utils.checkpoint import file_sha256, find_checkpoint, load_checkpoint, load_model
from downscale.utils.cli import run_cli
from downscale.utils.config import to_plain
from downscale.utils.errors import report_user_errors, require
from downscale.utils.seeding import resolve_device


def build_sampler(cfg: DictConfig) -> SamplerRun | None:
    """The sampler function and its schedule from the ``sampler`` and ``schedule`` groups."""
    if cfg.get("sampler") is None:
        return None
    sampler_cfg = OmegaConf.to_container(cfg.sampler, resolve=True)
    steps = sampler_cfg.pop("steps", None)
    require(
        isinstance(steps, int) and steps >= 1,
        f"sampler.steps must be an integer >= 1, got {steps}; e.g. sampler.steps=18",
    )
    sigmas = instantiate(cfg.schedule)(steps)
    wrap = instantiate(cfg.tiling) if cfg.get("tiling") else None
    return SamplerRun(fn=instantiate(sampler_cfg), sigmas=sigmas, wrap=wrap)


def build_datamodule(checkpoint: dict[str, Any], overrides: DictConfig | None) -> Any:
    """The checkpoint's DataModule with its scalers, and the user's ``data.*`` overrides applied."""
    data_cfg = OmegaConf.create(checkpoint["downscale"]["config"]["data"])
    if overrides is not None:
        changes = {k: v for k, v in to_plain(overrides).items() if v is not None}
        data_cfg = OmegaConf.merge(data_cfg, changes)
    datamodule = instantiate(data_cfg)
    datamodule.load_scaler_states(checkpoint["downscale"]["scalers"])
    datamodule.prepare()
    return datamodule


@report_user_errors
def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample (and evaluate); returns the samples path, NFE, wall time and metrics if evaluated."""
    ckpt_path = find_checkpoint(cfg.get("run_dir"), cfg.get("ckpt"))
    checkpoint = load_checkpoint(ckpt_path)
    model = load_model(checkpoint, ckpt_path)
    datamodule = build_datamodule(checkpoint, cfg.get("data"))
    require(
        cfg.split in datamodule.split_indices,
        f"split={cfg.split} is not defined by the data config; use one of {list(datamodule.split_indices)}",
    )
    n_members = int(cfg.n_members)
    if not getattr(model, "stochastic", True) and n_members > 1:
        warnings.warn(
            f"{type(model).__name__} is deterministic: drawing 1 member instead of {n_members}",
            stacklevel=1,
        )
        n_members = 1
    sampler = build_sampler(cfg) if getattr(model, "needs_sampler", True) else None
    request = SampleRequest(
        out=Path(cfg.out),
        times=datamodule.split_indices[cfg.split],
        n_members=n_members,
        seed=int(cfg.seed),
        block_size=int(cfg.block_size),
        attrs={
            "checkpoint": str(ckpt_path),
            "checkpoint_sha256": file_sha256(ckpt_path),
            "sampler": json.dumps(to_plain(cfg.sampler)) if sampler else "none",
            "schedule": json.dumps(to_plain(cfg.schedule)) if sampler else "none",
            "seed": int(cfg.seed),
            "split": str(cfg.split),
            "obs_store": datamodule.store,
            "model": type(model).__name__,
        },
    )
    result = write_samples(
        model,
        datamodule,
        sampler,
        request,
        batch_size=int(cfg.batch_size),
        device=resolve_device(cfg.device),
    )
    print(f"samples: {result['path']} (NFE {result['nfe']}, {result['seconds']:.1f} s)")
    out_dir = Path(cfg.out).parent
    if cfg.get("evaluate"):
        from downscale.evaluate import evaluate_store

        result["metrics"] = evaluate_store(
            result["path"], datamodule.store, cfg.evaluation, out_dir, variable=None
        )
        result["metrics_path"] = out_dir / "metrics.json"
    write_job_summary(out_dir, sweep_row(cfg, result, n_members))
    return result


def sweep_row(cfg: DictConfig, result: dict[str, Any], n_members: int) -> dict[str, Any]:
    """Parameters, cost and headline metrics of this sampling run (one row of a sweep summary)."""
    row: dict[str, Any] = {
        "n_members": n_members,
        "nfe": result["nfe"],
        "seconds": result["seconds"],
        "blocks_computed": result["blocks_computed"],
    }
    if cfg.get("sampler") is not None:
        sampler = to_plain(cfg.sampler)
        row["sampler"] = sampler.pop("_target_").rsplit(".", 1)[-1].removeprefix("sample_")
        sampler.pop("_partial_", None)
        row.update({f"sampler.{k}": v for k, v in sampler.items()})
        schedule = to_plain(cfg.schedule)
        row["schedule"] = schedule.pop("_target_").rsplit(".", 1)[-1].removeprefix("sigmas_")
        schedule.pop("_partial_", None)
        row.update({f"schedule.{k}": v for k, v in schedule.items()})
    row.update(result.get("metrics") or {})
    return row


@hydra.main(version_base=None, config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run(cfg)


if __name__ == "__main__":
    run_cli("sample", main)
