"""CPU memory-allocator settings for the entry points (Linux with glibc only).

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold with fresh
``mmap`` pages and returns freed memory at the top of the heap to the system once more than the trim
threshold is free; a network whose activations are a few MB each then takes page faults on every
forward pass. Raising both thresholds keeps that memory in the process for reuse (PyTorch's CPU
tuning guide gets the same effect by preloading jemalloc or tcmalloc, which pip cannot install).
Measured by ``bench/cpu_malloc.py`` (docs/models.md): the Iberia tiny net's batch-64 forward pass
24% faster, a batch-32 training step 6% faster, at the same peak RSS. The cost is that memory freed by the process is not
returned to the system until it exits (blocks above 32 MiB still are).

Set ``DOWNSCALE_MALLOC_TUNING=0`` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2**30


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when they were set."""
    if os.environ.get("DOWNSCALE_MALLOC_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    # mallopt returns 1 on success; setting either turns off glibc's dynamic threshold adjustment,
    # so both are set (the mmap threshold alone would leave trimming, the trim alone would fix the
    # mmap threshold at its 128 KiB default: 2x slower here)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
