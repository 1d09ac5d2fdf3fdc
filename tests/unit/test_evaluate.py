"""downscale.evaluate.evaluate_store: baselines beside the model on the samples' days, documented
skips, and the W&B run of an evaluation."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from omegaconf import OmegaConf

from downscale.evaluate import evaluate_store, store_baselines
from downscale.evaluation.baselines import nearest_baseline
from downscale.evaluation.metrics import pixel
from downscale.sampling.driver import SampleRequest, write_samples
from tests.conftest import synthetic_datamodule

CONF = Path(__file__).resolve().parents[2] / "conf" / "evaluation"


class CoarsePlusNoise(torch.nn.Module):
    """A cheap stochastic "model": the upsampled coarse precipitation (scaled space) plus seeded
    Gaussian noise, one draw per (time, member) generator."""

    stochastic = True
    needs_sampler = False

    def generate(self, cond, n_members, *, sampler, generators, anchor=None):
        b, _, h, w = cond.shape
        noise = torch.stack([torch.randn(1, h, w, generator=g) for g in generators])
        return cond[:, None, :1] + 0.3 * noise.view(b, n_members, 1, h, w)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """A synthetic store (40 days, 16 x 16, x4) and 3-member samples of its test split."""
    root = tmp_path_factory.mktemp("evaluate")
    dm = synthetic_datamodule(root / "cache", 40, {"train": [0.0, 0.7], "test": [0.7, 1.0]})
    store = dm.store

    def draw(name: str, **attrs):
        request = SampleRequest(
            out=root / name / "samples.zarr",
            times=dm.split_indices["test"],
            n_members=3,
            seed=0,
            block_size=8,
            attrs={"obs_store": store, **attrs},
        )
        return write_samples(CoarsePlusNoise(), dm, None, request, progress=False)["path"]

    train = [int(i) for i in dm.split_indices["train"]]
    return {
        "root": root,
        "store": store,
        "dm": dm,
        "with_train": draw("with_train", train_time_index=train),
        "without_train": draw("without_train"),
    }


def _config(**changes):
    """Quick metrics, the default baselines (made small), no W&B unless asked."""
    cfg = OmegaConf.load(CONF / "quick.yaml")
    cfg.baselines = OmegaConf.load(CONF / "default.yaml").baselines
    cfg.baselines.analogs.k = 4
    cfg.baselines.rainfarm.n_members = 4
    cfg.baseline_metrics = None
    cfg.metrics.spread_skill = {
        "_target_": "downscale.evaluation.metrics.calibration.spread_skill",
        "_partial_": True,
    }
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_baselines_scored_beside_the_model_on_the_same_days_and_cells(sampled, tmp_path):
    flat = evaluate_store(sampled["with_train"], sampled["store"], _config(), tmp_path)
    card = json.loads((tmp_path / "scorecard.json").read_text())
    assert list(card) == ["model", "bilinear", "bicubic", "nearest", "analogs", "rainfarm", "ridge"]
    assert card["model"]["crps"] == pytest.approx(flat["crps"])
    html = (tmp_path / "report.html").read_text()
    for name in card:
        assert f"<th>{name}</th>" in html
    # a one-member baseline: CRPS is the MAE and there is no spread
    for name in ("bilinear", "bicubic", "nearest"):
        assert card[name]["crps"] == pytest.approx(card[name]["mae"], rel=1e-6), name
        assert card[name]["spread_skill"] is None, name  # undefined for one member
    # an ensemble with spread: CRPS = MAE - E|X - X'| / 2 < MAE
    for name in ("analogs", "rainfarm", "ridge", "model"):
        assert card[name]["crps"] < card[name]["mae"], name
        assert card[name]["spread_skill"] > 0, name
    # independent recomputation: the nearest baseline on the samples' days and the store's mask
    obs = xr.open_zarr(sampled["store"], consolidated=False)
    times = xr.open_zarr(sampled["with_train"], consolidated=False).time.values
    expected = pixel.mae(
        nearest_baseline(obs, times), obs.precip.sel(time=times), obs.valid_mask.astype(bool)
    )
    assert card["nearest"]["mae"] == pytest.approx(float(expected), rel=1e-5)
    assert "Skipped" not in html


def test_analogs_use_the_recorded_training_days(sampled):
    found, skipped = store_baselines(sampled["with_train"], sampled["store"], _config())
    assert not skipped
    train = set(sampled["dm"].ds.time.values[sampled["dm"].split_indices["train"]])
    test = set(found["analogs"].time.values)
    assert test.isdisjoint(train)
    # each member of an analog day is the precipitation of some training day
    store = xr.open_zarr(sampled["store"], consolidated=False)
    first = found["analogs"].isel(time=0, member=0).values
    matches = [
        t for t in train if np.allclose(store.precip.sel(time=t).values, first, equal_nan=True)
    ]
    assert len(matches) >= 1


def test_without_training_days_analogs_are_skipped_and_reported(sampled, tmp_path):
    evaluate_store(sampled["without_train"], sampled["store"], _config(), tmp_path)
    card = json.loads((tmp_path / "scorecard.json").read_text())
    assert "analogs" not in card and "ridge" not in card
    assert {"bilinear", "nearest", "rainfarm"} <= set(card)
    html = (tmp_path / "report.html").read_text()
    assert "Skipped" in html and "baseline analogs" in html and "training days" in html
    assert "baseline ridge" in html


def test_foreign_observations_skip_the_baselines_they_cannot_feed(sampled, tmp_path):
    """Observations without coarse fields: every baseline is skipped with the store's reason."""
    store = xr.open_zarr(sampled["store"], consolidated=False)
    obs_path = tmp_path / "obs.nc"
    store[["precip", "valid_mask"]].to_netcdf(obs_path)
    flat = evaluate_store(sampled["with_train"], obs_path, _config(), tmp_path / "out")
    card = json.loads((tmp_path / "out" / "scorecard.json").read_text())
    assert list(card) == ["model"] and np.isfinite(flat["crps"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "baseline bilinear" in html and "coarse_precip" in html
    assert "another store" in html  # analogs: the training days index the sampled store


def test_no_baselines_configured_gives_the_model_alone(sampled, tmp_path):
    cfg = _config()
    cfg.baselines = {}
    evaluate_store(sampled["with_train"], sampled["store"], cfg, tmp_path)
    assert list(json.loads((tmp_path / "scorecard.json").read_text())) == ["model"]


def test_wandb_disabled_starts_no_run(sampled, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = _config(wandb=True, baselines={})
    evaluate_store(sampled["with_train"], sampled["store"], cfg, tmp_path)
    assert not (tmp_path / "wandb").exists()


def _summary_records(run_file: Path) -> dict[str, str]:
    """Top-level summary updates (key -> value JSON) of an offline run's ``run-<id>.wandb``: a
    LevelDB-style log (7-byte file header, 32 KiB blocks, records of crc32 + uint16 length +
    uint8 type: 1 full, 2 first, 3 middle, 4 last) of wandb ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, part, out = run_file.read_bytes(), 7, 32768, b"", {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if (kind == 0 and length == 0) or pos + 7 + length > len(data):
            break  # end of the log, or a record still being written
        part += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "summary":
                out.update({u.key: u.value_json for u in record.summary.update if u.key})
    return out


@pytest.mark.slow
def test_wandb_offline_run_holds_the_summary(sampled, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _config(wandb=True, wandb_project="test")
    flat = evaluate_store(sampled["with_train"], sampled["store"], cfg, tmp_path)
    assert wandb.run is None  # finished
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    # wandb-core writes the offline run file asynchronously: finish() may return a moment before
    # the last records reach the disk, so poll (the run was finished above)
    deadline = time.monotonic() + 60
    while (
        "eval/crps" not in (summary := _summary_records(run_file)) and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    for key in ("crps", "mae", "ralsd", "n_days"):
        assert json.loads(summary[f"eval/{key}"]) == pytest.approx(flat[key]), key
    media = run_dir / "files" / "media"
    assert {
        p.name.split("_0_")[0] for p in (media / "images" / "eval" / "figures").glob("*.png")
    } == {
        "sample_panels",
        "spectra",
    }
    (table,) = (media / "table" / "eval").glob("scorecard_*.table.json")
    columns = json.loads(table.read_text())["columns"]
    assert columns == [
        "metric",
        "model",
        "bilinear",
        "bicubic",
        "nearest",
        "analogs",
        "rainfarm",
        "ridge",
    ]
