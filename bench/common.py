"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """The short hash of the checked-out commit (the code measured), or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def write_device_result(name: str, device_type: str, result: dict[str, Any]) -> Path:
    """Add the provenance (torch, machine, commit, the command line that ran) to ``result`` and write
    it to ``bench/results/<name>.json``, or ``<name>_<device_type>.json`` off the CPU; returns the
    path."""
    import torch

    result = {
        **result,
        "torch": torch.__version__,
        "machine": f"{platform.node()} {platform.machine()}",
        "commit": git_commit(),
        "command": " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
    }
    suffix = "" if device_type == "cpu" else f"_{device_type}"
    out = ROOT / "bench" / "results" / f"{name}{suffix}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out
