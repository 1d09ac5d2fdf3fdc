"""Seeding and device selection."""

from __future__ import annotations

import warnings
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
    if str(accelerator) == "cpu" or (str(accelerator) == "auto" and not torch.cuda.is_available()):
        warn_emulated_bf16("cpu", precision)


def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); without them PyTorch emulates
    bf16 arithmetic. (Private torch helpers; an unknown answer counts as native, so no warning.)"""
    checks = [
        getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    known = [check for check in checks if callable(check)]
    return not known or any(check() for check in known)


def warn_emulated_bf16(device_type: str, precision: str | int) -> None:
    """Warn that bf16 on a CPU without bf16 instructions is far slower than float32: one tiny-net
    training step (batch 8 of 64 x 64) took 8.7 s under bf16 autocast against 0.65 s in float32 on
    an AVX2 machine (docs/troubleshooting.md). It works, so it is not refused: the tests run it."""
    if device_type == "cpu" and str(precision).startswith("bf16") and not native_cpu_bf16():
        warnings.warn(
            f"precision {precision} on a CPU without bf16 instructions (AVX512-BF16 or AMX) is "
            "emulated and can run 10x slower than float32; use 32 (trainer.precision=32, or "
            "precision=32-true for sampling) unless you are testing the bf16 path",
            stacklevel=2,
        )


def check_trainer_types(trainer: Any) -> None:
    """Integer trainer settings must be integers (Lightning only asserts deep inside ``fit``)."""
    for key in ("max_epochs", "max_steps", "log_every_n_steps", "check_val_every_n_epoch"):
        value = trainer.get(key)
        require(
            value is None or (isinstance(value, int) and not isinstance(value, bool)),
            f"trainer.{key}={value!r} must be an integer; e.g. trainer.{key}=10",
        )
