"""Checkpoints appear under their final name only when complete."""

from __future__ import annotations

import pytest
import torch

from downscale.utils import checkpoint_io
from downscale.utils.checkpoint_io import AtomicCheckpointIO
from tests.conftest import compose_config


def test_saved_checkpoint_loads_with_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(
        {"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "c" / "last.ckpt"
    )
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["last.ckpt"]
    loaded = torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    final = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, final)

    def half_written(checkpoint, path):
        with open(path, "wb") as fh:
            fh.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(
        checkpoint_io.TorchCheckpointIO,
        "save_checkpoint",
        lambda s, c, p, o=None: half_written(c, p),
    )
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2}, final)
    assert torch.load(final, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_trainer_config_uses_it():
    cfg = compose_config("train", ["paths.output_dir=/tmp/unused"])
    targets = [p["_target_"] for p in cfg.trainer.plugins]
    assert targets == ["downscale.utils.checkpoint_io.AtomicCheckpointIO"]
