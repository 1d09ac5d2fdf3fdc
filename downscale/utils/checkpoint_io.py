"""Checkpoint files that appear under their final name only when complete.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in
the system temp dir; committing it is a cross-filesystem move (copy, then delete) when the run dir is
on another filesystem, so a kill mid-copy leaves a truncated ``last.ckpt``. Writing to a sibling
and renaming it (``atomic_path``) closes that gap.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from downscale.utils.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes to a temporary sibling and renames it into place."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
