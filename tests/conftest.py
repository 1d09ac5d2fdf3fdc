"""Shared fixtures: config composition with Hydra's compose API, tiny synthetic stores, data root."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# a test's devices: the CPU, and CUDA where a GPU is present (skipped otherwise)
CPU_AND_CUDA = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]

# Sizes small enough for 2 CPU cores: 32 x 32 fine grid, x4 coarse, 64 days.
TINY_DATA = [
    "data.store.n_days=64",
    "data.store.size=32",
    "data.train_dataset.patch_size=16",
    "data.batch_size=8",
]


def compose_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a primary config from conf/ as the command line would."""
    with initialize_config_dir(version_base=None, config_dir=str(CONF), job_name="test"):
        return compose(config_name=name, overrides=list(overrides or []))


@pytest.fixture
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """One synthetic-data cache per test session (stores are deterministic, so sharing is safe)."""
    path = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("DOWNSCALE_CACHE_DIR", str(path))
    return path


def shared_data_root() -> Path | None:
    """``../shared/data`` (or ``DOWNSCALE_DATA_ROOT``); None when absent. Under CI=true it must exist."""
    root = Path(os.environ.get("DOWNSCALE_DATA_ROOT", REPO.parent / "shared" / "data"))
    if root.is_dir():
        return root
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true but the shared data folder {root} is missing")
    return None


@pytest.fixture
def data_root() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("../shared/data is absent (set DOWNSCALE_DATA_ROOT to run tests on real data)")
    return root


@contextlib.contextmanager
def tiny_training(tmp_path_factory, name: str, *overrides: str) -> Iterator[tuple[Path, dict]]:
    """Train the tiny EDM on tiny synthetic data in a fresh folder (for module-scoped fixtures);
    yields ``(root, train result)`` with ``DOWNSCALE_CACHE_DIR`` pointing into ``root``."""
    from downscale import train

    root = tmp_path_factory.mktemp(name)
    mp = pytest.MonkeyPatch()
    mp.setenv("DOWNSCALE_CACHE_DIR", str(root / "cache"))
    try:
        cfg = compose_config(
            "train",
            [
                *TINY_DATA,
                f"paths.output_dir={root / 'train'}",
                "trainer.max_epochs=1",
                "logger=csv",
                "callbacks=none",
                *overrides,
            ],
        )
        yield root, train.run(cfg)
    finally:
        mp.undo()


def synthetic_datamodule(cache: Path, n_days: int, splits: dict[str, list[float]]):
    """A prepared DataModule over a 16 x 16 (x4 coarse) synthetic store, without statics."""
    from downscale.data.datamodule import DownscaleDataModule
    from downscale.data.scaling import LogScaler, ZScaler
    from downscale.data.synthetic import synthetic_store

    store = synthetic_store(cache, n_days=n_days, size=16, factor=4)
    scalers = {"precip": LogScaler(), "coarse_precip": LogScaler(), "coarse_humidity": ZScaler()}
    datamodule = DownscaleDataModule(store, ["precip"], ["precip", "humidity"], scalers, splits)
    datamodule.prepare()
    return datamodule
