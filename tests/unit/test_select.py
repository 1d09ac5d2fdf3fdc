"""Checkpoint selection: which candidates are compared, and which are skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from downscale.select import candidate_paths, in_regression_stage, labels
from downscale.utils.errors import UserError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_a_run_offers_its_periodic_best_and_last_checkpoints(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    for name in (
        "epoch-0019.ckpt",
        "epoch-0009.ckpt",
        "best.ckpt",
        "last.ckpt",
        "on_exception.ckpt",
    ):
        _touch(folder / name)
    paths = candidate_paths(str(tmp_path / "run"), None)
    assert [p.name for p in paths] == [
        "epoch-0009.ckpt",
        "epoch-0019.ckpt",
        "best.ckpt",
        "last.ckpt",
    ]
    assert labels(paths) == ["epoch-0009", "epoch-0019", "best", "last"]


def test_candidates_expand_globs_across_runs_once_each(tmp_path):
    for run in ("seed0", "seed1"):
        _touch(tmp_path / run / "checkpoints" / "best.ckpt")
    pattern = str(tmp_path / "seed*" / "checkpoints" / "best.ckpt")
    paths = candidate_paths(None, [pattern, str(tmp_path / "seed0" / "checkpoints" / "best.ckpt")])
    assert len(paths) == 2
    assert labels(paths) == ["seed0/best", "seed1/best"]


@pytest.mark.parametrize(
    ("run_dir", "candidates", "message"),
    [
        (None, None, "give run_dir=<train run dir> or candidates"),
        ("missing", None, "run_dir has no checkpoints folder"),
        (None, ["nowhere/*.ckpt"], "nothing matches nowhere/*.ckpt"),
    ],
)
def test_nothing_to_choose_from_names_the_fix(run_dir, candidates, message):
    with pytest.raises(UserError, match=message.replace("*", r"\*")):
        candidate_paths(run_dir, candidates)


def _checkpoint(epoch, regression_epochs=None, flag=None):
    model = {} if regression_epochs is None else {"regression_epochs": regression_epochs}
    info = {"config": {"model": model}}
    if flag is not None:
        info["regression_stage"] = flag
    return {"epoch": epoch, "downscale": info}


def test_first_stage_checkpoints_are_recognised():
    assert in_regression_stage(_checkpoint(9, regression_epochs=25))  # older checkpoints: the epoch
    assert not in_regression_stage(_checkpoint(29, regression_epochs=25))
    assert not in_regression_stage(_checkpoint(3))  # not a two-stage model
    assert not in_regression_stage(
        _checkpoint(3, regression_epochs=10, flag=False)
    )  # its record wins
    assert in_regression_stage(_checkpoint(30, regression_epochs=10, flag=True))
