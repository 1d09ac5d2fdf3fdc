"""OmegaConf resolvers used by our configs (registered on import)."""

from __future__ import annotations

from omegaconf import OmegaConf


def first_set(*values: object) -> object:
    """The first value that is not None (e.g. ``${first:${resume},${paths.output_dir}}``)."""
    return next((v for v in values if v is not None), None)


if not OmegaConf.has_resolver("first"):
    OmegaConf.register_new_resolver("first", first_set)
