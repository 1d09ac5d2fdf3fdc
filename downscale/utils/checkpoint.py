"""Reading our checkpoints safely (``weights_only=True``) and building the model they describe."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from downscale.utils.config import check_safe_targets, instantiate_user
from downscale.utils.errors import UserError, require


def find_checkpoint(run_dir: str | Path | None, ckpt: str | Path | None) -> Path:
    """The checkpoint named by ``ckpt``, or ``last.ckpt`` of a train ``run_dir``."""
    require(
        (run_dir is None) != (ckpt is None),
        "give exactly one of run_dir=<train run dir> and ckpt=<checkpoint path>; "
        "e.g. run_dir=outputs/train/<date>/<time>",
    )
    if ckpt is not None:
        path = Path(ckpt)
        require(path.is_file(), f"checkpoint not found: {path}; check the ckpt= path")
        return path
    run = Path(run_dir)
    require(run.is_dir(), f"run_dir not found: {run}; pass the directory of a train run")
    for name in ("last.ckpt", "best.ckpt"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    raise UserError(
        f"no checkpoint in {run}/checkpoints (expected last.ckpt); "
        "did that train run finish an epoch? Pass ckpt=<path> to choose one"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it carries a downscale config."""
    require(Path(path).is_file(), f"checkpoint not found: {path}; check the path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or unsafe pickles all end here
        raise UserError(
            f"cannot load checkpoint {path} ({type(exc).__name__}); is it complete?"
        ) from exc
    info = checkpoint.get("downscale") if isinstance(checkpoint, dict) else None
    require(
        isinstance(info, dict) and "config" in info,
        f"{path} is not a downscale checkpoint (no embedded config); train it with downscale.train",
    )
    check_safe_targets(info["config"], f"checkpoint {path}")
    return checkpoint


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (recorded in samples so they can be traced to their checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def build_model(config: dict[str, Any], channels: dict[str, int]) -> torch.nn.Module:
    """Instantiate the model of a (checkpoint) config with the data's channel counts."""
    cfg = OmegaConf.create(config)
    return instantiate_user(cfg.model, net=instantiate(cfg.net), **channels)


def load_model(checkpoint: dict[str, Any], path: str | Path) -> torch.nn.Module:
    """The model of a checkpoint with its weights (EMA included); a clear error when they do not fit."""
    info = checkpoint["downscale"]
    model = build_model(info["config"], info["channels"])
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(
            f"checkpoint {path} does not fit its model config ({first}); "
            "was it trained with a different model/net/data setting?"
        ) from exc
    model.run_info = dict(info)
    return model.eval()
