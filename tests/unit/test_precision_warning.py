"""bf16 on a CPU without bf16 instructions is emulated (about 13x slower than float32 for a tiny-net
training step on an AVX2 machine): training and sampling say so, once, and still run."""

from __future__ import annotations

import warnings

import pytest
import torch

from downscale.sampling.driver import check_precision
from downscale.utils import seeding
from downscale.utils.seeding import check_accelerator, native_cpu_bf16


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def _messages(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "call",
    [
        lambda: check_accelerator("cpu", "bf16-mixed"),
        lambda: check_accelerator("cpu", "bf16-true"),
        lambda: check_precision("bf16-mixed", "cpu"),
    ],
    ids=["train bf16-mixed", "train bf16-true", "sample bf16-mixed"],
)
def test_bf16_on_a_cpu_without_bf16_instructions_warns_with_the_fix(emulated, call):
    (message,) = _messages(call)
    assert "emulated" in message and "precision=32" in message


@pytest.mark.parametrize(
    "call",
    [
        lambda: check_accelerator("cpu", "32"),
        lambda: check_accelerator("cpu", 32),
        lambda: check_precision("32-true", "cpu"),
        lambda: check_precision("bf16-mixed", None),  # no device known yet
    ],
    ids=["train 32", "train int 32", "sample 32-true", "sample no device"],
)
def test_float32_or_an_unknown_device_does_not_warn(emulated, call):
    assert _messages(call) == []


def test_a_cpu_with_bf16_instructions_does_not_warn(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_cpu_bf16()
    assert _messages(lambda: check_accelerator("cpu", "bf16-mixed")) == []


def test_a_gpu_run_does_not_warn(emulated, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _messages(lambda: seeding.warn_emulated_bf16("cuda", "bf16-mixed")) == []
    assert _messages(lambda: check_accelerator("gpu", "bf16-mixed")) == []


def test_accelerator_auto_without_a_gpu_is_a_cpu_run(emulated, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (message,) = _messages(lambda: check_accelerator("auto", "bf16-mixed"))
    assert "emulated" in message
