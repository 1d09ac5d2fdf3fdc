"""User-facing errors and the command-line wrapper that turns them into one clear line."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import InstantiationException

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, mismatched grid...).

    The message must name the problem and the fix in one line.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)


def full_traceback_requested() -> bool:
    """True when the user asked for full tracebacks (``HYDRA_FULL_ERROR=1`` or ``DOWNSCALE_DEBUG=1``)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("DOWNSCALE_DEBUG") == "1"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def discard_empty_run_dir() -> None:
    """Remove the Hydra run dir of a failed command when it holds only Hydra's own records
    (``.hydra/`` and the job log): a mistake leaves no run directory that looks like a result."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return
        out = Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - no Hydra run (tests, library use): nothing to clean
        return
    if out.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def report_user_errors(fn: F) -> F:
    """Wrap an entry point so that a :class:`UserError` prints one line and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if full_traceback_requested():
                raise
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            discard_empty_run_dir()
            sys.exit(2)
        except InstantiationException as exc:
            # a component's arguments from the config were rejected (wrong type, unknown argument)
            if full_traceback_requested():
                raise
            print(
                f"error: {_one_line(exc)}; check the overrides of that component "
                "(HYDRA_FULL_ERROR=1 shows the trace)",
                file=sys.stderr,
            )
            discard_empty_run_dir()
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
