"""Seeding and device selection."""

from __future__ import annotations

from typing import Any

import torch

from downscale.utils.errors import require


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a CUDA device on a machine without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    require(
        resolved.type != "cuda" or torch.cuda.is_available(),
        f"device={device} needs a CUDA GPU and none is available; use device=cpu or device=auto",
    )
    return resolved


def device_label(device: torch.device | str) -> str:
    """The hardware a run used, for timing records: the GPU's name, or ``cpu (N threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def check_accelerator(accelerator: str, precision: str | int) -> None:
    """Refuse GPU-only trainer settings on a machine without a GPU, with the fix."""
    gpu = str(accelerator) in {"gpu", "cuda"}
    require(
        not gpu or torch.cuda.is_available(),
        f"trainer.accelerator={accelerator} needs a CUDA GPU and none is available; use trainer=cpu",
    )
    require(
        str(precision) != "16-mixed" or torch.cuda.is_available(),
        "trainer.precision=16-mixed needs a GPU; use 32 or bf16-mixed on CPU",
    )


def check_trainer_types(trainer: Any) -> None:
    """Integer trainer settings must be integers (Lightning only asserts deep inside ``fit``)."""
    for key in ("max_epochs", "max_steps", "log_every_n_steps", "check_val_every_n_epoch"):
        value = trainer.get(key)
        require(
            value is None or (isinstance(value, int) and not isinstance(value, bool)),
            f"trainer.{key}={value!r} must be an integer; e.g. trainer.{key}=10",
        )
