"""Entry point: build a dataset store from a recipe.

``python -m downscale.build build=iberia [out=path.zarr] [export_netcdf=true] [overwrite=true]``
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from downscale.data.build import build_store, store_recipe
from downscale.utils.cli import run_cli
from downscale.utils.errors import UserError, report_user_errors

log = logging.getLogger(__name__)


def store_path(cfg: DictConfig) -> Path:
    """The output store: ``cfg.out`` or ``${paths.data_dir}/<recipe name>.zarr``."""
    if cfg.get("out"):
        return Path(str(cfg.out))
    return Path(str(cfg.paths.data_dir)) / f"{cfg.build.name}.zarr"


def run(cfg: DictConfig) -> Path:
    """Build (or reuse) the store described by ``cfg.build``; returns its path."""
    try:
        recipe = cfg.build
    except MissingMandatoryValue:
        recipe = None
    if not recipe:
        raise UserError("no recipe chosen; pass build=<name> (one of conf/build/*.yaml)")
    out = store_path(cfg)
    plain = OmegaConf.to_container(recipe, resolve=True)
    existing = store_recipe(out)
    if existing is not None and not cfg.get("overwrite", False):
        if json.loads(json.dumps(plain, default=str)) == existing:
            log.info("store %s exists and was built from this recipe: reused", out)
            return out
        raise UserError(
            f"{out} exists and was built from a different recipe; pass overwrite=true or out=<path>"
        )
    path = build_store(recipe, out, export_netcdf=bool(cfg.get("export_netcdf", False)))
    log.info("wrote %s", path)
    return path


@hydra.main(version_base=None, config_path="../conf", config_name="build")
@report_user_errors
def main(cfg: DictConfig) -> None:
    print(run(cfg))


if __name__ == "__main__":
    run_cli("build", main)
