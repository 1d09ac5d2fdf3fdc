"""Every option of every config group composes, and its components instantiate."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from downscale.utils.errors import UserError
from downscale.utils.seeding import check_accelerator
from tests.conftest import CONF, TINY_DATA, compose_config

# group -> primary config that composes it
PRIMARY = {
    "data": "train",
    "model": "train",
    "net": "train",
    "trainer": "train",
    "logger": "train",
    "callbacks": "train",
    "experiment": "train",
    "debug": "train",
    "optimizer": "train",
    "scheduler": "train",
    "sampler": "sample",
    "schedule": "sample",
    "tiling": "sample",
    "evaluation": "evaluate",
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CASES = [(g, o) for g in PRIMARY for o in options(g)]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_instantiates(group, option, tmp_path, cache_dir):
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}"]
    if PRIMARY[group] == "evaluate":
        overrides.append("samples=unused.zarr")
    cfg = compose_config(PRIMARY[group], overrides)
    OmegaConf.resolve(cfg)
    if group == "sampler":
        params = OmegaConf.to_container(cfg.sampler)
        steps = params.pop("steps")
        assert isinstance(steps, int) and steps >= 1
        assert callable(instantiate(params))
    elif group == "schedule":
        sigmas = instantiate(cfg.schedule)(5)
        assert sigmas.shape == (6,) and sigmas[-1] == 0 and (sigmas[:-1] > sigmas[1:]).all()
    elif group == "tiling":
        tiled = instantiate(cfg.tiling)(lambda x, sigma, cond: x)
        assert callable(tiled)
    elif group in ("optimizer", "scheduler"):
        _instantiate_train(cfg, group)
    elif group == "evaluation":
        assert instantiate(cfg.evaluation) is not None
    elif (
        group == "trainer"
        and cfg.trainer.accelerator in ("gpu", "cuda")
        and not torch.cuda.is_available()
    ):
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            check_accelerator(cfg.trainer.accelerator, cfg.trainer.precision)
    elif group in ("logger", "callbacks"):
        for node in (cfg[group] or {}).values():
            assert instantiate(node) is not None
    else:
        _instantiate_train(cfg, group)


def _instantiate_train(cfg, group):
    from downscale.train import build

    data_is_synthetic = "synthetic" in str(cfg.data.store)
    if not data_is_synthetic:
        # real stores need a build first: construct the DataModule (it opens the store lazily)
        assert instantiate(cfg.data) is not None
        cfg.data = compose_config("train", ["data=synthetic"]).data
    for item in TINY_DATA:
        key, value = item.split("=")
        OmegaConf.update(cfg, key, value if not value.isdigit() else int(value), force_add=True)
    if cfg.net.get("location_channels"):  # the map covers the tiny domain; patches take their crop
        cfg.net.location_size = [32, 32]
    cfg.trainer.accelerator = "cpu"
    cfg.trainer.precision = 32
    cfg.logger = {}
    datamodule, model, trainer = build(cfg)
    batch = next(iter(datamodule.train_dataloader()))
    model.train()
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)


# groups used inside other configs: every option is a valid component on its own
NESTED = {"noise_levels": "components", "loss_weighting": "function", "variables": "scalers"}
NESTED_CASES = [(g, o) for g in NESTED for o in options(g)]


@pytest.mark.parametrize(
    ("group", "option"), NESTED_CASES, ids=[f"{g}={o}" for g, o in NESTED_CASES]
)
def test_nested_option_instantiates(group, option):
    node = OmegaConf.load(CONF / group / f"{option}.yaml")
    if group == "variables":
        scalers = {name: instantiate(spec) for name, spec in node.items()}
        assert all(hasattr(s, "forward") and hasattr(s, "inverse") for s in scalers.values())
    elif group == "noise_levels":
        sigma = instantiate(node)(64, generator=torch.Generator().manual_seed(0))
        assert sigma.shape == (64,) and (sigma > 0).all()
    else:
        weight = instantiate(node)(torch.tensor([0.1, 1.0, 10.0]), 0.5)
        assert torch.isfinite(weight).all() and (weight > 0).all()


@pytest.mark.parametrize("recipe", options("build"))
def test_build_recipe_composes(recipe, tmp_path):
    from downscale.build import store_path

    cfg = compose_config(
        "build", [f"build={recipe}", f"paths.data_dir={tmp_path}", f"paths.output_dir={tmp_path}"]
    )
    OmegaConf.resolve(cfg)
    assert store_path(cfg) == tmp_path / f"{recipe}.zarr"
