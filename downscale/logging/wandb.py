"""W&B logger set-up: offline unless the user configured W&B, one run id per run directory."""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from downscale.utils.atomic import write_text


def wandb_configured() -> bool:
    """True when W&B credentials exist (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(mode: str | None) -> str:
    """``mode`` if given, else ``WANDB_MODE``, else online when configured and offline otherwise."""
    return mode or os.environ.get("WANDB_MODE") or ("online" if wandb_configured() else "offline")


def run_id(save_dir: str | Path) -> str:
    """The W&B run id of a run directory, created once and reused when the run is resumed."""
    path = Path(save_dir) / "wandb_id.txt"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    new = uuid.uuid4().hex[:12]
    write_text(path, new)
    return new


def wandb_logger(
    save_dir: str,
    project: str = "downscale",
    name: str | None = None,
    tags: list[str] | None = None,
    mode: str | None = None,
    entity: str | None = None,
) -> WandbLogger:
    """A Lightning ``WandbLogger`` that resumes the run of ``save_dir`` if there is one."""
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        tags=list(tags or []),
        entity=entity,
        id=run_id(save_dir),
        resume="allow",
        mode=wandb_mode(mode),
    )
