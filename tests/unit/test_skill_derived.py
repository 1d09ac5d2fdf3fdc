"""The skill bench's derived rows: conserved draws and member subsets come from their source row's
store, not from drawing again."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import xarray as xr

from bench.skill import run as skill
from downscale.sampling.constraints import Conservation
from downscale.sampling.driver import write_samples
from tests.conftest import synthetic_datamodule
from tests.unit.test_driver import GaussianModel, request, sampler

SOURCE_SECONDS = 6.0


def toy_suite(tmp_path, dm, samplings) -> skill.Suite:
    """A suite over the synthetic store, with the bench's outputs below ``tmp_path / "skill"``."""
    (tmp_path / "skill" / "stores").mkdir(parents=True)
    shutil.copytree(dm.store, tmp_path / "skill" / "stores" / "toy.zarr")
    return skill.Suite("toy", (), "toy.zarr", {"model": "demo"}, tuple(samplings), {}, "a grid")


def record_draw(suite, dm, sampling, seed: int = 7) -> int:
    """``sampling``'s store and timing record as the bench leaves them; returns the day count."""
    source = skill._samples_path(suite, sampling)
    attrs = {"sampler": "euler_ancestral", "seed": seed}
    req = request(source.parent, dm, n_members=sampling.n_members, seed=seed, attrs=attrs)
    write_samples(GaussianModel(), dm, sampler(), req, progress=False)
    n_days = len(dm.split_indices["test"])
    record = {
        "seconds": SOURCE_SECONDS,
        "nfe": 4,
        "n_members": sampling.n_members,
        "n_days": n_days,
        "overrides": skill._setting(skill._sample_overrides(suite, sampling, source, "test")),
    }
    (source.parent / "timing.json").write_text(json.dumps(record))
    return n_days


def test_a_conserved_row_is_its_free_draws_conserved(tmp_path, monkeypatch):
    dm = synthetic_datamodule(tmp_path / "cache", 20, {"train": [0.0, 0.5], "test": [0.5, 1.0]})
    monkeypatch.setattr(skill, "OUT", tmp_path / "skill")
    free = skill.Sampling("free draws", "model", ("sampler=euler",), 3)
    derived = skill._conserved(free)
    assert derived.name == "free draws, conserved"
    assert derived.overrides == ("sampler=euler", "conserve=multiplicative")
    suite = toy_suite(tmp_path, dm, (free, derived))
    n_days = record_draw(suite, dm, free)

    out = skill._samples_path(suite, derived)
    info = skill._sample(suite, derived, out, "test", 3)

    drawn = request(tmp_path / "drawn", dm)  # the same request, drawn with the constraint
    constraint = Conservation(dm.ds, dm.targets, "multiplicative")
    write_samples(GaussianModel(), dm, sampler(), drawn, progress=False, constraint=constraint)
    np.testing.assert_array_equal(
        xr.open_zarr(out, consolidated=False).precip.values,
        xr.open_zarr(drawn.out, consolidated=False).precip.values,
    )
    assert info["derived_from"] == "free draws" and info["nfe"] == 4
    assert info["seconds"] == SOURCE_SECONDS + info["derive_seconds"] > SOURCE_SECONDS
    assert info["seconds_per_member_day"] == info["seconds"] / (3 * n_days)
    assert "conserve=multiplicative" in info["overrides"]
    assert skill._sample(suite, derived, out, "test", 3) == info  # reused, not derived again


def test_a_smaller_row_is_the_first_members_of_a_larger_draw(tmp_path, monkeypatch):
    dm = synthetic_datamodule(tmp_path / "cache", 20, {"train": [0.0, 0.5], "test": [0.5, 1.0]})
    monkeypatch.setattr(skill, "OUT", tmp_path / "skill")
    big = skill.Sampling("three members", "model", ("sampler=euler",), 3)
    small = skill._first_members(big, "two members", 2)
    suite = toy_suite(tmp_path, dm, (small, big))
    record_draw(suite, dm, big)

    out = skill._samples_path(suite, small)
    info = skill._sample(suite, small, out, "test", 2)

    drawn = request(tmp_path / "two", dm, n_members=2)  # an independent 2-member draw
    write_samples(GaussianModel(), dm, sampler(), drawn, progress=False)
    np.testing.assert_array_equal(
        xr.open_zarr(out, consolidated=False).precip.values,
        xr.open_zarr(drawn.out, consolidated=False).precip.values,
    )
    assert info["n_members"] == 2 and "n_members=2" in info["overrides"]
    # two thirds of the source's time, plus the copy
    assert info["seconds"] == pytest.approx(SOURCE_SECONDS * 2 / 3 + info["derive_seconds"])
    too_many = skill._first_members(big, "four members", 4)
    with pytest.raises(SystemExit, match="more members"):
        skill._sample(suite, too_many, skill._samples_path(suite, too_many), "test", 4)


def test_a_selected_row_samples_the_chosen_checkpoint_and_chooses_once_per_training(
    tmp_path, monkeypatch
):
    """A row with checkpoint="selected" samples <suite>/select/<model>/selected.ckpt; the choice
    runs downscale.select once, is reused while the run's last.ckpt is the same, and runs again
    when the model was retrained. The select command is listed with the suite's commands."""
    from downscale import select

    monkeypatch.setattr(skill, "OUT", tmp_path / "skill")
    row = skill.Sampling("chosen", "model", ("sampler=euler",), 2, checkpoint="selected")
    suite = skill.Suite(
        "toy", (), "toy.zarr", {"model": "demo"}, (row,), {}, "a grid",
        checkpoint_choice=("n_members=2",),
    )  # fmt: skip
    last = skill._train_dir(suite, "model") / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"first training")
    calls = []

    def fake_select(cfg):
        calls.append((cfg.run_dir, cfg.n_members))
        return {"best": {"label": "epoch-0009"}, "seconds": 3.0}

    monkeypatch.setattr(select, "run", fake_select)
    overrides = skill._sample_overrides(suite, row, tmp_path / "s.zarr", "test")
    assert (
        overrides[0] == f"ckpt={tmp_path / 'skill' / 'toy' / 'select' / 'model' / 'selected.ckpt'}"
    )
    skill._select(suite, "model")
    skill._select(suite, "model")
    assert calls == [(str(skill._train_dir(suite, "model")), 2)]
    last.write_bytes(b"retrained")
    skill._select(suite, "model")
    assert len(calls) == 2
    assert any(
        line.startswith("python -m downscale.select run_dir=") for line in skill._commands(suite)
    )


def test_the_gcm_draw_takes_the_drizzle_threshold_fitted_for_the_reanalysis_draw(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(skill, "OUT", tmp_path / "skill")
    core = skill.Sampling("core", "model", ("sampler=euler", "dry.threshold=auto"), 8)
    suite = dataclasses.replace(
        skill.Suite("toy", (), "toy.zarr", {"model": "demo"}, (core,), {}, "a grid"),
        gcm_sampling="core",
    )
    # before the reanalysis draw there is no value to take
    assert skill._gcm_job(suite).overrides == core.overrides
    fitted = {"threshold": 1.25, "fit_split": "val", "wet_day": 1.0}
    xr.Dataset(attrs={"dry": json.dumps(fitted)}).to_zarr(
        skill._samples_path(suite, core), consolidated=False
    )
    job = skill._gcm_job(suite)
    assert job.overrides == ("sampler=euler", "dry.threshold=1.25")
    assert (job.name, job.n_members) == ("core", skill.GCM_MEMBERS)


def test_a_pooled_row_is_half_of_each_sources_draws(tmp_path, monkeypatch):
    dm = synthetic_datamodule(tmp_path / "cache", 20, {"train": [0.0, 0.5], "test": [0.5, 1.0]})
    monkeypatch.setattr(skill, "OUT", tmp_path / "skill")
    first = skill.Sampling("first training", "model", ("sampler=euler",), 4)
    second = skill.Sampling("second training", "other", ("sampler=euler", "seed=1"), 2)
    pooled = skill._pooled("both", (first, second), 4)
    suite = dataclasses.replace(
        toy_suite(tmp_path, dm, (first, second, pooled)),
        models={"model": "demo", "other": "demo seed=1"},
    )
    record_draw(suite, dm, first, seed=0)
    record_draw(suite, dm, second, seed=1)
    for model, seconds in (("model", 10.0), ("other", 20.0)):
        summary = skill._train_dir(suite, model) / "summary.json"
        summary.parent.mkdir(parents=True)
        summary.write_text(json.dumps({"train_seconds": seconds}))

    out = skill._samples_path(suite, pooled)
    info = skill._sample(suite, pooled, out, "test", 4)

    values = xr.open_zarr(out, consolidated=False).precip.values
    halves = [
        xr.open_zarr(skill._samples_path(suite, s), consolidated=False).precip.values[:2]
        for s in (first, second)
    ]
    np.testing.assert_array_equal(values, np.concatenate(halves))
    # half of the first draw's time, all of the second's, plus the pooling
    assert info["seconds"] == pytest.approx(SOURCE_SECONDS * (2 / 4 + 2 / 2), abs=5.0)
    assert info["seconds"] > SOURCE_SECONDS * 1.5
    assert skill._train_seconds(suite, pooled) == 30.0  # both trainings
    monkeypatch.setattr(skill, "ABLATIONS", True)  # pooled rows are ablations
    (command,) = [c for c in skill._commands(suite) if "downscale.pool" in c]
    assert "n_members=2" in command and "second_training" in command
    odd = skill._pooled("odd", (first, second), 3)
    with pytest.raises(SystemExit, match="do not split over its sources"):
        skill._sample(suite, odd, skill._samples_path(suite, odd), "test", 3)


def test_training_resumes_an_interrupted_run_and_force_keeps_the_old_one(tmp_path, monkeypatch):
    """stage_train: a run dir with checkpoints but no summary.json continues (resume=), a finished
    one is reused, and --force trains afresh after moving the old run aside (train.run refuses a
    dir with checkpoints)."""
    from downscale import train

    monkeypatch.setattr(skill, "OUT", tmp_path / "skill")
    row = skill.Sampling("row", "model", ("sampler=euler",), 2)
    suite = skill.Suite("toy", (), "toy.zarr", {"model": "demo"}, (row,), {}, "a grid")
    run_dir = skill._train_dir(suite, "model")
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"interrupted")
    calls = []

    def fake_train(cfg):
        calls.append(cfg.get("resume"))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text("{}")
        return {"summary": {"train_seconds": 1.0}}

    monkeypatch.setattr(train, "run", fake_train)
    skill.stage_train(suite, None, force=False)
    skill.stage_train(suite, None, force=False)
    assert calls == [str(run_dir)]
    skill.stage_train(suite, None, force=True)
    assert calls == [str(run_dir), None]
    (old,) = run_dir.parent.glob("model.replaced-*")
    assert (old / "checkpoints" / "last.ckpt").read_bytes() == b"interrupted"


def test_rows_with_selects_sampler_fit_their_drizzle_threshold_on_its_draw(tmp_path, monkeypatch):
    """The Iberia core rows (select's sampler, either sampling seed) fit dry.threshold=auto on the
    validation draw downscale.select made of the checkpoint it chose; the dpm2_heun row, another
    sampler, draws its own. The path is not part of a draw's recorded setting."""
    monkeypatch.setattr(skill, "OUT", tmp_path / "skill")
    suite = skill.SUITES["iberia"]
    chosen = {"best": {"label": "epoch-0049"}}
    first, second, reference = skill._IBERIA_CORE.rows[2:]
    draws = tmp_path / "skill" / "iberia" / "select"
    for row in (first, second):
        (given,) = skill._fit_on_choice(suite, row, chosen)
        assert given == (
            f"dry.fit_store={draws / row.model / 'draws' / 'epoch-0049' / 'samples.zarr'}"
        )
        assert skill._setting([*row.overrides, given]) == list(row.overrides)
    assert "sampler=dpm2_heun" in reference.overrides
    assert skill._fit_on_choice(suite, reference, chosen) == ()
    no_drizzle = dataclasses.replace(
        first, overrides=tuple(o for o in first.overrides if o != skill._DRY)
    )
    assert skill._fit_on_choice(suite, no_drizzle, chosen) == ()
    # the listed commands name the draw (before the choice is made: a placeholder label)
    fit_stores = [c for c in skill._commands(suite) if "dry.fit_store=" in c]
    assert len(fit_stores) == 2 and all("<label selected>" in c for c in fit_stores)
