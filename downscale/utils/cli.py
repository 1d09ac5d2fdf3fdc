"""Command-line front end: check the user's overrides before Hydra runs, so that a mistyped option or key
ends with one line naming the problem and the fix (and exit status 2) instead of a multi-line report."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from downscale.utils.errors import full_traceback_requested
from downscale.utils.malloc import tune_malloc

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def explain_config_error(exc: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error, with the fix where we can name it."""
    text = str(exc)
    if isinstance(exc, OverrideParseException):
        reason = " ".join(text.split("See https")[0].split())
        return (
            f"cannot parse the override '{exc.override}' ({reason}); check its syntax, e.g. "
            "key=value, key=[a,b], group=option (quote values with spaces)"
        )
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        available = re.search(
            r"Available options in '[^']+':\s*(.*?)(?:Config search path|$)", text, re.S
        )
        options = ", ".join(available.group(1).split()) if available else "see conf/" + group
        return f"unknown option {group}={option}; available: {options}"
    not_in_struct = re.search(r"Could not override '([^']+)'.*?use \+(\S+)", text, re.S)
    if not_in_struct:
        key, append = not_in_struct.groups()
        return f"unknown key {key}; check its spelling, or add a new key with +{append}"
    missing_key = re.search(r"Key '([^']+)' is not in struct\s+full_key: (\S+)", text)
    if missing_key:
        return f"unknown key {missing_key.group(2)}; check its spelling (or add it with +{missing_key.group(2)}=...)"
    return " ".join(text.split())


def overrides_only(argv: list[str]) -> bool:
    """True when every argument is a plain override (no Hydra flags such as -m or --cfg)."""
    return all(not a.startswith("-") for a in argv)


def check_overrides(config_name: str, argv: list[str]) -> str | None:
    """Compose ``config_name`` with ``argv``; return a one-line error, or None when it composes."""
    try:
        with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR), job_name="check"):
            compose(config_name=config_name, overrides=argv)
    except (HydraException, OmegaConfBaseException) as exc:
        return explain_config_error(exc)
    return None


def run_cli(config_name: str, hydra_main: Callable[[], Any]) -> None:
    """Validate the command line, then hand over to Hydra's own main.

    ``--debug`` (anywhere on the line) is the same as ``HYDRA_FULL_ERROR=1``: full tracebacks.
    Also tunes the CPU memory allocator (:func:`downscale.utils.malloc.tune_malloc`).
    """
    tune_malloc()
    if "--debug" in sys.argv[1:]:
        sys.argv = [a for a in sys.argv if a != "--debug"]
        os.environ["HYDRA_FULL_ERROR"] = "1"
    argv = sys.argv[1:]
    if overrides_only(argv) and not full_traceback_requested():
        problem = check_overrides(config_name, argv)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
    hydra_main()
