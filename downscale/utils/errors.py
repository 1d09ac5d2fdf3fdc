"""User-facing errors and the command-line wrapper that turns them into one clear line."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
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
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
