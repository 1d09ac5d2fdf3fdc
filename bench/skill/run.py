"""Skill on real data (``make bench-skill`` / ``python -m bench.skill.run``).

Builds the stores from ``paths.data_root`` (reusing existing ones), trains every model of a suite
with its ``experiment=<name>`` config, samples the test split, scores models and baselines with one
scorecard (``conf/evaluation/skill.yaml``) on the same test days and valid cells, and writes
``docs/results.md`` and ``bench/results/skill.json``. Outputs go below ``outputs/skill/``.

Stages (``--stage``): build, train, select, sample, evaluate, gcm, report (default: all, in this
order; select: the checkpoint choice of the rows that sample a chosen checkpoint);
``--suite iberia`` (``iberia_gpu``: the GPU settings) or ``--suite radar`` runs one suite;
``--only edm`` one method (``--only models`` / ``--only baselines``: all of those). Finished
steps are reused (checkpoints, samples stores, timing files); ``--force`` redoes the chosen ones.
The default runs the core rows (the issue's methods with our best settings); ``--ablations`` adds
the rows that show how they were found (REFERENCE's sigma_data 0.5, sigma_data 0.2, the validation
sweep of <= 10-NFE samplers). ``--out DIR`` puts everything in DIR instead of ``outputs/skill``.
``--jobs 2`` runs the steps of every suite as a graph of processes, two at a time with half the CPU's
torch threads each (:mod:`bench.skill.tasks`; what ``make bench-skill`` does; logs in
``OUT/logs/bench_<suite>.<step>.log``), then the report; with ``--only`` each suite is one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from bench.skill.tasks import Task, fork_server, run_tasks

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
OUT = REPO / "outputs" / "skill"
RESULTS_JSON = REPO / "bench" / "results" / "skill.json"
RESULTS_MD = REPO / "docs" / "results.md"
GCM_MEMBERS = 4
STAGES = ("build", "train", "select", "sample", "evaluate", "gcm", "report")
ABLATIONS = False  # --ablations


@dataclass(frozen=True)
class Sampling:
    """One way of drawing a model's ensemble (a row of the table)."""

    name: str
    model: str  # key of Suite.models
    overrides: tuple[str, ...] = ()
    n_members: int = 8
    # an ablation row (how we got to the core setting): run only with --ablations
    ablation: bool = False
    # the row whose store this row is derived from, without running the model (_derive_draws):
    # its first n_members members, conserved when the overrides add conserve=
    derived_from: str | None = None
    # rows whose stores this row pools (downscale.pool): the first n_members / len of each
    pooled_from: tuple[str, ...] = ()
    # "best": the lowest validation loss; "last": the end of training; "selected": the checkpoint
    # of the model's run whose validation draw scores the lowest CRPS (downscale.select with
    # Suite.checkpoint_choice)
    checkpoint: str = "best"


def _conserved(source: Sampling, method: str = "multiplicative") -> Sampling:
    """``source``'s draws with each coarse cell's mean set to the coarse field: derived from its
    store (``conserve_samples``, the same values as drawing again with ``conserve=<method>``)."""
    return dataclasses.replace(
        source,
        name=f"{source.name}, conserved",
        overrides=(*source.overrides, f"conserve={method}"),
        derived_from=source.name,
    )


def _pooled(
    name: str, sources: Sequence[Sampling], n_members: int, ablation: bool = True
) -> Sampling:
    """A multi-seed or multi-model ensemble: ``n_members / len(sources)`` members of each source's
    draws (downscale.pool; the sources are drawn with different sampling seeds)."""
    return Sampling(
        name,
        sources[0].model,
        n_members=n_members,
        ablation=ablation,
        pooled_from=tuple(s.name for s in sources),
    )


def _first_members(source: Sampling, name: str, n_members: int) -> Sampling:
    """The first ``n_members`` of ``source``'s draws: each member is seeded by (seed, day, member),
    so they are the draws of an ``n_members`` run (equal to 3e-4 mm/day, float32 batch-shape
    noise, on Iberia's residual EDM)."""
    return dataclasses.replace(source, name=name, n_members=n_members, derived_from=source.name)


@dataclass(frozen=True)
class Suite:
    """One experiment of the issue: a data set, its models, their samplings and the baselines."""

    name: str
    build: tuple[str, ...]  # build overrides (recipe + domain crop)
    store: str  # store file name below paths.data_dir
    models: dict[str, str]  # method -> experiment config
    samplings: tuple[Sampling, ...]
    baselines: dict[str, dict[str, Any]]  # name -> _target_ entry (baselines.py adapters)
    domain: str
    eval_overrides: tuple[str, ...] = ()
    # candidate fast samplers (<= 10 NFE), chosen by CRPS on the validation split
    fast_candidates: tuple[tuple[str, ...], ...] = ()
    fast_model: str | None = None  # the model of the validation sweep of <= 10-NFE samplers
    gcm_sampling: str | None = None  # the sampling applied to the GCM predictors
    gcm_build: tuple[str, ...] | None = None
    gcm_store: str | None = None
    anchors: dict[str, dict[str, float]] = field(default_factory=dict)
    train_overrides: tuple[str, ...] = ()  # appended to every model's training config
    split: str = "test"  # the split sampled and scored (the smoke test uses val)
    # where the anchors were measured, when not on this suite's domain, and a JSON of our own
    # measurement there (bench/skill/radar_full_check.py)
    anchor_domain: str | None = None
    anchor_check: str | None = None
    # a GPU suite (trainer=gpu configs) runs only when named: --suite <name>
    gpu: bool = False
    note: str = ""  # printed under the suite's table in docs/results.md
    # the sampling options of downscale.select for the rows with checkpoint="selected"
    checkpoint_choice: tuple[str, ...] = ()


_B = "downscale.evaluation.baselines"
# Iberia's improved EDMs sample with sigma_max scaled to their sigma_data (chosen on the validation
# winter: the residual EDM's spread/skill 0.82 -> 0.94 at equal CRPS; docs/sampling.md, "Schedules
# and sigma_data"); the radar EDM keeps the schedule as written (scaling cost it 3.6% CRPS)
_SCALED = "schedule_sigma_data=0.5"
# Iberia's baselines, shared by the CPU and GPU suites (same store, test days and scorecard)
# radar sampling: tiles of the 64 x 64 training patch (the middle block's attention over a whole
# 256 x 512 field would need a 34 GB matrix), and Iberia's best <= 10-NFE sampler. 8 px of overlap:
# 45 tiles a frame instead of 16 px's 55; the EDM draws took 13-20% less time at nearly the same
# scores (the residual EDM 0.613 free, 0.555 conserved, against 0.615 / 0.552; the regression stage
# 0.648 / 0.631 against 0.640 / 0.627; notes item 37). The ablation rows drawn before then (the
# REFERENCE EDM's, the 10-epoch EDM's dpm2_heun 20) keep 16 px
_TILES_64 = ("tiling=default", "tiling.tile=64", "tiling.overlap=8")
_TILES_64_OVERLAP_16 = ("tiling=default", "tiling.tile=64", "tiling.overlap=16")
_DPMPP_10 = ("sampler=dpmpp_2m", "sampler.steps=10")

# the regression UNet (experiment=radar_regression, 10 epochs, its best validation epoch),
# tiled like the EDM. The table's row again since the residual EDM left the core (notes item 41);
# drawn with 16 px of overlap before item 37
_RADAR_REGRESSION_ALONE = Sampling("regression UNet (64 px tiles)", "regression", _TILES_64, 1)
# the table's EDM until notes item 41: 10 epochs (280 steps), its best validation epoch
_RADAR_EDM = Sampling(
    "EDM sigma_data auto, dpmpp_2m 10 (10 NFE), 4 members",
    "edm_auto",
    (*_DPMPP_10, *_TILES_64),
    4,
    ablation=True,
)
# the EDM trained 30 epochs (experiment=radar_edm_long: the residual EDM's 840 steps), the table's
# EDM since notes item 41: its last epoch, 29. Its best validation epoch (19 in the bench's run, one
# thread: 560 steps, the residual EDM's denoiser steps after its 10 regression epochs) is an
# ablation: the denoising loss picked the worse checkpoint (notes item 40)
_RADAR_EDM_30_LAST = dataclasses.replace(
    _RADAR_EDM,
    name="EDM sigma_data auto, 30 epochs, last epoch (840 steps), dpmpp_2m 10 (10 NFE), 4 members",
    model="edm_auto_30",
    checkpoint="last",
    ablation=False,
)
_RADAR_EDM_30_BEST = dataclasses.replace(
    _RADAR_EDM_30_LAST,
    name="EDM sigma_data auto, 30 epochs, best validation epoch, dpmpp_2m 10 (10 NFE), 4 members",
    checkpoint="best",
    ablation=True,
)
# the dpm2_heun 20 for the table's EDM, 2 members, free and conserved, and the core row's
# first 2 members beside it
_RADAR_HEUN_30_DRAW = dataclasses.replace(
    _RADAR_EDM_30_LAST,
    name="EDM sigma_data auto, 30 epochs, last epoch (840 steps), dpm2_heun 20 (39 NFE), 2 members",
    overrides=("sampler=dpm2_heun", "sampler.steps=20", *_TILES_64),
    n_members=2,
    ablation=True,
)
_RADAR_DPMPP_30_2 = dataclasses.replace(
    _first_members(
        _RADAR_EDM_30_LAST,
        "EDM sigma_data auto, 30 epochs, last epoch (840 steps), dpmpp_2m 10 (10 NFE), 2 members",
        2,
    ),
    ablation=True,
)
_RADAR_HEUN_30 = (
    _RADAR_HEUN_30_DRAW,
    _RADAR_DPMPP_30_2,
    *(_conserved(s) for s in (_RADAR_HEUN_30_DRAW, _RADAR_DPMPP_30_2)),
)
# the table's model until notes item 41 (an ablation since: the EDM trained as long is as good or
# better on the crop, item 40); the regression mean is tiled like the residual's denoiser
_RADAR_RESIDUAL = Sampling(
    "residual EDM (CorrDiff), dpmpp_2m 10 (10 NFE), 4 members",
    "residual",
    (*_DPMPP_10, *_TILES_64),
    4,
    ablation=True,
)


def _regression_stage(
    source: Sampling, name: str, overrides: tuple[str, ...] = (), ablation: bool = False
) -> Sampling:
    """A regression UNet row: the regression stage of ``source``'s residual EDM, drawn alone from
    the checkpoint ``source`` samples (``residual_mean=true``). So a suite whose model is the
    residual EDM trains one regression, not two (notes item 36), and the row shows what the
    diffusion stage adds to that same mean (Mardani et al. 2024's comparison)."""
    return Sampling(
        name,
        source.model,
        ("residual_mean=true", *overrides),
        1,
        ablation=ablation,
        checkpoint=source.checkpoint,
    )


# the radar residual EDM's stage (radar_regression's setting: 10 epochs, its best validation epoch
# kept), in the residual EDM's tiles: the table's regression row while the residual EDM was its model
_RADAR_REGRESSION = _regression_stage(
    _RADAR_RESIDUAL,
    "regression UNet (the residual EDM's regression stage, 64 px tiles)",
    _TILES_64,
    ablation=True,
)
# one-shot like the regression, tiled like it; 8 members like RainFARM and the analogs
_RADAR_GAN = Sampling("GAN (64 px tiles), 8 members", "gan", _TILES_64, 8)

# the whole MRMS domain on a GPU (suite radar_gpu): tiles of the 128 x 128 training patch, 1024
# tiles per denoiser call (tiling's default is 16), every 8 x 8 block's mean set to the coarse
# field. 2 members: on one H100 they took 54 s for the 8 test frames (10 NFE, net=tiny),
# what a 15-minute lease left after training
_FULL_TILES = ("tiling=default", "tiling.max_batch=1024", "conserve=multiplicative")
_RADAR_FULL_RESIDUAL = Sampling(
    "residual EDM (CorrDiff), dpmpp_2m 10 (10 NFE), 2 members, conserved",
    "residual",
    (*_DPMPP_10, *_FULL_TILES),
    2,
)
# the issue's 8 members (like RainFARM's and the analogs' rows), and its dpm2_heun 20: drawn on a
# second lease from the first lease's checkpoint (on an H200: 191 s and 154 s for the 8 frames)
_RADAR_FULL_RESIDUAL_8 = dataclasses.replace(
    _RADAR_FULL_RESIDUAL,
    name="residual EDM (CorrDiff), dpmpp_2m 10 (10 NFE), 8 members, conserved",
    n_members=8,
)
_RADAR_FULL_RESIDUAL_LONG = dataclasses.replace(
    _RADAR_FULL_RESIDUAL_8,
    name="residual EDM (CorrDiff), 7 min of training, dpmpp_2m 10 (10 NFE), 8 members, conserved",
    model="residual_long",
    # the resumed run's end: its ModelCheckpoint remembers the first lease's best validation loss,
    # so a best.ckpt of its own exists only if a later validation beats that
    checkpoint="last",
)
_RADAR_FULL_HEUN = Sampling(
    "residual EDM (CorrDiff), dpm2_heun 20 (39 NFE), 2 members, conserved",
    "residual",
    ("sampler=dpm2_heun", "sampler.steps=20", *_FULL_TILES),
    2,
)
# the regression row on the whole domain: the same lease's regression stage (15 epochs, its
# best validation epoch kept), drawn alone (downscale.sample residual_mean=true). The lease left no
# time to train a separate regression UNet; one forward pass a tile, so it is drawn on the CPU, 64
# tiles a call
_RADAR_FULL_MEAN = Sampling(
    "regression UNet (the residual EDM's regression stage)",
    "residual",
    ("residual_mean=true", "tiling=default", "tiling.max_batch=64"),
    1,
)
# the other models on the whole domain, trained side by side on one card (the tiny net's
# steps are host-bound: docs/gpu.md, "Training-step speed"), 8 members like the residual EDM's row.
# The EDM is drawn conserved like the residual EDM (one row to score: the lease's call has room for
# it); the GAN free, its conserved row derived from the same draws (one forward pass a tile, cheap)
_FULL_TILES_FREE = tuple(o for o in _FULL_TILES if not o.startswith("conserve="))
_RADAR_FULL_EDM = Sampling(
    "EDM sigma_data auto, dpmpp_2m 10 (10 NFE), 8 members, conserved",
    "edm",
    (*_DPMPP_10, *_FULL_TILES),
    8,
)
_RADAR_FULL_GAN = Sampling("GAN (128 px tiles), 8 members", "gan", _FULL_TILES_FREE, 8)
# the dpm2_heun 20 for the EDM too, 2 members like the residual EDM's (8 at 39 NFE would take
# about 10 min of an H200, a whole device call): bench/skill/radar_gpu_lease.sh heun
_RADAR_FULL_EDM_HEUN = Sampling(
    "EDM sigma_data auto, dpm2_heun 20 (39 NFE), 2 members, conserved",
    "edm",
    ("sampler=dpm2_heun", "sampler.steps=20", *_FULL_TILES),
    2,
)
_RADAR_BASELINES: dict[str, dict[str, Any]] = {
    "nearest": {"_target_": f"{_B}.nearest_baseline"},
    "bicubic": {"_target_": f"{_B}.interpolation_baseline", "method": "cubic"},
    "analogs 8": {"_target_": f"{_B}.analog_baseline", "k": 8},
    "RainFARM 8": {"_target_": f"{_B}.rainfarm_baseline", "n_members": 8, "seed": 0},
    # no ridge row: a per-pixel regression on 28 frames two minutes apart extrapolates as the
    # storm moves (ensemble-mean MAE 0.66 -> 14.8 mm/h over the 8 test frames; CRPS 5.9)
}
_RADAR_EVAL = ("evaluation.metrics.fss.thresholds=[1.0]", "evaluation.metrics.fss.scales=[16]")
# measured on the whole 2048 x 4096 domain
_RADAR_ANCHORS = {
    "nearest": {"mae_ensmean": 0.092, "ralsd": 6.9},
    "bicubic": {"mae_ensmean": 0.098, "ralsd": 23.0},
    "RainFARM 8": {"crps": 0.080, "spread_skill": 1.02, "ralsd": 3.8},
}

_IBERIA_BASELINES: dict[str, dict[str, Any]] = {
    "bilinear NCEP pr": {
        "_target_": f"{_B}.interpolation_baseline",
        "method": "linear",
        "coarse": "pr",
    },
    "bicubic NCEP pr": {
        "_target_": f"{_B}.interpolation_baseline",
        "method": "cubic",
        "coarse": "pr",
    },
    "climatology 16 (same month)": {
        "_target_": "bench.skill.extra.climatology_baseline",
        "k": 16,
        "seed": 0,
    },
    "analogs 16 (psl, pr, hus850, ta850)": {
        "_target_": f"{_B}.analog_baseline",
        "k": 16,
        "predictors": ["coarse_psl", "coarse_pr", "coarse_hus850", "coarse_ta850"],
    },
    # the same with the next day's predictors too, as the learned models get them
    # (data.coarse_offsets: [0, 1] in conf/data/iberia.yaml)
    "analogs 16 (same + next day)": {
        "_target_": f"{_B}.analog_baseline",
        "k": 16,
        "predictors": ["coarse_psl", "coarse_pr", "coarse_hus850", "coarse_ta850"],
        "coarse_offsets": [0, 1],
    },
    "RainFARM 16 (NCEP pr)": {
        "_target_": f"{_B}.rainfarm_baseline",
        "n_members": 16,
        "seed": 0,
        "coarse": "pr",
    },
    # statistical downscaling (GCV ridge of sqrt(precip), heteroscedastic censored Gaussian), with
    # the learned models' predictors (every NCEP field, the day and the next)
    "ridge 16 (sqrt, all predictors, same + next day)": {
        "_target_": f"{_B}.ridge_baseline",
        "n_members": 16,
        "seed": 0,
        "coarse": "pr",
        "coarse_offsets": [0, 1],
    },
    "ridge 32 (sqrt, all predictors, same + next day)": {
        "_target_": f"{_B}.ridge_baseline",
        "n_members": 32,
        "seed": 0,
        "coarse": "pr",
        "coarse_offsets": [0, 1],
    },
}

_IBERIA_DOMAIN = (
    "E-OBS 0.5 deg Iberia, 19 x 29 cells (valid land cells only), test days 1997-12-01..2002-02-28 "
    "(DJF, 29 Feb dropped)"
)
_IBERIA_ANCHORS = {
    "bilinear NCEP pr": {"mae_ensmean": 1.35, "q99": 15.5, "q99_obs": 22.7},
    "climatology 16 (same month)": {"crps": 1.58},
    "analogs 16 (psl, pr, hus850, ta850)": {"crps": 0.92, "spread_skill": 1.05, "q99": 20.6},
}

# the drizzle correction, fitted on a draw of the validation winter (docs/sampling.md, "Drizzle")
_DRY = "dry.threshold=auto"
_RESIDUAL_SAMPLER = ("sampler=dpmpp_2m", "sampler.steps=10", _SCALED)


def _chosen(name: str, model: str, ablation: bool = False) -> Sampling:
    """32 members of a residual EDM from the checkpoint downscale.select picks (validation CRPS),
    with the drizzle correction."""
    return Sampling(
        name, model, (*_RESIDUAL_SAMPLER, _DRY), 32, ablation=ablation, checkpoint="selected"
    )


# one 100-epoch training of experiment=iberia_residual_sqrt (chosen over the log target on the
# validation winter; docs/models.md, "Choosing a checkpoint by its samples"): the table's core
# until the pool of two 60-epoch trainings below replaced it (notes item 24)
_IBERIA_RESIDUAL_32 = _chosen(
    "residual EDM, sqrt target, cross-fit 2, dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, "
    "dry threshold, 32 members",
    "residual_sqrt_cf",
    ablation=True,
)


def _reference_sampler(source: Sampling, name: str) -> Sampling:
    """``source``'s checkpoint with the issue's reference sampler (dpm2_heun, 20 steps) and the
    drizzle correction fitted on its own validation draw; 4 members: 39 NFE cost 4x the 10-NFE
    rows per member."""
    overrides = ("sampler=dpm2_heun", "sampler.steps=20", _SCALED, _DRY)
    return dataclasses.replace(source, name=name, overrides=overrides, n_members=4)


_IBERIA_RESIDUAL_39 = _reference_sampler(
    _IBERIA_RESIDUAL_32,
    "residual EDM, sqrt target, cross-fit 2, dpm2_heun 20 steps (39 NFE), val-CRPS checkpoint, "
    "dry threshold, 4 members",
)


class _PoolOfTwo(NamedTuple):
    first: Sampling  # 16 members of the seed-42 training
    rows: tuple[Sampling, ...]  # the pools, each training's draw, the dpm2_heun 20 row


def _pool_of_two(label: str, model: str, ablation: bool) -> _PoolOfTwo:
    """Two trainings of the square-root setting (``model`` with seed 42, ``model``_seed1), 16
    members of each pooled (one training is under-dispersed; the second is drawn with sampling
    seed 1 so that the halves do not share noise): the pools of 8 + 8 and 16 + 16 members, each
    training's 16, and the first's 4 members with the issue's dpm2_heun 20."""
    base = f"residual EDM, sqrt target, cross-fit 2, {label}"
    first = Sampling(
        f"{base}, dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, dry threshold, 16 members",
        model,
        (*_RESIDUAL_SAMPLER, _DRY),
        16,
        ablation=ablation,
        checkpoint="selected",
    )
    second = Sampling(
        f"{base}, seed 1, dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, dry threshold, sampling "
        "seed 1, 16 members",
        f"{model}_seed1",
        (*_RESIDUAL_SAMPLER, _DRY, "seed=1"),
        16,
        ablation=ablation,
        checkpoint="selected",
    )
    pools = tuple(
        _pooled(
            f"{base}, seeds 42 + 1 pooled ({m} + {m} members), dpmpp_2m 10 (10 NFE), val-CRPS "
            "checkpoints, dry threshold",
            (first, second),
            2 * m,
            ablation=ablation,
        )
        for m in (8, 16)
    )
    reference = _reference_sampler(
        first,
        f"{base}, dpm2_heun 20 steps (39 NFE), val-CRPS checkpoint, dry threshold, 4 members",
    )
    return _PoolOfTwo(first, (*pools, first, second, reference))


# the table's core (notes item 33): the first 62 epochs of two 100-epoch trainings, pooled
_IBERIA_CORE = _pool_of_two("62 of 100 epochs", "residual_sqrt_62", ablation=False)
# its seed-42 training's regression stage: the mean of its two cross-fitted folds
_IBERIA_CORE_MEAN = _regression_stage(
    _IBERIA_CORE.first,
    "regression UNet (the regression stage of the residual EDM, sqrt target, cross-fit 2, 62 of "
    "100 epochs)",
)
# the core before (notes item 24): two trainings of 60 epochs (a cosine schedule ending at 60)
_IBERIA_60_POOL = _pool_of_two("60 epochs", "residual_sqrt_60", ablation=True)


def _sqrt_40(seed: int) -> Sampling:
    """11 members of a 40-epoch training of the square-root setting (15 regression epochs, about
    where the regression's validation stops improving, then 25 of the residual), drawn with
    sampling seed 0, 1 or 2."""
    model, label, sampling_seed = {
        42: ("", "", 0),
        1: ("_seed1", " seed 1,", 1),
        2: ("_seed2", " seed 2,", 2),
    }[seed]
    reseed = f" sampling seed {sampling_seed}," if sampling_seed else ""
    return Sampling(
        f"residual EDM, sqrt target, cross-fit 2, 40 epochs,{label} dpmpp_2m 10 (10 NFE), val-CRPS "
        f"checkpoint, dry threshold,{reseed} 11 members",
        f"residual_sqrt_40{model}",
        (*_RESIDUAL_SAMPLER, _DRY, *((f"seed={sampling_seed}",) if sampling_seed else ())),
        11,
        ablation=True,
        checkpoint="selected",
    )


# the core's training budget spread over three seeds (notes item 26): 3 x 40 epochs, 11 members each
_IBERIA_40 = tuple(_sqrt_40(seed) for seed in (42, 1, 2))
_IBERIA_40_POOL = _pooled(
    "residual EDM, sqrt target, cross-fit 2, 40 epochs, seeds 42 + 1 + 2 pooled (11 + 11 + 11 "
    "members), dpmpp_2m 10 (10 NFE), val-CRPS checkpoints, dry threshold",
    _IBERIA_40,
    33,
)
# the log target (experiment=iberia_residual), the same way; and as first run: the lowest
# validation loss's checkpoint, no drizzle correction
_IBERIA_LOG_32 = _chosen(
    "residual EDM (CorrDiff), dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, dry threshold, 32 members",
    "residual",
    ablation=True,
)
# deep ensembles of 100-epoch trainings (notes item 23): 16 members of the row above with 16 of a
# second training, drawn with sampling seed 1 so that the two halves do not share noise
_IBERIA_SQRT_SEED1_32 = _chosen(
    "residual EDM, sqrt target, cross-fit 2, seed 1, dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, "
    "dry threshold, 32 members",
    "residual_sqrt_cf_seed1",
    ablation=True,
)


def _reseeded(source: Sampling, name: str) -> Sampling:
    """16 members of ``source`` drawn with sampling seed 1 (a pool's second half)."""
    return dataclasses.replace(
        source, name=name, overrides=(*source.overrides, "seed=1"), n_members=16
    )


_IBERIA_SQRT_SEED1_S1 = _reseeded(
    _IBERIA_SQRT_SEED1_32,
    "residual EDM, sqrt target, cross-fit 2, seed 1, dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, "
    "dry threshold, sampling seed 1, 16 members",
)
_IBERIA_LOG_S1 = _reseeded(
    _IBERIA_LOG_32,
    "residual EDM (CorrDiff), dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, dry threshold, sampling "
    "seed 1, 16 members",
)
_IBERIA_POOLS = (
    _IBERIA_SQRT_SEED1_S1,
    _pooled(
        "residual EDM, sqrt target, cross-fit 2, seeds 42 + 1 pooled (16 + 16 members), "
        "val-CRPS checkpoints, dry threshold",
        (_IBERIA_RESIDUAL_32, _IBERIA_SQRT_SEED1_S1),
        32,
    ),
    _IBERIA_LOG_S1,
    _pooled(
        "residual EDM, sqrt + log targets pooled (16 + 16 members), val-CRPS checkpoints, "
        "dry threshold",
        (_IBERIA_RESIDUAL_32, _IBERIA_LOG_S1),
        32,
    ),
)
_IBERIA_RESIDUAL_RAW_32 = Sampling(
    "residual EDM (CorrDiff), dpmpp_2m 10 (10 NFE), 32 members",
    "residual",
    _RESIDUAL_SAMPLER,
    32,
    ablation=True,
)

# the 100-epoch cosine schedule of experiment=iberia_residual_sqrt, stopped after its epoch 61: every
# checkpoint that downscale.select picked from the 100-epoch runs is in them (notes item 33)
_FIRST_62 = "trainer.max_epochs=62 scheduler.horizon_epochs=100"

# how the iberia_gpu rows were trained (one 15-minute GPU lease; see the suite)
_LEASE = "model.regression_keep_best=false +trainer.max_time=00:00:05:10"
# the radar_gpu model's share of its 15-minute lease (the rest: start, sampling, scoring), without
# the sample panels (each a 512 x 512 sampling run)
_RADAR_LEASE = "+trainer.max_time=00:00:03:30 ~callbacks.sample_panels"
# the whole-domain EDM's and GAN's: trained side by side on one card, and shorter, so that training,
# the two 8-member draws and their scoring fit one device call (bench/skill/radar_gpu_lease.sh)
_RADAR_LEASE_SHARED = "+trainer.max_time=00:00:03:00 ~callbacks.sample_panels"
# the residual EDM trained twice as long: the first lease's run resumed to 7 min in all, which leaves
# room in one device call for the 8-member draw (bench/skill/radar_gpu_lease.sh long; on the crop,
# 2x the steps calibrated the conserved ensemble: notes items 32 and 35)
_RADAR_LEASE_LONG = "+trainer.max_time=00:00:07:00 ~callbacks.sample_panels"

_FAST = (
    ("sampler=dpmpp_2m", "sampler.steps=10"),
    ("sampler=heun", "sampler.steps=5"),
    ("sampler=dpm2_heun", "sampler.steps=5"),
    ("sampler=dpm2_heun", "sampler.steps=5", "sampler.s_churn=0"),  # churn ablation
)

SUITES: dict[str, Suite] = {
    "iberia": Suite(
        name="iberia",
        build=("build=iberia",),
        store="iberia.zarr",
        models={
            "regression": "iberia_regression",
            "gan": "iberia_gan",
            "edm": "iberia_edm_ref",  # sigma_data 0.5 (REFERENCE)
            "edm_sd": "iberia_edm_sd",
            "edm_long": "iberia_edm_long",
            "residual": "iberia_residual",
            # square-root target, cross-fitted mean (notes items 19-22)
            "residual_sqrt_cf": "iberia_residual_sqrt",
            "residual_sqrt_cf_seed1": "iberia_residual_sqrt seed=1",
            "residual_seed1": "iberia_residual seed=1",  # notes item 20: the core setting's seeds
            # the core until notes item 33: two trainings of 60 epochs, pooled (item 24)
            "residual_sqrt_60": "iberia_residual_sqrt trainer.max_epochs=60",
            "residual_sqrt_60_seed1": "iberia_residual_sqrt trainer.max_epochs=60 seed=1",
            # the first 62 epochs of the 100-epoch runs above (notes item 33)
            "residual_sqrt_62": f"iberia_residual_sqrt {_FIRST_62}",
            "residual_sqrt_62_seed1": f"iberia_residual_sqrt {_FIRST_62} seed=1",
            # the same budget over three seeds (notes item 26)
            **{
                f"residual_sqrt_40{suffix}": "iberia_residual_sqrt trainer.max_epochs=40 "
                f"model.regression_epochs=15{seed}"
                for suffix, seed in (("", ""), ("_seed1", " seed=1"), ("_seed2", " seed=2"))
            },
        },
        samplings=(
            _IBERIA_CORE_MEAN,
            # the regression UNet trained on its own (experiment=iberia_regression: the log
            # target, all training days), the table's row until the core's stage replaced it
            Sampling("regression UNet", "regression", (), 1, ablation=True),
            Sampling("GAN", "gan", (), 8),  # needs no sampler
            # 2 members: 450 days x 39 NFE is what 2 shared CPU cores allow (the fast sampler
            # below also runs with 2 members for a like-for-like sampler comparison)
            Sampling(
                "EDM dpm2_heun 20 steps, 2 members",
                "edm",
                ("sampler=dpm2_heun", "sampler.steps=20"),
                2,
                ablation=True,
            ),
            # the schedule's sigma_min at REFERENCE's 0.02 (the lower end of the trained noise range)
            Sampling(
                "EDM dpmpp_2m 10, sigma_min 0.02 (10 NFE)",
                "edm",
                ("sampler=dpmpp_2m", "sampler.steps=10", "schedule.sigma_min=0.02"),
                ablation=True,
            ),
            Sampling(
                "EDM sigma_data 0.2, dpmpp_2m 10 (10 NFE), 2 members",
                "edm_sd",
                ("sampler=dpmpp_2m", "sampler.steps=10"),
                2,
                ablation=True,
            ),
            Sampling(
                "EDM sigma_data 0.2, dpmpp_2m 10 (10 NFE)",
                "edm_sd",
                ("sampler=dpmpp_2m", "sampler.steps=10"),
                ablation=True,
            ),
            Sampling(
                "EDM sigma_data 0.2, dpmpp_2m 10, sigma_min 0.02 (10 NFE)",
                "edm_sd",
                ("sampler=dpmpp_2m", "sampler.steps=10", "schedule.sigma_min=0.02"),
                ablation=True,
            ),
            # the plain EDM's improved setting (iberia_edm_long), 16 members like the analogs and
            # RainFARM; an ablation since the residual EDM beat it (the table's EDM rows are the
            # residual EDM's: training both cost the 60-minute budget 15 min)
            Sampling(
                "EDM long, dpmpp_2m 10 (10 NFE), 16 members",
                "edm_long",
                ("sampler=dpmpp_2m", "sampler.steps=10", _SCALED),
                16,
                ablation=True,
            ),
            *_IBERIA_CORE.rows,
            *_IBERIA_60_POOL.rows,
            *_IBERIA_40,
            _IBERIA_40_POOL,
            # the ensemble CRPS estimator favours larger ensembles (its excess over the limit is
            # about E|X - X'| / 2M): the 16-member row compares like for like with the baselines
            _first_members(
                _IBERIA_RESIDUAL_32,
                "residual EDM, sqrt target, cross-fit 2, dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, "
                "dry threshold, 16 members",
                16,
            ),
            _IBERIA_RESIDUAL_32,
            # the log target chosen the same way; then as first run, and one change at a time
            _first_members(
                _IBERIA_LOG_32,
                "residual EDM (CorrDiff), dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, dry threshold, "
                "16 members",
                16,
            ),
            _IBERIA_LOG_32,
            _first_members(
                _IBERIA_RESIDUAL_RAW_32,
                "residual EDM (CorrDiff), dpmpp_2m 10 (10 NFE), 16 members",
                16,
            ),
            _IBERIA_RESIDUAL_RAW_32,
            *(
                dataclasses.replace(
                    _IBERIA_RESIDUAL_RAW_32,
                    name=f"residual EDM (CorrDiff), dpmpp_2m 10 (10 NFE), {label}, 32 members",
                    overrides=(*_IBERIA_RESIDUAL_RAW_32.overrides, *dry),
                    checkpoint=checkpoint,
                )
                for label, dry, checkpoint in (
                    ("dry threshold", (_DRY,), "best"),
                    ("val-CRPS checkpoint", (), "selected"),
                )
            ),
            *(
                Sampling(
                    f"residual EDM, sqrt target, cross-fit 2, dpmpp_2m 10 (10 NFE), {m} members",
                    "residual_sqrt_cf",
                    _RESIDUAL_SAMPLER,
                    m,
                    ablation=True,
                )
                for m in (16, 32)
            ),
            # second seeds (notes items 20 and 22), as first run and chosen like the table's rows
            Sampling(
                "residual EDM (CorrDiff), seed 1, dpmpp_2m 10 (10 NFE), 32 members",
                "residual_seed1",
                _RESIDUAL_SAMPLER,
                32,
                ablation=True,
            ),
            _chosen(
                "residual EDM (CorrDiff), seed 1, dpmpp_2m 10 (10 NFE), val-CRPS checkpoint, "
                "dry threshold, 32 members",
                "residual_seed1",
                ablation=True,
            ),
            Sampling(
                "residual EDM, sqrt target, cross-fit 2, seed 1, dpmpp_2m 10 (10 NFE), 32 members",
                "residual_sqrt_cf_seed1",
                _RESIDUAL_SAMPLER,
                32,
                ablation=True,
            ),
            _IBERIA_SQRT_SEED1_32,
            *_IBERIA_POOLS,
            Sampling(
                "EDM long, dpm2_heun 20 steps (39 NFE), 4 members",
                "edm_long",
                ("sampler=dpm2_heun", "sampler.steps=20", _SCALED),
                4,
                ablation=True,
            ),
            _IBERIA_RESIDUAL_39,
        ),
        baselines=_IBERIA_BASELINES,
        domain=_IBERIA_DOMAIN,
        fast_candidates=_FAST,
        fast_model="edm",
        gcm_sampling=_IBERIA_CORE.first.name,
        gcm_build=("build=iberia_gcm",),
        gcm_store="iberia_gcm.zarr",
        anchors=_IBERIA_ANCHORS,
        # 8 members of the validation winter per checkpoint, the rows' sampler
        checkpoint_choice=("sampler=dpmpp_2m", "sampler.steps=10", _SCALED, "n_members=8"),
        note="Pooled rows (`downscale.pool`) hold the first members of two draws of different "
        "trainings, the second drawn with sampling seed 1; their `train s` is both trainings'. "
        "Each residual EDM's other 16-member rows are the first 16 members of its 32-member draw "
        "(members are seeded by seed, day and member, so they are the draws of a 16-member run, "
        "to 3e-4 mm/day). Rows marked val-CRPS checkpoint sample the checkpoint `downscale.select` "
        "picked by the CRPS of 8 members on the validation winter (its time is in `train s`); "
        "dry threshold: `dry.threshold=auto`, fitted on a validation draw: for the rows drawn "
        "with select's sampler, the 8-member draw `downscale.select` made of the chosen checkpoint "
        "(`dry.fit_store`; its time is in `train s`; rows drawn before notes item 38 drew their "
        "own), otherwise the row's own draw (its time is in the sampling time).",
    ),
    # The GPU settings of the residual EDM on the same data, test days and scorecard: a bigger net
    # (net=small, two learning rates) and the CPU net trained 4x longer. Every setting is reported
    # on the test winters; none was picked by its test score. As run on one H200 lease (commit
    # 70021bd): before model.regression_keep_best existed (so =false) and stopped by the lease's
    # max_time (bench/skill/notes.md, "GPU runs")
    "iberia_gpu": Suite(
        name="iberia_gpu",
        build=("build=iberia",),
        store="iberia.zarr",
        models={
            "residual_small": f"iberia_residual_gpu {_LEASE}",
            "residual_small_lr2e-4": f"iberia_residual_gpu optimizer.lr=2e-4 {_LEASE}",
            "residual_tiny": f"iberia_residual_gpu_tiny {_LEASE}",
            # the CPU setting (iberia_residual) on the GPU: bf16-mixed, otherwise unchanged
            "residual_cpu_setting": "iberia_residual trainer=gpu model.regression_keep_best=false "
            "+trainer.max_time=00:00:03:00",
        },
        samplings=(
            Sampling(
                "residual EDM CPU setting (net=tiny) on the GPU, dpmpp_2m 10 (10 NFE), 16 members",
                "residual_cpu_setting",
                ("sampler=dpmpp_2m", "sampler.steps=10", _SCALED),
                16,
            ),
            *(
                Sampling(
                    f"residual EDM {label}, dpmpp_2m 10 (10 NFE), {members} members",
                    model,
                    ("sampler=dpmpp_2m", "sampler.steps=10", _SCALED),
                    members,
                )
                for members in (16, 32)
                for model, label in (
                    ("residual_small", "net=small"),
                    ("residual_small_lr2e-4", "net=small lr 2e-4"),
                    ("residual_tiny", "net=tiny x4 epochs"),
                )
            ),
        ),
        baselines=_IBERIA_BASELINES,
        domain=_IBERIA_DOMAIN,
        anchors=_IBERIA_ANCHORS,
        gpu=True,
        note="Trained on one 15-minute lease of an NVIDIA H200, before `model.regression_keep_best` "
        "existed (so `false`: the residual stage took the regression's last epoch). The lease's "
        "`trainer.max_time` stopped every run early: net=small at epoch 121 of 300, net=tiny x4 "
        "at 145 of 400, the CPU setting at 85 of 100. See the notes, items 14-15, and docs/gpu.md.",
    ),
    "radar": Suite(
        name="radar",
        build=(
            "build=radar_mrms",
            "build.name=radar_mrms_crop",
            "build.domain.box={lon: [-102.32, -97.20], lat: [29.28, 31.84]}",
        ),
        store="radar_mrms_crop.zarr",
        # CPU bench: EDM with iberia's best <= 10-NFE sampler, 4 members (a 256 x 512
        # field evaluation costs ~1.6 s here); the 39-NFE sampler is the GPU setting
        models={
            "edm": "radar_edm_ref",  # sigma_data 0.5 (REFERENCE), as recorded
            "edm_auto": "radar_edm",  # sigma_data measured from the data, 10 epochs
            "edm_auto_30": "radar_edm_long",  # 30 epochs: the residual EDM's steps
            "regression": "radar_regression",
            "residual": "radar_residual",
            "gan": "radar_gan",
        },
        samplings=(
            # every model in tiles (_TILES_64), the regression UNet too
            _RADAR_REGRESSION_ALONE,
            _RADAR_EDM_30_LAST,
            _RADAR_GAN,
            # the same draws with each 8 x 8 block's mean set to the coarse field (the predictor is
            # the target's block mean; docs/sampling.md, "Conservation")
            *(_conserved(s) for s in (_RADAR_REGRESSION_ALONE, _RADAR_EDM_30_LAST, _RADAR_GAN)),
            # the 20-step dpm2_heun: 4x the NFE of the core row, so 2 members and an
            # ablation row (about 7 min of sampling: it would take the CPU bench past 60 min), and
            # like for like with it, the core row's first 2 members
            *_RADAR_HEUN_30,
            _RADAR_EDM_30_BEST,
            _conserved(_RADAR_EDM_30_BEST),
            # the table's models until notes item 41: the residual EDM, its regression stage and the
            # 10-epoch EDM
            _RADAR_RESIDUAL,
            _RADAR_REGRESSION,
            _RADAR_EDM,
            *(_conserved(s) for s in (_RADAR_RESIDUAL, _RADAR_REGRESSION, _RADAR_EDM)),
            Sampling(
                "EDM dpmpp_2m 10 (10 NFE), 2 members",
                "edm",
                (*_DPMPP_10, *_TILES_64_OVERLAP_16),
                2,
                ablation=True,
            ),
            # the 10-epoch EDM with the 20-step dpm2_heun (16 px of overlap), and like for
            # like with it, the first 2 members of its 4-member row
            Sampling(
                "EDM sigma_data auto, dpm2_heun 20 steps (39 NFE), 2 members",
                "edm_auto",
                ("sampler=dpm2_heun", "sampler.steps=20", *_TILES_64_OVERLAP_16),
                2,
                ablation=True,
            ),
            dataclasses.replace(
                _first_members(
                    _RADAR_EDM, "EDM sigma_data auto, dpmpp_2m 10 (10 NFE), 2 members", 2
                ),
                ablation=True,
            ),
        ),
        baselines=_RADAR_BASELINES,
        domain="MRMS 0.01 deg, CPU crop: the rainiest 256 x 512 block of the test frames (lat "
        "29.28-31.84, lon -102.32 to -97.20; rows 0-255, cols 1152-1663 of the shared 2048 x 4096 "
        "domain), predictor its x8 conservative coarse-graining (32 x 64); test = last 8 frames "
        "(00:56-01:10)",
        eval_overrides=_RADAR_EVAL,
        note="The `, conserved` rows are their free rows' draws with each 8 x 8 block's mean set to "
        "the coarse field after the fact (`conserve_samples`, docs/sampling.md): the values the "
        "`conserve=multiplicative` commands below draw, without running the model again; their "
        "sampling time is the free draw's plus the constraint's.",
        anchor_domain="the whole 2048 x 4096 domain (not the crop: the crop's column is not comparable)",
        anchor_check="radar_full/anchors_check.json",
        anchors=_RADAR_ANCHORS,
    ),
    # the radar task on the whole domain: a GPU suite (runs only when named). The crop's
    # residual EDM, EDM and GAN on the tiny net, stopped by trainer.max_time; the residual EDM's
    # training and three draws took two 15-minute leases, the EDM's and GAN's one device call
    # (bench/skill/radar_gpu_lease.sh); the baselines are CPU work (--only baselines)
    "radar_gpu": Suite(
        name="radar_gpu",
        build=("build=radar_mrms",),
        store="radar_mrms.zarr",
        models={
            "residual": f"radar_mrms_residual {_RADAR_LEASE}",
            "edm": f"radar_mrms_edm {_RADAR_LEASE_SHARED}",
            "gan": f"radar_mrms_gan {_RADAR_LEASE_SHARED}",
            "residual_long": f"radar_mrms_residual {_RADAR_LEASE_LONG}",
        },
        samplings=(
            _RADAR_FULL_RESIDUAL,
            _RADAR_FULL_RESIDUAL_8,
            _RADAR_FULL_HEUN,
            _RADAR_FULL_MEAN,
            _conserved(_RADAR_FULL_MEAN),
            _RADAR_FULL_EDM,
            _RADAR_FULL_EDM_HEUN,
            _RADAR_FULL_GAN,
            _conserved(_RADAR_FULL_GAN),
            _RADAR_FULL_RESIDUAL_LONG,
        ),
        baselines={
            **_RADAR_BASELINES,
            # like for like with the 2-member model row (a 2-member CRPS is biased high)
            "RainFARM 2": {"_target_": f"{_B}.rainfarm_baseline", "n_members": 2, "seed": 0},
        },
        domain="MRMS 0.01 deg, the whole shared 2048 x 4096 domain (cell centres lat 29.29-49.76, "
        "lon -113.84 to -72.89), predictor its x8 conservative coarse-graining (256 x 512); test = "
        "last 8 frames (00:56-01:10); scores over the cells the radar covers (98.9%)",
        # the whole domain's 8 frames score in parallel (one dask chunk per frame); no figures:
        # the table does not use them, and a lease's minutes go to sampling
        eval_overrides=(*_RADAR_EVAL, "evaluation.chunks.time=1", "~evaluation.figures"),
        anchors=_RADAR_ANCHORS,
        gpu=True,
        note="The model comes from one 15-minute lease of an NVIDIA H100 (the working tree of "
        "`669d19e` with this suite). Its training stopped at the lease's `trainer.max_time` after "
        "58 epochs (3226 steps: 15 regression epochs, then 43 of the residual EDM). Its 2-member "
        "dpmpp_2m row was drawn on that H100 with the attention and tiling fixes of `664a240` and "
        "`41900be`; the 8-member and dpm2_heun 20 rows were drawn from the same checkpoint on a "
        "second lease, of an NVIDIA H200 (`248dbc2`). Each was scored on its GPU machine by the "
        "bench's evaluate stage with this scorecard. The regression rows are the model's "
        "regression stage alone (`residual_mean=true`), drawn and scored on the CPU like the "
        "baselines, from the same store. See the notes, items 25, 27 and 31. The EDM and GAN rows "
        "(`radar_mrms_edm`, `radar_mrms_gan`) come from a third lease, of an NVIDIA H200 "
        "(`d6b6e32`): both trained side by side on the card for 3 minutes each, then drawn and "
        "scored there (`bash bench/skill/radar_gpu_lease.sh rows`; notes, item 39). The residual "
        "EDM trained for 7 minutes and the EDM drawn with dpm2_heun 20 wait for the next lease, "
        "which retrains first: the earlier leases' checkpoints are gone (docs/gpu.md, \"The next "
        'lease"). Their commands are listed below, and their rows appear once they have run.',
    ),
}


# ---------------------------------------------------------------- helpers


def compose_config(name: str, overrides: Sequence[str]) -> DictConfig:
    """A primary config from conf/ with overrides, as the command line composes it."""
    with initialize_config_dir(version_base=None, config_dir=str(CONF), job_name="skill"):
        return compose(config_name=name, overrides=list(overrides))


def _data_root() -> str:
    return os.environ.get("DOWNSCALE_DATA_ROOT", str(REPO.parent / "shared" / "data"))


def _common() -> list[str]:
    return [f"paths.data_root={_data_root()}", f"paths.data_dir={OUT / 'stores'}"]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, data: Any) -> None:
    from downscale.utils.atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, indent=1, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _log(msg: str) -> None:
    print(f"[skill {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _command(entry: str, overrides: Sequence[str]) -> str:
    """The command line equivalent to composing ``overrides`` for ``downscale.<entry>``."""
    return f"python -m downscale.{entry} " + " ".join(shlex.quote(str(o)) for o in overrides)


def _commands(suite: Suite) -> list[str]:
    """Every build/train/sample command of a suite, for docs/results.md (paths relative)."""
    lines = [_command("build", o) for o in (suite.build, suite.gcm_build) if o]
    lines += [_command("train", _train_overrides(suite, model)) for model in suite.models]
    chosen = dict.fromkeys(s.model for s in _samplings(suite) if s.checkpoint == "selected")
    lines += [_command("select", _select_overrides(suite, model)) for model in chosen]
    for sampling in _samplings(suite):
        out = _samples_path(suite, sampling)
        if sampling.pooled_from:
            lines.append(_command("pool", _pool_overrides(suite, sampling, out)))
        else:
            extra = _fit_on_choice(suite, sampling, _recorded_choice(suite, sampling.model))
            lines.append(
                _command("sample", _sample_overrides(suite, sampling, out, suite.split, extra))
            )
    if suite.gcm_store:
        edm = _gcm_job(suite)
        out = OUT / suite.name / "gcm" / _slug(edm.name) / "samples.zarr"
        extra = (f"data.store=${{paths.data_dir}}/{suite.gcm_store}",)
        lines.append(_command("sample", _sample_overrides(suite, edm, out, suite.split, extra)))
    return [line.replace(str(REPO) + "/", "") for line in lines]


# ---------------------------------------------------------------- stages


def stage_build(suite: Suite) -> None:
    from downscale import build

    for overrides in (suite.build, suite.gcm_build):
        if overrides:
            path = build.run(compose_config("build", [*overrides, *_common()]))
            _log(f"store {path}")


# the CPU bench trains without the sample panels: images only, drawn with their own generators (the
# weights are the same), which cost minutes of the CPU budget (GPU suites keep them)
_BENCH_TRAIN = ("~callbacks.sample_panels",)


def _train_overrides(suite: Suite, model: str) -> list[str]:
    """The training overrides of a suite's model: its experiment, its own overrides, the CPU
    bench's, the suite's."""
    experiment, *own = suite.models[model].split()
    bench = () if suite.gpu else _BENCH_TRAIN
    return [f"experiment={experiment}", *own, *bench, *suite.train_overrides]


def _train_dir(suite: Suite, model: str) -> Path:
    return OUT / suite.name / "train" / model


def stage_train(suite: Suite, only: str | None, force: bool) -> None:
    from downscale import train

    needed = {s.model for s in _samplings(suite)}
    for model in suite.models:
        if (only and only != model) or (not only and model not in needed):
            continue
        run_dir = _train_dir(suite, model)
        overrides = _train_overrides(suite, model)
        # train.run writes summary.json (with the training loop's wall time) when it finishes
        if (run_dir / "summary.json").is_file() and not force:
            _log(f"train {model}: reused {run_dir}")
            continue
        resume = []
        if force and run_dir.exists():
            kept = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(kept)
            _log(f"train {model}: --force, the previous run moved to {kept}")
        elif any((run_dir / "checkpoints").glob("*.ckpt")):
            resume = [f"resume={run_dir}"]  # an interrupted training continues
            _log(f"train {model}: resuming the interrupted run in {run_dir}")
        cfg = compose_config(
            "train", [*overrides, *_common(), f"paths.output_dir={run_dir}", *resume]
        )
        _log(f"train {model} ({' '.join(overrides)})")
        result = train.run(cfg)
        _log(f"train {model}: {result['summary'].get('train_seconds', float('nan')):.0f} s")


def _sample_overrides(
    suite: Suite, sampling: Sampling, out: Path, split: str, extra: Sequence[str] = ()
) -> list[str]:
    # the bench's store, not the path a checkpoint recorded (outputs may have moved since training)
    given = any(o.startswith("data.store=") for o in extra)
    store = () if given else (f"data.store={OUT / 'stores' / suite.store}",)
    return [
        f"ckpt={_checkpoint(suite, sampling)}",
        *sampling.overrides,
        f"n_members={sampling.n_members}",
        f"split={split}",
        "evaluate=false",
        "batch_size=64",
        f"out={out}",
        *store,
        *extra,
    ]


def _checkpoint(suite: Suite, sampling: Sampling) -> Path:
    """The checkpoint a row samples: the lowest validation loss (winter 1996/97 for iberia), the
    last one, or the one downscale.select chose by the CRPS of a validation draw."""
    if sampling.checkpoint == "selected":
        return _selection_dir(suite, sampling.model) / "selected.ckpt"
    name = {"best": "best.ckpt", "last": "last.ckpt"}[sampling.checkpoint]
    return _train_dir(suite, sampling.model) / "checkpoints" / name


def _selection_dir(suite: Suite, model: str) -> Path:
    return OUT / suite.name / "select" / model


def _select_overrides(suite: Suite, model: str) -> list[str]:
    return [
        f"run_dir={_train_dir(suite, model)}",
        *suite.checkpoint_choice,
        f"data.store={OUT / 'stores' / suite.store}",
        f"paths.output_dir={_selection_dir(suite, model)}",
    ]


def stage_select(suite: Suite, only: str | None) -> None:
    """Choose the checkpoint of each model whose rows sample a chosen one (``--only``: a model)."""
    models = dict.fromkeys(s.model for s in _samplings(suite) if s.checkpoint == "selected")
    for model in models:
        if only in (None, "models", model):
            _select(suite, model)


def _select(suite: Suite, model: str) -> dict:
    """Choose ``model``'s checkpoint (once: a finished selection with the same options is reused;
    its validation draws resume)."""
    from downscale import select
    from downscale.utils.checkpoint import file_sha256

    overrides = _select_overrides(suite, model)
    record = _selection_dir(suite, model) / "selection.json"
    # a retrained model (another last.ckpt) is chosen from again
    setting = [
        *_setting(overrides),
        file_sha256(_train_dir(suite, model) / "checkpoints" / "last.ckpt"),
    ]
    done = _read_json(record)
    if done and done.get("overrides") == setting:
        return done
    _log(f"select {model}: validation CRPS of its checkpoints")
    chosen = select.run(compose_config("select", [*overrides, *_common()]))
    chosen["overrides"] = setting
    _write_json(record, chosen)
    _log(f"select {model}: {chosen['best']['label']} ({chosen['seconds']:.0f} s)")
    return chosen


def _recorded_choice(suite: Suite, model: str) -> dict:
    """``model``'s recorded checkpoint choice; before there is one, a placeholder label."""
    recorded = _read_json(_selection_dir(suite, model) / "selection.json")
    return recorded or {"best": {"label": "<label selected>"}}


def _fit_on_choice(suite: Suite, sampling: Sampling, chosen: dict) -> tuple[str, ...]:
    """``dry.fit_store=`` downscale.select's validation draw of the chosen checkpoint, for a row
    that fits its drizzle threshold with select's sampler: that draw is one the fit would make
    again with another seed (a minute of a slow CPU per row; notes item 38)."""
    options = [o for o in sampling.overrides if o != _DRY and not o.startswith("seed=")]
    choice = [o for o in suite.checkpoint_choice if not o.startswith("n_members=")]
    if _DRY not in sampling.overrides or options != choice:
        return ()
    from downscale.select import draw_path

    return (
        f"dry.fit_store={draw_path(_selection_dir(suite, sampling.model), chosen['best']['label'])}",
    )


# overrides that name paths: not part of a draw's recorded setting (the store's attributes
# record the checkpoint and a fit store's path)
_PATHS = ("ckpt=", "out=", "data.store=", "run_dir=", "paths.output_dir=", "dry.fit_store=")


def _recorded(out: Path, setting: list[str]) -> dict | None:
    """The timing record of a finished draw at ``out``, if it was drawn with ``setting``."""
    timing = out.parent / "timing.json"
    if not (timing.is_file() and out.exists()):
        return None
    info = _read_json(timing)
    recorded = info.get("overrides", setting)  # records older than this check: reused
    if recorded != setting:
        sys.exit(
            f"error: {out.parent} was drawn with {' '.join(recorded)}, not "
            f"{' '.join(setting)}; remove it to draw it again"
        )
    return info


def _setting(overrides: Sequence[str]) -> list[str]:
    """The settings of a draw, without the paths (an output folder may move)."""
    return [o for o in overrides if not o.startswith(_PATHS)]


def _sample(
    suite: Suite, sampling: Sampling, out: Path, split: str, n_members: int, extra=()
) -> dict:
    from downscale import sample

    sampling = dataclasses.replace(sampling, n_members=n_members)
    if sampling.checkpoint == "selected":  # first: the choice is kept (and timed) with the rows
        chosen = _select(suite, sampling.model)
        extra = (*extra, *_fit_on_choice(suite, sampling, chosen))
    overrides = _sample_overrides(suite, sampling, out, split, extra)
    setting = _setting(overrides)
    info = _recorded(out, setting)
    if info is not None:
        return info
    if sampling.derived_from:
        return _derive_draws(suite, sampling, out, split, setting)
    if sampling.pooled_from:
        return _pool_draws(suite, sampling, out, split, setting)
    cfg = compose_config("sample", [*overrides, *_common(), f"paths.output_dir={out.parent}"])
    result = sample.run(cfg)
    n_days = xr.open_zarr(out, consolidated=False).sizes["time"]
    # dry.threshold=auto: the validation draw that fits the threshold is part of the cost
    seconds = result["seconds"] + result.get("dry_fit_seconds", 0.0)
    info = {
        "seconds": seconds,
        "nfe": result["nfe"],
        "n_members": n_members,
        "n_days": n_days,
        "seconds_per_member_day": seconds / (n_members * n_days),
        "overrides": setting,
        "device": result.get("device"),
        **({"dry_fit_seconds": result["dry_fit_seconds"]} if "dry_fit_seconds" in result else {}),
    }
    _write_json(out.parent / "timing.json", info)
    return info


def _derive_draws(
    suite: Suite, sampling: Sampling, out: Path, split: str, setting: list[str]
) -> dict:
    """A row from its source row's store (drawn first if missing): the first ``n_members``
    members, conserved when its overrides say ``conserve=``. Post-processing of the same draws, so
    the model does not run again; its time is the share of the source draw that its members cost,
    plus the post-processing."""
    from downscale.sampling.constraints import conserve_samples
    from downscale.utils.atomic import atomic_path

    source = _row(suite, sampling.derived_from)
    if sampling.n_members > source.n_members:
        sys.exit(f"error: {sampling.name} asks for more members than {source.name} has")
    source_out = _samples_path(suite, source)
    drawn = _sample(suite, source, source_out, split, source.n_members)
    method = next(
        (o.split("=", 1)[1] for o in sampling.overrides if o.startswith("conserve=")), None
    )
    start = time.perf_counter()
    ds = xr.open_zarr(source_out, consolidated=False).isel(member=slice(0, sampling.n_members))
    ds = ds.load()
    if method:
        store = xr.open_zarr(OUT / "stores" / suite.store, consolidated=False)
        ds = conserve_samples(ds, store, method)
    with atomic_path(out) as tmp:
        ds.to_zarr(tmp, consolidated=False, zarr_format=3)
    seconds = time.perf_counter() - start
    total = drawn["seconds"] * sampling.n_members / source.n_members + seconds
    info = {
        **drawn,
        "n_members": sampling.n_members,
        "seconds": total,
        "seconds_per_member_day": total / (sampling.n_members * drawn["n_days"]),
        "derive_seconds": seconds,
        "derived_from": source.name,
        "overrides": setting,
    }
    _write_json(out.parent / "timing.json", info)
    return info


def _pool_overrides(suite: Suite, sampling: Sampling, out: Path) -> list[str]:
    """downscale.pool's overrides for a pooled row: its sources' stores, members of each."""
    paths = [_samples_path(suite, _row(suite, name)) for name in sampling.pooled_from]
    each = sampling.n_members // len(paths)
    return [
        f"stores=[{','.join(map(str, paths))}]",
        f"n_members={each}",
        f"out={out}",
        "evaluate=false",
    ]


def _row(suite: Suite, name: str) -> Sampling:
    return next(s for s in suite.samplings if s.name == name)


def _pool_draws(
    suite: Suite, sampling: Sampling, out: Path, split: str, setting: list[str]
) -> dict:
    """A pooled row from its sources' stores (each drawn first if missing) with downscale.pool;
    its time is the share of each source's draw that its members cost, plus the pooling."""
    from downscale import pool

    sources = [_row(suite, name) for name in sampling.pooled_from]
    each = sampling.n_members // len(sources)
    if each * len(sources) != sampling.n_members or any(s.n_members < each for s in sources):
        sys.exit(
            f"error: {sampling.name}: {sampling.n_members} members do not split over its sources"
        )
    paths = [_samples_path(suite, s) for s in sources]
    drawn = [_sample(suite, s, p, split, s.n_members) for s, p in zip(sources, paths, strict=True)]
    overrides = [*_pool_overrides(suite, sampling, out), f"paths.output_dir={out.parent}"]
    result = pool.run(compose_config("pool", overrides))
    total = sum(d["seconds"] * each / s.n_members for d, s in zip(drawn, sources, strict=True))
    total += result["seconds"]
    info = {
        "seconds": total,
        "nfe": max(d["nfe"] for d in drawn),
        "n_members": sampling.n_members,
        "n_days": drawn[0]["n_days"],
        "seconds_per_member_day": total / (sampling.n_members * drawn[0]["n_days"]),
        "pooled_from": list(sampling.pooled_from),
        "overrides": setting,
        "device": drawn[0].get("device"),
    }
    _write_json(out.parent / "timing.json", info)
    return info


def _samples_path(suite: Suite, sampling: Sampling) -> Path:
    return OUT / suite.name / "samples" / _slug(sampling.name) / "samples.zarr"


def _slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _samplings(suite: Suite) -> list[Sampling]:
    """The suite's samplings plus the fast sampler chosen on the validation split."""
    out = [s for s in suite.samplings if ABLATIONS or not s.ablation]
    chosen = _read_json(OUT / suite.name / "fast_sampler.json")
    if ABLATIONS and chosen.get("overrides"):
        label = f"EDM {chosen['label']} ({chosen['nfe']} NFE)"
        fast = tuple(chosen["overrides"])
        out.append(Sampling(f"{label}, 2 members", suite.fast_model, fast, 2, ablation=True))
        out.append(Sampling(label, suite.fast_model, fast, 8, ablation=True))
    return out


def _gcm_sampling(suite: Suite) -> Sampling:
    return _row(suite, suite.gcm_sampling)


def _gcm_job(suite: Suite) -> Sampling:
    """The GCM draw: ``suite.gcm_sampling`` with GCM_MEMBERS members, and a drizzle threshold
    fitted on reanalysis (``dry.threshold=auto``) replaced by the value its reanalysis draw fitted.
    Perfect prognosis: the model and its correction are applied to the GCM unchanged, not refitted
    to the observations through the GCM's own validation winter."""
    edm = _gcm_sampling(suite)
    fitted = _fitted_threshold(_samples_path(suite, edm))
    overrides = tuple(
        f"dry.threshold={fitted}" if o == _DRY and fitted is not None else o for o in edm.overrides
    )
    return dataclasses.replace(edm, overrides=overrides, n_members=GCM_MEMBERS)


def _fitted_threshold(samples: Path) -> float | None:
    """The drizzle threshold a finished draw recorded (None: no draw or no threshold)."""
    if not samples.exists():
        return None
    dry = xr.open_zarr(samples, consolidated=False).attrs.get("dry")
    return json.loads(dry)["threshold"] if dry else None


def choose_fast_sampler(suite: Suite) -> None:
    """Pick the sampler with the lowest CRPS on the validation split among <= 10-NFE candidates."""
    if not ABLATIONS or not suite.fast_model or (OUT / suite.name / "fast_sampler.json").is_file():
        return
    from downscale.evaluation.runner import evaluate_paths

    rows = []
    for cand in suite.fast_candidates:
        label = " ".join(o.split("=", 1)[1] for o in cand)
        probe = Sampling(label, suite.fast_model, cand)
        out = OUT / suite.name / "val_sweep" / _slug(label) / "samples.zarr"
        info = _sample(suite, probe, out, "val", 4)
        cfg = compose_config("sample", ["evaluation=quick"]).evaluation
        cfg = OmegaConf.merge(cfg, {"figures": {}, "wandb": False})
        store = OUT / "stores" / suite.store
        metrics = evaluate_paths(out, store, variable=None, cfg=cfg, out_dir=out.parent)
        rows.append({"label": label, "overrides": list(cand), "nfe": info["nfe"], **metrics})
        _log(f"val sweep {label}: NFE {info['nfe']} CRPS {metrics['crps']:.4f}")
    rows = [r for r in rows if r["nfe"] <= 10]
    best = min(rows, key=lambda r: r["crps"])
    _write_json(OUT / suite.name / "fast_sampler.json", {**best, "candidates": rows})


def _selected(only: str | None, sampling: Sampling) -> bool:
    return only in (None, "models", sampling.model, _slug(sampling.name))


def stage_sample(suite: Suite, only: str | None) -> None:
    """Sample the suite's fixed samplings, then (``--only fast`` or all) choose and run the fast
    sampler. Separate processes can take separate ``--only`` values to run side by side."""
    todo = [s for s in suite.samplings if (ABLATIONS or not s.ablation) and _selected(only, s)]
    if ABLATIONS and suite.fast_model and (only in (None, "fast", suite.fast_model) or not todo):
        choose_fast_sampler(suite)
        extra = [s for s in _samplings(suite) if s not in suite.samplings]
        todo += [s for s in extra if only == "fast" or _selected(only, s)]
    for sampling in todo:
        out = _samples_path(suite, sampling)
        _log(f"sample {sampling.name}")
        info = _sample(suite, sampling, out, suite.split, sampling.n_members)
        _log(f"sample {sampling.name}: {info['seconds']:.0f} s, NFE {info['nfe']}")


def _split_times(suite: Suite, store: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Test days of the models' data config; training pool = every day before the test period."""
    data = compose_config("train", _train_overrides(suite, next(iter(suite.models)))).data
    start, end = data.splits[suite.split]
    test = store["time"].sel(time=slice(str(start), str(end))).to_index()  # inclusive, as the data
    if data.get("drop_feb29", False):
        test = test[~((test.month == 2) & (test.day == 29))]
    times = store["time"].to_index()
    return test.values, times[times < test[0]].values


def _eval_cfg(suite: Suite) -> DictConfig:
    return compose_config("evaluate", ["evaluation=skill", *suite.eval_overrides]).evaluation


def _headline(flat: dict[str, float], q99_obs: float) -> dict[str, float]:
    fss = [v for k, v in flat.items() if k.startswith("fss_")]
    return {
        "crps": flat["crps"],
        "mae_ensmean": flat["mae_ensmean"],
        "ralsd": flat["ralsd"],
        "fss": fss[0] if fss else float("nan"),
        "spread_skill": flat["spread_skill"],
        "rank_flatness": flat["rank_flatness"],
        "q99": q99_obs + flat["quantile_bias_q99"],
        "q99_rel_bias": flat["quantile_rel_bias_q99"],
    }


def stage_evaluate(suite: Suite, only: str | None) -> None:
    from downscale.evaluation.baselines import compute_baselines
    from downscale.evaluation.runner import evaluate

    store = xr.open_zarr(OUT / "stores" / suite.store, consolidated=False)
    test_times, train_times = _split_times(suite, store)
    obs = store["precip"].sel(time=test_times).load()
    mask = store["valid_mask"].load().astype(bool)
    q99_obs = float(np.nanquantile(obs.where(mask).values, 0.99))
    cfg = _eval_cfg(suite)
    results = _read_json(OUT / suite.name / "scores.json")
    results.setdefault("methods", {})
    results["q99_obs"] = q99_obs
    results["n_test_days"] = int(len(test_times))

    for name, entry in suite.baselines.items():
        if only not in (None, "baselines", name):
            continue
        start = time.perf_counter()
        da = compute_baselines(
            store, test_times, train_times, {name: {**entry, "_partial_": True}}
        )[name].load()
        seconds = time.perf_counter() - start
        flat = evaluate(
            da, obs, mask=mask, cfg=cfg, out_dir=OUT / suite.name / "eval" / _slug(name)
        )
        results["methods"][name] = {
            **_headline(flat, q99_obs),
            "n_members": int(da.sizes["member"]),
            "train_seconds": None,
            "sample_seconds_per_member_day": seconds / (da.sizes["member"] * len(test_times)),
            "kind": "baseline",
        }
        _write_json(OUT / suite.name / "scores.json", results)  # each row kept as it comes
        _log(f"evaluated {name}: CRPS {flat['crps']:.3f}")
    for sampling in _samplings(suite):
        if not _selected(only, sampling):
            continue
        path = _samples_path(suite, sampling)
        if not path.exists():
            _log(f"no samples for {sampling.name}: skipped")
            continue
        da = xr.open_zarr(path, consolidated=False)["precip"].load()
        flat = evaluate(
            da, obs, mask=mask, cfg=cfg, out_dir=OUT / suite.name / "eval" / _slug(sampling.name)
        )
        timing = _read_json(path.parent / "timing.json")
        train = _read_json(_train_dir(suite, sampling.model) / "summary.json")
        results["methods"][sampling.name] = {
            **_headline(flat, q99_obs),
            "n_members": int(da.sizes["member"]),
            "nfe": timing.get("nfe"),
            "train_seconds": _train_seconds(suite, sampling),
            "sample_seconds_per_member_day": timing.get("seconds_per_member_day"),
            # the hardware of the timings (records older than this field: None)
            "train_device": train.get("device"),
            "sample_device": timing.get("device"),
            "kind": "model",
        }
        _write_json(OUT / suite.name / "scores.json", results)
        _log(f"evaluated {sampling.name}: CRPS {flat['crps']:.3f}")


def _train_seconds(suite: Suite, sampling: Sampling) -> float | None:
    """What a row's model cost to train: its training, plus choosing its checkpoint (the
    validation draws of downscale.select); a pooled row's, every source model's once."""
    if sampling.pooled_from:
        sources = [_row(suite, name) for name in sampling.pooled_from]
        models = {(s.model, s.checkpoint): s for s in sources}.values()
        costs = [_train_seconds(suite, s) for s in models]
        return None if None in costs else sum(costs)
    train_seconds = _read_json(_train_dir(suite, sampling.model) / "summary.json").get(
        "train_seconds"
    )
    if sampling.checkpoint == "selected" and train_seconds is not None:
        selection = _read_json(_selection_dir(suite, sampling.model) / "selection.json")
        train_seconds += selection.get("seconds", 0.0)
    return train_seconds


def stage_gcm(suite: Suite) -> None:
    """Apply the reanalysis-trained EDM to the GCM store; compare distributions with E-OBS."""
    if not suite.gcm_store:
        return
    from bench.skill.extra import distribution_summary

    gcm_store = OUT / "stores" / suite.gcm_store
    edm = _gcm_sampling(suite)
    ncep_path = _samples_path(suite, edm)
    # the reanalysis draw first: the GCM draw takes its drizzle threshold (reused when drawn)
    _sample(suite, edm, ncep_path, suite.split, edm.n_members)
    out = OUT / suite.name / "gcm" / _slug(edm.name) / "samples.zarr"
    _log(f"gcm: {edm.name} on {gcm_store}")
    # 4 members: a distributional comparison over 450 days needs no more
    job = _gcm_job(suite)
    info = _sample(suite, job, out, suite.split, GCM_MEMBERS, (f"data.store={gcm_store}",))
    store = xr.open_zarr(OUT / "stores" / suite.store, consolidated=False)
    test_times, _ = _split_times(suite, store)
    mask = store["valid_mask"].load().astype(bool)
    obs = store["precip"].sel(time=test_times).load()
    gcm_ds = xr.open_zarr(gcm_store, consolidated=False)
    fields = {
        "E-OBS (observed)": obs,
        f"{edm.name}, CNRM-CM5 predictors": xr.open_zarr(out, consolidated=False)["precip"],
        "bicubic CNRM-CM5 pr": _bicubic(gcm_ds, test_times, store),
    }
    fields[f"{edm.name}, NCEP predictors"] = xr.open_zarr(ncep_path, consolidated=False)["precip"]
    fields["bicubic NCEP pr"] = _bicubic(store, test_times, store)
    summary = {name: distribution_summary(da.load(), mask, obs) for name, da in fields.items()}
    _write_json(
        OUT / suite.name / "gcm.json",
        {
            "sampling": edm.name,
            "n_members": GCM_MEMBERS,
            "dry_threshold": _fitted_threshold(out),
            "seconds": info["seconds"],
            "summary": summary,
        },
    )


def _bicubic(ds: xr.Dataset, times, grid: xr.Dataset) -> xr.DataArray:
    from downscale.evaluation.baselines import interpolate

    return interpolate(ds["coarse_pr"].sel(time=times).load(), grid, "cubic")


# ---------------------------------------------------------------- report


def _git(*args: str) -> str:
    try:
        return subprocess.check_output(["git", *args], cwd=REPO, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _with_recorded_rows(scores: dict, recorded: dict) -> dict:
    """A suite's scores from these outputs, completed from the last report's records
    (bench/results/skill.json) with every row these outputs lack: the ablations after a run of
    the core rows, the rows of earlier GPU leases beside a lease's new ones, or the whole recorded
    suite when these outputs hold none of it (a GPU suite on a CPU machine, a fresh clone). A run
    of all the core rows draws each of them (a failed step stops the run before the report)."""
    if not scores:
        if recorded.get("scores"):
            _log("no outputs of this suite here: its rows are the last report's")
        return recorded.get("scores", {})
    methods = scores.get("methods", {})
    extra = {
        name: row
        for name, row in recorded.get("scores", {}).get("methods", {}).items()
        if name not in methods
    }
    if extra:
        _log(f"kept {len(extra)} recorded rows these outputs lack (bench/results/skill.json)")
    return {**scores, "methods": {**methods, **extra}}


def _output_or_recorded(path: str | None, recorded: dict, key: str) -> dict:
    """A suite's record below OUT (``path``), else the last report's (``recorded[key]``)."""
    if path is None:
        return {}
    return _read_json(OUT / path) or recorded.get(key) or {}


def stage_report(suites: Sequence[Suite]) -> None:
    from bench.skill.report import write_results

    data = {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU, "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}",
        "suites": {},
        # the scheduler's estimates for the next run (kept when these outputs have none)
        "step_seconds": _read_json(OUT / "logs" / STEP_SECONDS) or _recorded_step_seconds(),
    }
    recorded = _read_json(RESULTS_JSON).get("suites", {})
    for suite in SUITES.values():
        # rows in the suite's order: baselines, then the models' samplings, then ablation rows
        core = [*suite.baselines, *(s.name for s in suite.samplings if not s.ablation)]
        record = recorded.get(suite.name, {})
        scores = _with_recorded_rows(_read_json(OUT / suite.name / "scores.json"), record)
        if not scores:
            continue
        order = [*core, *(s.name for s in _samplings(suite))]
        methods = scores["methods"]
        scores["methods"] = {
            **{k: methods[k] for k in order if k in methods},
            **{k: v for k, v in methods.items() if k not in order},
        }
        data["suites"][suite.name] = {
            "domain": suite.domain,
            "note": suite.note,
            "scores": scores,
            "anchors": suite.anchors,
            "anchor_domain": suite.anchor_domain,
            "anchor_check": _output_or_recorded(suite.anchor_check, record, "anchor_check"),
            "fast_sampler": _output_or_recorded(
                f"{suite.name}/fast_sampler.json", record, "fast_sampler"
            ),
            "fast_model": suite.models.get(suite.fast_model or "", ""),
            "gcm": _output_or_recorded(f"{suite.name}/gcm.json", record, "gcm"),
            "commands": _commands(suite),
            "ablations": [k for k in scores["methods"] if k not in core],
        }
    with open(RESULTS_JSON.with_suffix(".tmp"), "w") as fh:  # keep the table order in the JSON
        json.dump(data, fh, indent=1, default=_jsonable)
    os.replace(RESULTS_JSON.with_suffix(".tmp"), RESULTS_JSON)
    write_results(data, RESULTS_MD)
    _log(f"wrote {RESULTS_MD} and {RESULTS_JSON}")


# ---------------------------------------------------------------- steps side by side


def _flags(args: argparse.Namespace) -> list[str]:
    """The options every process of a parallel run takes from the parent's command line."""
    argv = ["--out", str(args.out.absolute())]
    argv += [flag for flag, on in (("--force", args.force), ("--ablations", args.ablations)) if on]
    for override in args.train_override:
        argv += ["--train-override", override]
    return argv


def _run_argv(suite: str, stages: Sequence[str], only: str | None, flags: Sequence[str]) -> tuple:
    argv = [sys.executable, "-m", "bench.skill.run", "--suite", suite]
    argv += [arg for stage in stages for arg in ("--stage", stage)]
    return (*argv, *(("--only", only) if only else ()), *flags)


def _suite_argv(suite: str, args: argparse.Namespace) -> list[str]:
    """The command line of one suite's process (every chosen stage but the report)."""
    stages = [s for s in args.stage or STAGES if s != "report"]
    return list(_run_argv(suite, stages, args.only, _flags(args)))


# estimates for steps the last recorded run does not time (seconds; they only order the steps)
_DEFAULT_COST = {"train": 600.0, "select": 120.0, "sample": 60.0, "score": 120.0, "gcm": 90.0}
# each step's wall time in the last --jobs run into OUT, and as recorded in RESULTS_JSON
STEP_SECONDS = "step_seconds.json"


def _recorded_step_seconds() -> dict[str, float]:
    """Each step's wall time in the last run the report recorded (bench/results/skill.json)."""
    return _read_json(RESULTS_JSON).get("step_seconds", {})


def _recorded_costs(suite: Suite, rows: Sequence[Sampling]) -> dict[str, float]:
    """Seconds of each model's training (``train:<model>``) and each row's draw (``sample:<row
    name>``) in the last recorded run (bench/results/skill.json): the scheduler's estimates."""
    methods = (
        _read_json(RESULTS_JSON).get("suites", {}).get(suite.name, {}).get("scores", {})
    ).get("methods", {})
    store = OUT / "stores" / suite.store
    n_days = (
        len(_split_times(suite, xr.open_zarr(store, consolidated=False))[0])
        if store.exists()
        else 1
    )
    costs: dict[str, float] = {}
    for row in rows:
        record = methods.get(row.name, {})
        if record.get("train_seconds") and not row.pooled_from:
            key = f"train:{row.model}"
            costs[key] = max(costs.get(key, 0.0), float(record["train_seconds"]))
        if record.get("sample_seconds_per_member_day"):
            per_day = float(record["sample_seconds_per_member_day"]) * row.n_members
            costs[f"sample:{row.name}"] = per_day * n_days
    return costs


def suite_tasks(suite: Suite, stages: Sequence[str], flags: Sequence[str]) -> list[Task]:
    """A suite's steps as tasks: each model's training, each checkpoint choice, each row the
    model draws (rows derived from or pooling other rows' draws are made by the scoring task), the
    GCM application once the row it starts from is drawn, and one task for the rest of its chosen
    stages (those rows and the scoring)."""
    rows = [s for s in suite.samplings if ABLATIONS or not s.ablation]
    costs = _recorded_costs(suite, rows)
    # the whole step's time (process, drizzle fit and all), but not below its row's training or
    # sampling time: a step that reused its finished work in a resumed run took a second
    steps = _recorded_step_seconds()
    tasks: list[Task] = []

    def add(kind: str, key: str, stage: str, only: str | None, after=(), cost_key=None) -> str:
        name = f"{suite.name}.{kind}.{key}"
        row_cost = costs.get(cost_key or f"{kind}:{key}", 0.0)
        cost = max(steps.get(name, 0.0), row_cost) or _DEFAULT_COST[kind]
        argv = _run_argv(suite.name, [stage], only, flags)
        tasks.append(Task(name, argv, tuple(after), cost))
        return name

    trained = {}
    if "train" in stages:
        for model in dict.fromkeys(s.model for s in rows):
            trained[model] = add("train", model, "train", model)
    chosen = {}

    def model_steps(model: str) -> list[str]:
        """The training and checkpoint choice of ``model`` that are steps of this graph."""
        return [d[model] for d in (trained, chosen) if model in d]

    if "select" in stages or "sample" in stages:  # a draw of a chosen checkpoint chooses it first
        for model in dict.fromkeys(s.model for s in rows if s.checkpoint == "selected"):
            after = [trained[model]] if model in trained else []
            chosen[model] = add("select", model, "select", model, after)
    if "sample" in stages:
        for row in rows:
            if row.derived_from or row.pooled_from:
                continue
            slug = _slug(row.name)
            add("sample", slug, "sample", slug, model_steps(row.model), f"sample:{row.name}")
    drawn = {t.name for t in tasks}
    rest = [s for s in ("sample", "evaluate") if s in stages]
    if rest:
        name = f"{suite.name}.score"
        cost = steps.get(name) or _DEFAULT_COST["score"]
        tasks.append(Task(name, _run_argv(suite.name, rest, None, flags), tuple(drawn), cost))
    if "gcm" in stages and suite.gcm_store:
        # its own task, not the scoring's tail: it starts when its reanalysis row is drawn (the
        # draw whose drizzle threshold it takes), on whichever core is free
        row = _gcm_sampling(suite)
        source = f"{suite.name}.sample.{_slug(row.name)}"
        after = [source] if source in drawn else model_steps(row.model)
        add("gcm", "application", "gcm", None, after)
    return tasks


# what every step imports (about 9 s a process on a slow 2-core machine): imported once by the
# server the steps are forked from
_PRELOAD = ("lightning", "xarray", "downscale.train", "downscale.sample", "downscale.select")


def run_parallel(suites: Sequence[Suite], stages: Sequence[str], args: argparse.Namespace) -> None:
    """Every chosen stage but the report, ``args.jobs`` processes at a time: the stores built here
    first (seconds), then the suites' tasks (or, with ``--only``, one process per suite)."""
    forks = fork_server(_PRELOAD, args.jobs)  # its imports run while the stores are built
    if "build" in stages:
        for suite in suites:
            stage_build(suite)
    flags = _flags(args)
    if args.only:
        tasks = [Task(s.name, tuple(_suite_argv(s.name, args))) for s in suites]
    else:
        tasks = [t for suite in suites for t in suite_tasks(suite, stages, flags)]
    seconds: dict[str, float] = {}
    try:
        failed = run_tasks(tasks, args.jobs, OUT / "logs", REPO, _log, forks, seconds)
    finally:  # the next run's estimates, also from an interrupted or failed run's finished steps
        if seconds:
            path = OUT / "logs" / STEP_SECONDS
            _write_json(path, {**_read_json(path), **{k: round(v, 1) for k, v in seconds.items()}})
    if failed:
        sys.exit(f"error: {', '.join(failed)} failed; see {OUT / 'logs'}")


def main(argv: Sequence[str] | None = None) -> int:
    global ABLATIONS, OUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=sorted(SUITES), default=None)
    parser.add_argument("--stage", action="append", choices=STAGES, default=None)
    parser.add_argument(
        "--only",
        default=None,
        help="one method (model key or baseline name), or 'models' / 'baselines' for all of those",
    )
    parser.add_argument("--force", action="store_true", help="retrain even if a checkpoint exists")
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also the ablation rows (REFERENCE sigma_data, sigma_data 0.2, the validation sampler "
        "sweep): how the core setting was found",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="outputs (stores, runs, samples)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes at once (trainings, checkpoint choices, draws, scoring; with --only: "
        "suites), each with cpu_count // jobs torch threads",
    )
    parser.add_argument(
        "--train-override",
        action="append",
        default=[],
        help="appended to every model's training overrides, e.g. trainer.max_time=00:00:30:00",
    )
    args = parser.parse_args(argv)
    ABLATIONS, OUT = args.ablations, args.out.absolute()
    from downscale.utils.malloc import tune_malloc

    tune_malloc()  # as the entry points' command lines do
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.path.insert(0, str(REPO))
    suites = [
        dataclasses.replace(
            SUITES[s], train_overrides=(*SUITES[s].train_overrides, *args.train_override)
        )
        for s in (args.suite or [name for name, suite in SUITES.items() if not suite.gpu])
    ]
    stages = args.stage or list(STAGES)
    if args.jobs < 1:
        sys.exit(f"error: --jobs must be >= 1, not {args.jobs}")
    one_process = args.only and len(suites) == 1  # nothing to run side by side
    if args.jobs > 1 and set(stages) - {"build", "report"} and not one_process:
        run_parallel(suites, stages, args)
        stages = [s for s in stages if s == "report"]
    runners = {
        "build": lambda suite: stage_build(suite),
        "train": lambda suite: stage_train(suite, args.only, args.force),
        "select": lambda suite: stage_select(suite, args.only),
        "sample": lambda suite: stage_sample(suite, args.only),
        "evaluate": lambda suite: stage_evaluate(suite, args.only),
        "gcm": lambda suite: stage_gcm(suite),
    }
    for suite in suites:
        for stage in stages:
            if stage in runners:
                runners[stage](suite)
    if "report" in stages:
        stage_report(suites)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
