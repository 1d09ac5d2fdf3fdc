"""Draw an ensemble: ``python -m downscale.sample run_dir=<train run> [sampler=heun] [schedule=karras]``.

Loads the checkpoint alone (its config and scalers are inside), downscales a split of the dataset store
block by block into ``samples.zarr`` (resumable), then evaluates it unless ``evaluate=false``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import xarray as xr
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from downscale.logging.sweep import write_job_summary
from downscale.sampling.constraints import METHODS, Conservation
from downscale.sampling.driver import (
    OneShotRun,
    Ranks,
    SampleRequest,
    SamplerRun,
    check_precision,
    store_attrs,
    write_samples,
)
from downscale.sampling.dry import DryThreshold, fit_dry_threshold
from downscale.sampling.schedules import denoiser_sigma_data, sigma_max_scale
from downscale.utils.checkpoint import file_sha256, find_checkpoint, load_checkpoint, load_model
from downscale.utils.cli import run_cli
from downscale.utils.config import to_plain
from downscale.utils.errors import UserError, report_user_errors, require
from downscale.utils.seeding import resolve_device


def build_sampler(cfg: DictConfig) -> SamplerRun | None:
    """The sampler function and its schedule from the ``sampler`` and ``schedule`` groups."""
    if cfg.get("sampler") is None:
        return None
    sampler_cfg = OmegaConf.to_container(cfg.sampler, resolve=True)
    sampler_cfg.pop("steps", None)
    sigmas = build_sigmas(cfg)
    fn = instantiate(sampler_cfg)
    _check_arguments(fn, "sampler")
    wrap = instantiate(cfg.tiling) if cfg.get("tiling") else None
    if wrap is not None:
        wrap(lambda x, sigma, cond: x)  # the constructor checks tile, overlap, halo and max_batch
    return SamplerRun(fn=fn, sigmas=sigmas, wrap=wrap)


def build_sigmas(cfg: DictConfig, sigma_max: float | None = None) -> torch.Tensor:
    """The ``schedule`` group's noise levels for ``sampler.steps`` steps (``sigma_max`` replaces
    the schedule's own when given)."""
    steps = cfg.sampler.get("steps")
    require(
        isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1,
        f"sampler.steps must be an integer >= 1, got {steps}; e.g. sampler.steps=18",
    )
    schedule = instantiate(cfg.schedule)
    return schedule(steps) if sigma_max is None else schedule(steps, sigma_max=sigma_max)


def scale_schedule(sampler: SamplerRun, model: Any, cfg: DictConfig) -> tuple[SamplerRun, float]:
    """The sampler with its schedule's ``sigma_max`` moved to the model's ``sigma_data``
    (``schedule_sigma_data``: the data std the schedule is written for; :func:`sigma_max_scale`),
    and the factor."""
    scale = sigma_max_scale(denoiser_sigma_data(model), cfg.get("schedule_sigma_data"))
    if scale == 1.0:
        return sampler, scale
    sigma_max = float(cfg.schedule.sigma_max) * scale
    require(
        sigma_max > float(cfg.schedule.sigma_min),
        f"the schedule's sigma_max scaled to the model's sigma_data ({sigma_max:.3g}) is not above "
        f"schedule.sigma_min={cfg.schedule.sigma_min}; lower schedule.sigma_min or set "
        "schedule_sigma_data=null",
    )
    return dataclasses.replace(sampler, sigmas=build_sigmas(cfg, sigma_max)), scale


def _check_arguments(fn: Any, group: str) -> None:
    """A sampler's config keys must be arguments of its function (a typo fails now, not mid-run)."""
    if not isinstance(fn, functools.partial):
        return
    params = inspect.signature(fn.func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(fn.keywords) - set(params))
    require(
        not unknown,
        f"{group} {fn.func.__name__} has no argument(s) {', '.join(unknown)}; "
        f"use one of {', '.join(k for k in params if k not in ('denoiser', 'x', 'sigmas'))}",
    )


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


@dataclass
class SampleJob:
    """Everything one process needs to sample: built and validated from the config."""

    ckpt_path: Path
    model: Any
    datamodule: Any
    sampler: SamplerRun | None
    request: SampleRequest
    constraint: PostProcess | None = None


PostProcess = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


def chain(steps: Sequence[PostProcess | None]) -> PostProcess | None:
    """One post-processor running ``steps`` in order (None entries skipped; None if none left)."""
    steps = [step for step in steps if step is not None]
    if len(steps) <= 1:
        return steps[0] if steps else None

    def apply(name: str, samples: np.ndarray, times: np.ndarray) -> np.ndarray:
        for step in steps:
            samples = step(name, samples, times)
        return samples

    return apply


def check_dry_options(cfg: DictConfig) -> None:
    """The ``dry`` block: threshold null, a number >= 0 or auto; wet_day > 0 for auto."""
    dry = cfg.get("dry") or {}
    threshold = dry.get("threshold")
    number = isinstance(threshold, int | float) and not isinstance(threshold, bool)
    require(
        threshold is None or threshold == "auto" or (number and threshold >= 0),
        f"dry.threshold must be null, a number >= 0 (units of the predictand) or auto, got "
        f"{threshold!r}; e.g. dry.threshold=auto",
    )
    require(
        threshold == "auto" or not dry.get("fit_store"),
        f"dry.fit_store is the draw dry.threshold=auto fits on, but dry.threshold={threshold}; "
        "set dry.threshold=auto or drop dry.fit_store",
    )
    if threshold != "auto":
        return
    wet_day = dry.get("wet_day")
    require(
        isinstance(wet_day, int | float) and not isinstance(wet_day, bool) and wet_day > 0,
        f"dry.wet_day must be a positive number, got {wet_day!r}; e.g. dry.wet_day=1.0 (mm/day)",
    )
    require(
        int(cfg.get("devices", 1)) == 1
        or str(cfg.get("strategy")) == "ddp_spawn"
        or bool(dry.get("fit_store")),
        "dry.threshold=auto draws its fit split first, which strategy=ddp cannot re-launch; use "
        "strategy=ddp_spawn, devices=1, or the fitted number (dry.threshold=<value>)",
    )


def sampling_precision(cfg: DictConfig) -> str:
    """The networks' precision of a sampling config (``precision``; float32 when absent)."""
    return str(cfg.get("precision", "32-true"))


def check_options(cfg: DictConfig) -> SamplerRun | None:
    """Check the sampling options that need no checkpoint; return the sampler they build."""
    for key in ("n_members", "block_size", "batch_size", "devices"):
        value = cfg.get(key, 1)
        require(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"{key} must be an integer >= 1, got {value!r}; set {key}=1 or more",
        )
    reference = cfg.get("schedule_sigma_data")
    require(
        reference is None
        or (
            isinstance(reference, int | float) and not isinstance(reference, bool) and reference > 0
        ),
        f"schedule_sigma_data must be a positive number or null, got {reference!r}; "
        "e.g. schedule_sigma_data=0.5 (EDM's schedules) or null (the schedule as written)",
    )
    conserve = cfg.get("conserve")
    require(
        conserve is None or conserve in METHODS,
        f"conserve={conserve} is unknown; use one of {', '.join(METHODS)} or null",
    )
    check_dry_options(cfg)
    check_precision(sampling_precision(cfg), resolve_device(str(cfg.get("device", "auto"))))
    return build_sampler(cfg)  # unknown arguments, steps < 1, sigma_min >= sigma_max, tiling


def prepare(cfg: DictConfig) -> SampleJob:
    """Load the checkpoint, build the data, the sampler and the request; check the user's options."""
    sampler = check_options(cfg)
    ckpt_path = find_checkpoint(cfg.get("run_dir"), cfg.get("ckpt"))
    checkpoint = load_checkpoint(ckpt_path)
    model = load_model(checkpoint, ckpt_path)
    if cfg.get("residual_mean"):
        require(
            hasattr(model, "conditional_mean"),
            f"residual_mean=true draws a residual model's regression stage, but {ckpt_path} holds "
            f"a {type(model).__name__}; pass a model=residual checkpoint or drop residual_mean",
        )
        model = model.conditional_mean()
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
    if not getattr(model, "needs_sampler", True):  # regression, GAN: only tiling= applies
        sampler = OneShotRun(sampler.wrap) if sampler is not None and sampler.wrap else None
    stepped = isinstance(sampler, SamplerRun)
    schedule_scale = 1.0
    if stepped:
        sampler, schedule_scale = scale_schedule(sampler, model, cfg)
    conserve = cfg.get("conserve")
    precision = sampling_precision(cfg)
    dry = dry_threshold(cfg, datamodule.targets)
    constraint = chain(
        [dry, Conservation(datamodule.ds, datamodule.targets, conserve) if conserve else None]
    )
    request = SampleRequest(
        out=Path(cfg.out),
        times=datamodule.split_indices[cfg.split],
        n_members=n_members,
        seed=int(cfg.seed),
        block_size=int(cfg.block_size),
        attrs={
            "checkpoint": str(ckpt_path),
            "checkpoint_sha256": file_sha256(ckpt_path),
            "sampler": json.dumps(to_plain(cfg.sampler)) if stepped else "none",
            "schedule": json.dumps(to_plain(cfg.schedule)) if stepped else "none",
            # only when scaled: stores of the schedule as written keep their request key
            **({"schedule_scale": schedule_scale} if schedule_scale != 1.0 else {}),
            # only when set: unconstrained stores keep their request key
            **({"conserve": conserve} if conserve else {}),
            # only when set: untiled stores keep their request key
            **({"tiling": tiling_record(cfg.tiling)} if cfg.get("tiling") else {}),
            **({"dry": json.dumps(dry_record(cfg, dry))} if dry else {}),
            # only when mixed: float32 stores keep their request key
            **({"precision": precision} if precision != "32-true" else {}),
            "seed": int(cfg.seed),
            "split": str(cfg.split),
            "obs_store": datamodule.store,
            # training days (indices into the store's time axis) for the analog baseline
            "train_time_index": [int(i) for i in datamodule.split_indices.get("train", ())],
            "model": type(model).__name__,
        },
    )
    return SampleJob(ckpt_path, model, datamodule, sampler, request, constraint)


def tiling_record(tiling: DictConfig) -> dict[str, Any]:
    """The tiling options that shape the draws; ``max_batch`` only chunks the work, so a run
    resumed with a lower one (after running out of memory) keeps its request key."""
    return {k: v for k, v in to_plain(tiling).items() if k != "max_batch"}


def dry_threshold(cfg: DictConfig, targets: Sequence[str]) -> DryThreshold | None:
    """The drizzle correction of ``dry.threshold`` (a number by now), for ``dry.variables``
    (default: every predictand)."""
    dry = cfg.get("dry") or {}
    if dry.get("threshold") is None:
        return None
    require(
        dry.threshold != "auto", "dry.threshold=auto must be fitted before sampling (sample.run)"
    )
    variables = list(dry.get("variables") or targets)
    unknown = sorted(set(variables) - set(targets))
    require(
        not unknown,
        f"dry.variables names {', '.join(unknown)}, not a predictand of this model; use some of "
        f"{', '.join(targets)}",
    )
    return DryThreshold(float(dry.threshold), variables)


def dry_record(cfg: DictConfig, dry: DryThreshold) -> dict[str, Any]:
    """What the samples store records of the drizzle correction (and of its fit, when auto)."""
    return {
        "threshold": dry.threshold,
        "variables": list(dry.variables),
        **to_plain(cfg.dry.get("fit") or {}),
    }


def fit_dry(cfg: DictConfig) -> tuple[DictConfig, float]:
    """``cfg`` with ``dry.threshold=auto`` replaced by the fitted value: the same model and
    sampler draw ``dry.fit_split`` (next to ``out``, resumable, no conservation), or
    ``dry.fit_store`` names such a draw made before, and the threshold is the value the members
    exceed as often as the observations reach ``dry.wet_day``. Also returns the seconds the fit
    draw took (0 when it was drawn before)."""
    fit_cfg = copy.deepcopy(cfg)
    out = Path(cfg.out)
    split, wet_day = str(cfg.dry.fit_split), float(cfg.dry.wet_day)
    overrides = {
        "split": split,
        "out": str(out.with_name(f"{out.stem}_dry_fit_{split}{out.suffix}")),
        "conserve": None,
        "dry": {"threshold": None, "fit_store": None},
    }
    for key, value in overrides.items():
        OmegaConf.update(fit_cfg, key, value, merge=True, force_add=True)
    job = prepare(fit_cfg)
    variables = list(cfg.dry.get("variables") or job.datamodule.targets)
    require(
        len(variables) == 1 and variables[0] in job.datamodule.targets,
        f"dry.threshold=auto fits one predictand of {', '.join(job.datamodule.targets)}, got "
        f"{', '.join(variables)}; name it, e.g. dry.variables=[precip]",
    )
    fit_store = cfg.dry.get("fit_store")
    if fit_store:
        drawn = {"path": check_fit_store(Path(fit_store), job.request), "seconds": 0.0}
    else:
        drawn = draw(fit_cfg, job)
    samples = xr.open_zarr(drawn["path"], consolidated=False)
    name = variables[0]
    obs = job.datamodule.ds[name].isel(time=samples["time_index"].values)
    threshold, frequency = fit_dry_threshold(samples[name].values, obs.values, wet_day)
    print(
        f"dry.threshold=auto: {threshold:.4g} (members of {split} exceed it as often as the "
        f"observations reach {wet_day:g}: {frequency:.3f} of valid cells)"
    )
    fitted = copy.deepcopy(cfg)
    OmegaConf.update(fitted, "dry.threshold", threshold, force_add=True)
    OmegaConf.update(fitted, "dry.fit_store", None, force_add=True)  # recorded in dry.fit
    record = {"fit_split": split, "wet_day": wet_day, "obs_wet_frequency": round(frequency, 6)}
    if fit_store:
        record.update(
            fit_store=str(fit_store),
            fit_members=int(samples.sizes["member"]),
            fit_seed=int(samples.attrs["seed"]),
        )
    OmegaConf.update(fitted, "dry.fit", record, force_add=True)
    return fitted, float(drawn["seconds"])


# the attributes of a samples store that fix the distribution of its members (seed and member
# count may differ: a threshold is a property of the model and sampler, not of one draw's noise)
_DISTRIBUTION_ATTRS = (
    "checkpoint_sha256",
    "model",
    "sampler",
    "schedule",
    "schedule_scale",
    "precision",
    "conserve",
    "tiling",
    "dry",
    "split",
    "obs_store",
)


def check_fit_store(path: Path, request: SampleRequest) -> Path:
    """``path`` when it is a finished draw of ``request``'s days with the same
    ``_DISTRIBUTION_ATTRS`` (checkpoint, sampler, schedule, tiling, ..., unconstrained) for
    ``dry.fit_store``, e.g. the validation draw ``downscale.select`` made of the checkpoint it
    chose; a user error naming the mismatch if not."""
    require(
        path.is_dir(),
        f"dry.fit_store={path} does not exist; give a finished samples store of the fit split "
        "(e.g. <select output>/draws/<label>/samples.zarr) or drop dry.fit_store to draw one",
    )
    try:
        stored = xr.open_zarr(path, consolidated=False)
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for "not a store"
        raise UserError(
            f"dry.fit_store={path} is not a samples store ({type(exc).__name__}); give "
            "<select output>/draws/<label>/samples.zarr or drop dry.fit_store"
        ) from exc
    wanted = store_attrs(request.attrs)
    differ = [key for key in _DISTRIBUTION_ATTRS if stored.attrs.get(key) != wanted.get(key)]
    require(
        not differ,
        f"dry.fit_store={path} differs from this fit in {', '.join(differ)} (it needs the same "
        "checkpoint, sampler, schedule and split, unconstrained); drop dry.fit_store to draw the "
        "fit split",
    )
    require(
        np.array_equal(stored["time_index"].values, request.times),
        f"dry.fit_store={path} does not hold every day of the {request.attrs['split']} split; "
        "drop dry.fit_store to draw it",
    )
    return path


def draw(cfg: DictConfig, job: SampleJob) -> dict[str, Any] | None:
    """Write the samples of ``job`` on ``cfg.devices`` processes; None on a rank > 0 of a
    script-launched (strategy=ddp) run."""
    devices = int(cfg.get("devices", 1))
    if devices > 1:
        return launch_ranks(cfg, devices)
    return write_job(job, cfg, resolve_device(cfg.device))


def write_job(
    job: SampleJob, cfg: DictConfig, device: torch.device, ranks: Ranks | None = None
) -> dict[str, Any]:
    """``write_samples`` for ``job`` with the config's batch size, on ``device`` (and ``ranks``)."""
    return write_samples(
        job.model,
        job.datamodule,
        job.sampler,
        job.request,
        batch_size=int(cfg.batch_size),
        device=device,
        ranks=ranks,
        constraint=job.constraint,
        precision=sampling_precision(cfg),
    )


@report_user_errors
def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample (and evaluate); returns the samples path, NFE, wall time and metrics if evaluated."""
    check_options(cfg)
    fit_seconds = None
    if (cfg.get("dry") or {}).get("threshold") == "auto":
        cfg, fit_seconds = fit_dry(cfg)
    job = prepare(cfg)
    result = draw(cfg, job)
    if result is None:  # a rank > 0 of a script-launched (strategy=ddp) run: rank 0 reports
        return {}
    if fit_seconds is not None:
        result["dry_fit_seconds"] = fit_seconds
    result["schedule_scale"] = job.request.attrs.get("schedule_scale", 1.0)
    print(f"samples: {result['path']} (NFE {result['nfe']}, {result['seconds']:.1f} s)")
    out_dir = Path(cfg.out).parent
    if cfg.get("evaluate"):
        from downscale.evaluate import evaluate_store

        result["metrics"] = evaluate_store(
            result["path"], job.datamodule.store, cfg.evaluation, out_dir, variable=None
        )
        result["metrics_path"] = out_dir / "metrics.json"
    write_job_summary(out_dir, sweep_row(cfg, result, job.request.n_members))
    return result


_USER_ERROR = "downscale-user-error: "


def launch_ranks(cfg: DictConfig, devices: int) -> dict[str, Any] | None:
    """Sample with ``devices`` processes through Lightning Fabric (``strategy``: ``ddp_spawn`` by
    default, or ``ddp``); ranks take disjoint time blocks of the one store. Returns rank 0's result
    (None on the other ranks of a script-launched run)."""
    from lightning.fabric import Fabric

    device = resolve_device(cfg.device)
    accelerator = "cuda" if device.type == "cuda" else "cpu"
    if accelerator == "cuda":
        require(
            devices <= torch.cuda.device_count(),
            f"devices={devices} but only {torch.cuda.device_count()} GPUs are visible; "
            f"use devices={torch.cuda.device_count()} or fewer",
        )
    strategy = str(cfg.get("strategy") or "ddp_spawn")
    fabric = Fabric(accelerator=accelerator, devices=devices, strategy=strategy)
    # resolved here: the spawned processes have no Hydra runtime to resolve ${hydra:...} against
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    try:
        result = fabric.launch(_sample_on_rank, plain)
    except Exception as exc:  # a rank's UserError arrives as a wrapped exception: show its line
        text = str(exc)
        if _USER_ERROR in text:
            raise UserError(text.split(_USER_ERROR, 1)[1].splitlines()[0]) from None
        raise
    return result if fabric.global_rank == 0 else None


def _sample_on_rank(fabric: Any, cfg: DictConfig) -> dict[str, Any]:
    """One rank's share of the sampling (the function Fabric runs in every process)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the parent process already warned
            job = prepare(cfg)
        return write_job(job, cfg, fabric.device, Ranks(fabric.global_rank, fabric.world_size))
    except UserError as exc:
        raise RuntimeError(_USER_ERROR + " ".join(str(exc).split())) from None


def sweep_row(cfg: DictConfig, result: dict[str, Any], n_members: int) -> dict[str, Any]:
    """Parameters, cost and headline metrics of this sampling run (one row of a sweep summary)."""
    row: dict[str, Any] = {
        "n_members": n_members,
        "nfe": result["nfe"],
        "seconds": result["seconds"],
        "blocks_computed": result["blocks_computed"],
        "device": result.get("device"),
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
        row["schedule.scale"] = result.get("schedule_scale", 1.0)
    row["conserve"] = cfg.get("conserve")
    row["precision"] = sampling_precision(cfg)
    row["dry.threshold"] = (cfg.get("dry") or {}).get("threshold")
    if "dry_fit_seconds" in result:
        row["dry_fit_seconds"] = result["dry_fit_seconds"]
    row.update(result.get("metrics") or {})
    return row


@hydra.main(version_base=None, config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run(cfg)


if __name__ == "__main__":
    run_cli("sample", main)
