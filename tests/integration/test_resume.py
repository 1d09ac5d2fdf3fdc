"""resume=<run dir> continues a run exactly: 1 epoch + resume for 1 more == 2 epochs straight."""

from __future__ import annotations

import re

import pytest
import torch

from downscale.train import run
from downscale.utils.errors import UserError
from tests.conftest import TINY_DATA, compose_config

COMMON = [
    *TINY_DATA,
    "callbacks=none",
    "trainer.deterministic=true",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "seed=7",
]


def _train(out, extra, logger="csv"):
    cfg = compose_config("train", [*COMMON, f"logger={logger}", f"paths.output_dir={out}", *extra])
    return run(cfg)


def _weights(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["state_dict"], state


@pytest.mark.parametrize("model", ["edm", "gan"])
def test_resume_reproduces_uninterrupted_run(tmp_path, cache_dir, model):
    extra = [f"model={model}"] + (["model.warmup_steps=2"] if model == "gan" else [])
    straight = _train(tmp_path / "straight", [*extra, "trainer.max_epochs=2"])
    first = _train(tmp_path / "split", [*extra, "trainer.max_epochs=1"])
    after_one, _ = _weights(first["last_ckpt"])
    resumed = _train(
        tmp_path / "ignored", [*extra, "trainer.max_epochs=2", f"resume={tmp_path / 'split'}"]
    )
    assert resumed["run_dir"] == tmp_path / "split"  # continues in the same run dir
    assert not (tmp_path / "ignored").exists()
    a, ckpt_a = _weights(straight["last_ckpt"])
    b, ckpt_b = _weights(resumed["last_ckpt"])
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == (10 if model == "gan" else 6)
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], after_one[k])]
    assert changed, "the second epoch must change the weights"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # the same metrics too: the validation loss of epoch 2 is identical
    assert straight["metrics"]["val/loss"] == resumed["metrics"]["val/loss"]


def test_last_checkpoint_follows_training_when_validation_does_not_improve(tmp_path, cache_dir):
    """lr=0 keeps val/loss constant after epoch 0: best.ckpt stays at epoch 0, last.ckpt moves on
    (Lightning >= 2.6 only writes ``save_last`` alongside a new top-k checkpoint)."""
    result = _train(
        tmp_path, ["model=regression", "optimizer.lr=0", "trainer.max_epochs=3"], logger="none"
    )
    _, last = _weights(result["last_ckpt"])
    _, best = _weights(result["best_ckpt"])
    assert (last["epoch"], last["global_step"]) == (2, 9)
    assert (best["epoch"], best["global_step"]) == (0, 3)


def test_resume_missing_dir_is_a_user_error(tmp_path, cache_dir):
    cfg = compose_config(
        "train",
        [*COMMON, "logger=csv", f"paths.output_dir={tmp_path}/x", f"resume={tmp_path}/missing"],
    )
    with pytest.raises(SystemExit) as info:
        run(cfg)
    assert info.value.code == 2
    assert not (tmp_path / "missing").exists()
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="cannot resume"):
        run.__wrapped__(cfg)


def test_resume_keeps_earlier_metrics(tmp_path, cache_dir):
    _train(tmp_path, ["trainer.max_epochs=1"])
    _train(tmp_path / "unused", ["trainer.max_epochs=2", f"resume={tmp_path}"])
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    epochs = [row.split(",")[header.index("epoch")] for row in lines[1:]]
    assert "0" in epochs and "1" in epochs


def test_resume_continues_the_same_wandb_run(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _train(tmp_path, ["trainer.max_epochs=1"], logger="wandb")
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    _train(tmp_path / "unused", ["trainer.max_epochs=2", f"resume={tmp_path}"], logger="wandb")
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<YYYYMMDD_HHMMSS>-<id>; W&B appends -1 when both runs start in the same second
    pattern = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?")
    assert len(runs) == 2 and all(pattern.fullmatch(name) for name in runs), (run_id, runs)


def test_a_failed_resume_does_not_restart_the_run_from_step_zero(tmp_path, cache_dir):
    """A resume that fails before the fit loop restores the training state (here the residual
    model refuses max_epochs within its regression stage, in on_fit_start) leaves an
    on_exception.ckpt at step 0, newer than last.ckpt. The next resume continues from last.ckpt:
    the further-along checkpoint, not the newer file."""
    residual = ["model=residual", "model.regression_epochs=1"]
    _train(tmp_path, [*residual, "trainer.max_epochs=2"])
    _, last = _weights(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6
    with pytest.raises(UserError, match="leaves no residual stage"):
        run.__wrapped__(
            compose_config(
                "train",
                [
                    *COMMON,
                    *residual,
                    "logger=csv",
                    f"paths.output_dir={tmp_path / 'unused'}",
                    "trainer.max_epochs=1",
                    f"resume={tmp_path}",
                ],
            )
        )
    _, failed = _weights(tmp_path / "checkpoints" / "on_exception.ckpt")
    assert failed["global_step"] == 0  # the state the next resume must not start from
    result = _train(tmp_path / "unused", [*residual, "trainer.max_epochs=3", f"resume={tmp_path}"])
    straight = _train(tmp_path / "straight", [*residual, "trainer.max_epochs=3"])
    resumed, _ = _weights(result["last_ckpt"])
    expected, _ = _weights(straight["last_ckpt"])
    for key in expected:  # one more epoch after step 6, as if never interrupted
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=key)


def test_an_unreadable_on_exception_checkpoint_is_passed_over(tmp_path, cache_dir):
    _train(tmp_path, ["trainer.max_epochs=1"])
    (tmp_path / "checkpoints" / "on_exception.ckpt").write_bytes(b"cut short by a kill")
    result = _train(tmp_path / "unused", ["trainer.max_epochs=2", f"resume={tmp_path}"])
    _, resumed = _weights(result["last_ckpt"])
    assert resumed["global_step"] == 6
