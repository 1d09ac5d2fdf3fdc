"""Config helpers: plain containers for checkpoints, and the safety check on embedded targets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from downscale.utils.errors import UserError

# A config read back from a checkpoint may only build objects from these packages (never arbitrary code).
SAFE_TARGET_PREFIXES = ("downscale.", "torch.", "lightning.")


def to_plain(cfg: DictConfig | ListConfig | dict | list) -> Any:
    """A resolved config as plain dicts/lists/scalars (loadable with ``weights_only=True``)."""
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return cfg


def iter_targets(node: Any) -> Iterator[str]:
    """Every ``_target_`` value in a nested config."""
    if isinstance(node, dict | DictConfig):
        for key, value in node.items():
            if key == "_target_":
                yield str(value)
            else:
                yield from iter_targets(value)
    elif isinstance(node, list | ListConfig):
        for item in node:
            yield from iter_targets(item)


def check_safe_targets(cfg: Any, source: str) -> None:
    """Refuse a config (from a checkpoint) that would instantiate anything outside our packages."""
    unsafe = [t for t in iter_targets(cfg) if not t.startswith(SAFE_TARGET_PREFIXES)]
    if unsafe:
        raise UserError(
            f"{source} asks to build {unsafe}, outside downscale/torch/lightning; refusing to load it "
            "(only use checkpoints you trust, and re-export them with this version of downscale)"
        )


def instantiate_user(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising a constructor's :class:`UserError` as itself (Hydra
    wraps it in an ``InstantiationException``) so that the entry point prints one line."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from exc
        raise
