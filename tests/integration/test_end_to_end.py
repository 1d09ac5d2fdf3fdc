"""train -> sample -> evaluate on tiny synthetic data through the entry points' run(cfg)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from downscale import evaluate, sample, select
from downscale.sampling.driver import SampleRequest, write_samples
from downscale.sampling.dry import fit_dry_threshold
from downscale.utils.checkpoint import build_model, load_checkpoint
from tests.conftest import compose_config, tiny_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with tiny_training(tmp_path_factory, "e2e", "trainer.max_epochs=25", "model.ema.decay=0.9") as (
        root,
        result,
    ):
        yield root, result


def sample_cfg(root, run_dir, name, *extra):
    return compose_config(
        "sample",
        [
            f"paths.output_dir={root / name}",
            f"run_dir={run_dir}",
            "sampler=heun",
            "sampler.steps=6",
            "n_members=4",
            "block_size=4",
            *extra,
        ],
    )


def test_train_writes_checkpoints_and_csv_metrics(trained):
    root, result = trained
    assert result["last_ckpt"].is_file() and result["best_ckpt"].is_file()
    metrics = (result["run_dir"] / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics
    checkpoint = load_checkpoint(result["last_ckpt"])  # weights_only=True
    info = checkpoint["downscale"]
    assert set(info["scalers"]) == {"precip", "coarse_precip", "coarse_humidity", "static_terrain"}
    assert info["channels"] == {"out_channels": 1, "cond_channels": 3}
    assert any(k.startswith("ema.") for k in checkpoint["state_dict"])


def test_sample_store_has_the_contracted_layout_and_units(trained):
    root, result = trained
    out = sample.run(sample_cfg(root, result["run_dir"], "sample"))
    ds = xr.open_zarr(out["path"], consolidated=False)
    assert ds.precip.dims == ("member", "time", "lat", "lon")
    assert ds.sizes["member"] == 4
    assert ds.precip.attrs["units"] == "mm/day"
    assert {"checkpoint_sha256", "sampler", "schedule", "seed", "nfe"} <= set(ds.attrs)
    assert out["nfe"] == ds.attrs["nfe"] == 2 * 6 - 1  # Heun: 2 evaluations per step, 1 on the last
    obs = xr.open_zarr(ds.attrs["obs_store"], consolidated=False)
    np.testing.assert_array_equal(ds.lat.values, obs.lat.values)
    valid = obs.valid_mask.values.astype(bool)
    values = ds.precip.values
    assert np.isnan(values[..., ~valid]).all() and np.isfinite(values[..., valid]).all()
    metrics = json.loads(out["metrics_path"].read_text())
    for key in ("crps", "mae", "rmse", "bias", "ralsd"):
        assert np.isfinite(metrics[key]), key
    assert (out["metrics_path"].parent / "figures").is_dir()


def test_schedule_follows_the_models_sigma_data(trained):
    """schedule_sigma_data=0.5 samples with sigma_max 80 x sigma_data / 0.5 (sigma_min as
    written): the same draws as that schedule written out by hand with the scaling off (the
    default)."""
    root, result = trained
    config = load_checkpoint(result["last_ckpt"])["downscale"]["config"]
    sigma_data = float(config["model"]["precond"]["sigma_data"])  # auto, measured at training
    assert 0 < sigma_data < 0.45
    scale = sigma_data / 0.5

    def draw(name, *extra):
        out = sample.run(sample_cfg(root, result["run_dir"], name, "evaluate=false", *extra))
        return xr.open_zarr(out["path"], consolidated=False)

    scaled = draw("scaled", "schedule_sigma_data=0.5")
    by_hand = draw("by_hand", f"schedule.sigma_max={80.0 * scale!r}")
    raw = draw("raw")
    assert scaled.attrs["schedule_scale"] == pytest.approx(scale)
    assert "schedule_scale" not in by_hand.attrs and "schedule_scale" not in raw.attrs
    np.testing.assert_allclose(scaled.precip.values, by_hand.precip.values, rtol=1e-4, atol=1e-4)
    assert not np.allclose(scaled.precip.values, raw.precip.values, equal_nan=True)
    with pytest.raises(SystemExit) as exit_info:  # sigma_max x scale would fall below sigma_min
        draw("too_low", "schedule_sigma_data=0.5", f"schedule.sigma_min={80.0 * scale * 1.1!r}")
    assert exit_info.value.code == 2


def test_bf16_mixed_sampling_is_recorded_and_close_to_float32(trained):
    """precision=bf16-mixed runs the trained net under autocast: the store records it (so a
    float32 store is never resumed as a bf16 one), and its draws (same seeds) stay close to the
    float32 ones."""
    root, result = trained

    def draw(name, *extra):
        out = sample.run(sample_cfg(root, result["run_dir"], name, "evaluate=false", *extra))
        return xr.open_zarr(out["path"], consolidated=False)

    # 2 members: bf16 is slow on CPUs without bf16 instructions (35x on these)
    exact = draw("fp32", "n_members=2")
    mixed = draw("bf16", "n_members=2", "precision=bf16-mixed")
    assert "precision" not in exact.attrs and mixed.attrs["precision"] == "bf16-mixed"
    assert exact.attrs["request_key"] != mixed.attrs["request_key"]
    a, b = exact.precip.values, mixed.precip.values
    assert not np.array_equal(a, b, equal_nan=True)
    # measured: 1.4% of the members' spread (bf16 keeps 8 significant bits of each net output)
    spread = np.nanmean(exact.precip.std("member").values)
    assert np.nanmean(np.abs(a - b)) < 0.05 * spread


def test_conserve_gives_each_member_the_coarse_cell_means(trained):
    """conserve=multiplicative: the same draws rescaled per coarse cell; every member's area mean
    over a cell's land pixels is the store's coarse_precip, and the store records the option."""
    root, result = trained
    raw = sample.run(sample_cfg(root, result["run_dir"], "free", "evaluate=false"))
    out = sample.run(
        sample_cfg(root, result["run_dir"], "kept", "evaluate=false", "conserve=multiplicative")
    )
    ds = xr.open_zarr(out["path"], consolidated=False)
    free = xr.open_zarr(raw["path"], consolidated=False).precip.values
    assert ds.attrs["conserve"] == "multiplicative"
    obs = xr.open_zarr(ds.attrs["obs_store"], consolidated=False)
    factor = obs.sizes["lat"] // obs.sizes["lat_coarse"]
    valid = obs.valid_mask.values.astype(bool)
    w = np.cos(np.deg2rad(obs.lat.values))[:, None] * valid

    def cell_means(a):
        m, t, ny, nx = a.shape
        shape = (ny // factor, factor, nx // factor, factor)
        num = (np.nan_to_num(a) * w).reshape(m, t, *shape).sum((-3, -1))
        return num / np.where(w.reshape(shape).sum((1, 3)) > 0, w.reshape(shape).sum((1, 3)), 1)

    land = w.reshape(ny := obs.sizes["lat_coarse"], factor, -1, factor).sum((1, 3)) > 0
    assert ny > 1
    coarse = obs.coarse_precip.values[ds.time_index.values]
    kept = cell_means(ds.precip.values)
    np.testing.assert_allclose(
        kept[..., land], np.broadcast_to(coarse, kept.shape)[..., land], rtol=1e-4, atol=1e-4
    )
    assert not np.allclose(cell_means(free)[..., land], kept[..., land], atol=1e-2)


def test_dry_threshold_auto_fits_on_the_validation_draw_and_zeroes_the_drizzle(trained):
    """dry.threshold=auto: a draw of the val split (kept next to out=) fixes the value its members
    exceed as often as the observations reach dry.wet_day; the test draw is the unconstrained one
    with every value below it set to 0, and the store records the fit."""
    root, result = trained
    raw = sample.run(sample_cfg(root, result["run_dir"], "free", "evaluate=false"))
    out = sample.run(
        sample_cfg(root, result["run_dir"], "dry", "evaluate=false", "dry.threshold=auto")
    )
    ds = xr.open_zarr(out["path"], consolidated=False)
    record = json.loads(ds.attrs["dry"])
    assert record["fit_split"] == "val" and record["wet_day"] == 1.0
    threshold = record["threshold"]
    fit = xr.open_zarr(out["path"].with_name("samples_dry_fit_val.zarr"), consolidated=False)
    assert fit.attrs["split"] == "val" and "dry" not in fit.attrs
    obs = xr.open_zarr(ds.attrs["obs_store"], consolidated=False).precip
    wet = (obs.isel(time=fit.time_index.values).values >= 1.0)[fit.precip.notnull().values[0]]
    assert record["obs_wet_frequency"] == pytest.approx(wet.mean(), abs=1e-6)
    members = fit.precip.values[np.isfinite(fit.precip.values)]
    assert (members >= threshold).mean() == pytest.approx(wet.mean(), abs=0.01)
    assert threshold > 0
    free = xr.open_zarr(raw["path"], consolidated=False).precip.values
    np.testing.assert_array_equal(ds.precip.values, np.where(free < threshold, 0.0, free))
    assert ((free > 0) & (free < threshold)).any()  # the correction had drizzle to remove


def test_dry_threshold_auto_fits_on_a_given_draw_of_the_split_without_drawing_again(trained):
    """dry.fit_store: the threshold is fitted on a finished draw of the fit split with the same
    checkpoint and sampler (another seed and member count), as fit_dry_threshold gives on it."""
    root, result = trained
    given = sample.run(
        sample_cfg(
            root,
            result["run_dir"],
            "val_draw",
            "evaluate=false",
            "split=val",
            "seed=3",
            "n_members=2",
        )
    )
    out = sample.run(
        sample_cfg(
            root,
            result["run_dir"],
            "dry_given",
            "evaluate=false",
            "dry.threshold=auto",
            f"dry.fit_store={given['path']}",
        )
    )
    assert out["dry_fit_seconds"] == 0.0
    assert not out["path"].with_name("samples_dry_fit_val.zarr").exists()  # nothing drawn
    ds = xr.open_zarr(out["path"], consolidated=False)
    record = json.loads(ds.attrs["dry"])
    assert (record["fit_store"], record["fit_members"], record["fit_seed"]) == (
        str(given["path"]),
        2,
        3,
    )
    fit = xr.open_zarr(given["path"], consolidated=False)
    obs = xr.open_zarr(ds.attrs["obs_store"], consolidated=False).precip
    expected, _ = fit_dry_threshold(
        fit.precip.values, obs.isel(time=fit.time_index.values).values, wet_day=1.0
    )
    assert record["threshold"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("draw_overrides", "message"),
    [
        (["split=val", "sampler.steps=5"], "differs from this fit in sampler ("),
        (["split=test"], "differs from this fit in split ("),
    ],
)
def test_dry_fit_store_must_be_drawn_like_the_fit(trained, draw_overrides, message, capsys):
    root, result = trained
    name = "other_" + "_".join(o.replace("=", "").replace(".", "") for o in draw_overrides)
    other = sample.run(
        sample_cfg(root, result["run_dir"], name, "evaluate=false", "n_members=1", *draw_overrides)
    )
    cfg = sample_cfg(
        root,
        result["run_dir"],
        f"refused_{name}",
        "dry.threshold=auto",
        f"dry.fit_store={other['path']}",
    )
    with pytest.raises(SystemExit) as exit_info:
        sample.run(cfg)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (root / f"refused_{name}").exists()


@pytest.mark.parametrize(("made", "message"), [(False, "does not exist"), (True, "not a samples")])
def test_dry_fit_store_must_be_a_samples_store(trained, tmp_path, made, message, capsys):
    root, result = trained
    given = tmp_path / "not_a_store.zarr"
    if made:
        given.mkdir()
    cfg = sample_cfg(
        root, result["run_dir"], f"no_store_{made}", "dry.threshold=auto", f"dry.fit_store={given}"
    )
    with pytest.raises(SystemExit) as exit_info:
        sample.run(cfg)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (root / f"no_store_{made}").exists()


@pytest.mark.parametrize("threshold", ["auto", "0.5"])
def test_dry_variables_must_name_a_predictand(trained, threshold):
    root, result = trained
    cfg = sample_cfg(
        root,
        result["run_dir"],
        f"dry_{threshold}",
        f"dry.threshold={threshold}",
        "dry.variables=[tas]",
    )
    with pytest.raises(SystemExit) as exit_info:
        sample.run(cfg)
    assert exit_info.value.code == 2
    assert not (root / f"dry_{threshold}").exists()  # refused before anything was drawn


def test_trained_model_beats_an_untrained_one_on_crps(trained):
    root, result = trained
    checkpoint = load_checkpoint(result["last_ckpt"])
    # a stable sampler: heun at 6 steps can overshoot on a model this small (scaled values of a few
    # units are 10^(2x) mm/day after the log scaler's inverse)
    cfg = sample_cfg(
        root, result["run_dir"], "trained", "evaluate=false", "sampler=euler", "sampler.steps=20"
    )
    trained_out = sample.run(cfg)
    untrained = build_model(checkpoint["downscale"]["config"], checkpoint["downscale"]["channels"])
    datamodule = sample.build_datamodule(checkpoint, None)
    request = SampleRequest(
        out=root / "untrained" / "samples.zarr",
        times=datamodule.split_indices["test"],
        n_members=4,
        seed=0,
        block_size=4,
        attrs={"obs_store": datamodule.store},
    )
    untrained_out = write_samples(untrained.eval(), datamodule, sample.build_sampler(cfg), request)
    scores = {
        name: evaluate.evaluate_store(
            out["path"], datamodule.store, cfg.evaluation, root / f"eval-{name}"
        )
        for name, out in {"trained": trained_out, "untrained": untrained_out}.items()
    }
    assert scores["trained"]["crps"] < 0.8 * scores["untrained"]["crps"]


def test_select_keeps_the_checkpoint_whose_validation_draw_scores_best(trained):
    """Two candidates, the trained checkpoint and the same one with untrained weights (and a copy
    of that, skipped as the same training step): each draws the val split, its CRPS is
    xskillscore's over the valid cells, and the trained one is copied to selected.ckpt."""
    import xskillscore as xs

    root, result = trained
    checkpoint = load_checkpoint(result["last_ckpt"])
    untrained = build_model(checkpoint["downscale"]["config"], checkpoint["downscale"]["channels"])
    blank = root / "blank" / "untrained.ckpt"
    blank.parent.mkdir()
    torch.save({**checkpoint, "state_dict": untrained.state_dict()}, blank)
    copy = blank.with_name("untrained_copy.ckpt")  # the same run and step: drawn once
    copy.write_bytes(blank.read_bytes())
    out = root / "select"
    cfg = compose_config(
        "select",
        [
            f"paths.output_dir={out}",
            f"candidates=[{result['last_ckpt']},{blank},{copy}]",
            "sampler=euler",
            "sampler.steps=20",
            "n_members=4",
            "block_size=4",
        ],
    )
    selection = select.run(cfg)
    assert len(selection["candidates"]) == 2
    for row in selection["candidates"]:
        draw = out / "draws" / row["label"].replace("/", "__") / "samples.zarr"
        assert row["draw"] == str(draw) == str(select.draw_path(out, row["label"]))
        samples = xr.open_zarr(draw, consolidated=False)
        assert samples.attrs["split"] == "val"
        obs = xr.open_zarr(samples.attrs["obs_store"], consolidated=False).precip
        obs = obs.isel(time=samples.time_index.values).assign_coords(time=samples.time)
        expected = xs.crps_ensemble(obs, samples.precip, member_dim="member", dim=[])
        assert row["crps"] == pytest.approx(float(expected.mean(skipna=True)), rel=1e-5)
    assert selection["best"]["checkpoint"] == str(result["last_ckpt"].resolve())
    assert (out / "selected.ckpt").read_bytes() == result["last_ckpt"].read_bytes()
    saved = json.loads((out / "selection.json").read_text())
    assert saved["best"]["crps"] < min(r["crps"] for r in saved["candidates"] if r != saved["best"])
    # the chosen checkpoint's rows can fit their drizzle threshold on its validation draw
    chosen = sample.run(
        compose_config(
            "sample",
            [
                f"paths.output_dir={root / 'chosen'}",
                f"ckpt={out / 'selected.ckpt'}",
                "sampler=euler",
                "sampler.steps=20",
                "n_members=2",
                "block_size=4",
                "evaluate=false",
                "dry.threshold=auto",
                f"dry.fit_store={saved['best']['draw']}",
            ],
        )
    )
    record = json.loads(xr.open_zarr(chosen["path"], consolidated=False).attrs["dry"])
    assert (record["fit_store"], record["fit_members"]) == (saved["best"]["draw"], 4)


def test_rerun_with_the_same_out_skips_finished_work(trained):
    root, result = trained
    cfg = sample_cfg(root, result["run_dir"], "rerun", "evaluate=false")
    first = sample.run(cfg)
    again = sample.run(cfg)
    assert first["blocks_computed"] > 0 and again["blocks_computed"] == 0
    assert first["device"] == f"cpu ({torch.get_num_threads()} threads)" and again["device"] is None


def test_a_finished_store_of_another_tiling_is_not_taken_for_this_one(trained, capsys):
    """The tiling is part of a draw's request: rerunning into the same out= with another overlap
    is refused (before, the first store came back as if it were the second's)."""
    root, result = trained
    tiled = ("evaluate=false", "n_members=1", "tiling=default", "tiling.tile=16")
    first = sample.run(sample_cfg(root, result["run_dir"], "tiled", *tiled, "tiling.overlap=8"))
    record = json.loads(xr.open_zarr(first["path"], consolidated=False).attrs["tiling"])
    assert (record["tile"], record["overlap"]) == (16, 8) and "max_batch" not in record
    # max_batch only chunks the work: a rerun with a lower one (after an OOM) is the same request
    again = sample.run(
        sample_cfg(
            root, result["run_dir"], "tiled", *tiled, "tiling.overlap=8", "tiling.max_batch=2"
        )
    )
    assert again["blocks_computed"] == 0
    with pytest.raises(SystemExit) as exit_info:
        sample.run(sample_cfg(root, result["run_dir"], "tiled", *tiled, "tiling.overlap=4"))
    assert exit_info.value.code == 2
    assert "already holds samples of a different request" in capsys.readouterr().err


def test_sampler_sweep_writes_a_summary_at_the_sweep_root(trained):
    import os
    import subprocess
    import sys

    import pandas as pd

    from tests.conftest import REPO

    root, result = trained
    sweep = root / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable,
        "-m",
        "downscale.sample",
        "-m",
        f"run_dir={result['run_dir']}",
        "sampler=euler,heun",
        "sampler.steps=2,4",
        "n_members=2",
        "schedule_sigma_data=0.5",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 4 and set(table["sampler"]) == {"euler", "heun"}
    assert sorted(table["nfe"]) == [2, 3, 4, 7]  # euler: steps; heun: 2 steps - 1
    assert table["crps"].notna().all()
    assert table["schedule.scale"].between(0, 1, inclusive="neither").all()  # sigma_data < 0.5
    assert len({*table["job"]}) == 4  # distinct job dirs
    assert (sweep / "summary.md").is_file() and (sweep / "report.html").is_file()
    assert (sweep / "sweep_crps_vs_nfe.png").is_file()


def test_default_evaluation_scores_the_baselines_beside_the_model(trained):
    """sample.py records the training days; evaluation=default then scores all five baselines on
    the samples' days, and the report shows them beside the model."""
    root, result = trained
    cfg = sample_cfg(
        root,
        result["run_dir"],
        "default-eval",
        "evaluation=default",
        "evaluation.wandb=false",
        "evaluation.baselines.analogs.k=4",
        "evaluation.baselines.rainfarm.n_members=4",
    )
    out = sample.run(cfg)
    ds = xr.open_zarr(out["path"], consolidated=False)
    datamodule = sample.build_datamodule(load_checkpoint(result["last_ckpt"]), None)
    train = json.loads(ds.attrs["train_time_index"])
    assert train == datamodule.split_indices["train"].tolist()
    assert set(train).isdisjoint(ds.time_index.values.tolist())
    out_dir = out["metrics_path"].parent
    card = json.loads((out_dir / "scorecard.json").read_text())
    assert list(card) == ["model", "bilinear", "bicubic", "nearest", "analogs", "rainfarm", "ridge"]
    for name in ("bilinear", "bicubic", "nearest"):  # one member: CRPS is the MAE
        assert card[name]["crps"] == pytest.approx(card[name]["mae"], rel=1e-6), name
    for name in (
        "model",
        "analogs",
        "rainfarm",
        "ridge",
    ):  # spread: CRPS = MAE - E|X - X'| / 2 < MAE
        assert card[name]["crps"] < card[name]["mae"], name
    assert card["model"]["crps"] == pytest.approx(out["metrics"]["crps"])
    html = (out_dir / "report.html").read_text()
    assert all(f"<th>{name}</th>" in html for name in card)
    assert {"time_lapse.png", "annual_max_bias_maps.png"} <= {
        p.name for p in (out_dir / "figures").glob("*.png")
    }
