"""Write outputs under a temporary name and rename them into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(final: Path) -> Path:
    """A unique path next to ``final`` (same filesystem, so the rename is atomic)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` onto ``final``; a directory already at ``final`` is replaced."""
    if final.is_dir() and not final.is_symlink():
        trash = temporary_sibling(final)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to ``final``, on failure removed.

    Works for files and for directory stores (zarr). Folders created for ``final`` are removed again
    on failure when still empty, so a failed run leaves nothing behind.
    """
    final = Path(final)
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]  # deepest first
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep it and its parents
                break
        raise
    replace(tmp, final)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
