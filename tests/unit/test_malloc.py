"""tune_malloc: glibc's mmap/trim thresholds raised for the process, unless turned off."""

from __future__ import annotations

import platform

import pytest
import torch

from downscale.utils.malloc import tune_malloc


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("DOWNSCALE_MALLOC_TUNING", "0")
    assert tune_malloc() is False


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)
def test_applied_on_glibc_and_allocation_still_works(monkeypatch):
    monkeypatch.delenv("DOWNSCALE_MALLOC_TUNING", raising=False)
    assert tune_malloc() is True
    # blocks below, at and above the thresholds are allocated, filled and freed correctly
    for n in (1_000, 2**20, 10 * 2**20, 40 * 2**20):
        t = torch.full((n // 4,), 3.0)
        assert float(t.sum()) == pytest.approx(3.0 * (n // 4))
        del t
