"""The skill benchmark's wiring (bench/skill/run.py) on the real Iberia data, a few steps of each stage:
build, train, fast-sampler sweep, sample, evaluate with baselines, GCM application, report."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import xarray as xr

from bench.skill import run as skill
from tests.conftest import shared_data_root

pytestmark = pytest.mark.slow


def test_skill_pipeline_runs_on_iberia(tmp_path, monkeypatch):
    root = shared_data_root()
    if root is None:
        pytest.skip("../shared/data is absent (set DOWNSCALE_DATA_ROOT to run tests on real data)")
    monkeypatch.setenv("DOWNSCALE_DATA_ROOT", str(root))
    monkeypatch.setattr(skill, "OUT", tmp_path / "skill")
    monkeypatch.setattr(skill, "RESULTS_JSON", tmp_path / "skill.json")
    monkeypatch.setattr(skill, "RESULTS_MD", tmp_path / "results.md")
    euler = ("sampler=euler", "sampler.steps=2")
    base = skill.SUITES["iberia"]
    suite = dataclasses.replace(
        base,
        models={"edm": "iberia_edm optimizer.lr=5e-4"},  # an experiment and its own overrides
        samplings=(skill.Sampling("EDM euler 2", "edm", euler, 2),),
        baselines={
            k: v for k, v in base.baselines.items() if k.startswith(("bilinear", "analogs"))
        },
        fast_candidates=(euler,),
        gcm_sampling="EDM euler 2",
        train_overrides=("trainer.max_epochs=1", "trainer.limit_train_batches=2"),
        split="val",  # 90 days instead of 450
    )
    monkeypatch.setattr(skill, "SUITES", {"iberia": suite})

    assert skill.main(["--suite", "iberia", "--ablations"]) == 0  # with the validation sweep

    data = json.loads((tmp_path / "skill.json").read_text())
    scores = data["suites"]["iberia"]["scores"]
    assert scores["n_test_days"] == 90  # DJF 1996/97
    methods = scores["methods"]
    fast = "EDM euler 2 (2 NFE)"  # the fast sampler chosen on val, at 2 and at 8 members
    assert set(methods) == {*suite.baselines, "EDM euler 2", fast, f"{fast}, 2 members"}
    assert methods[fast]["n_members"] == 8
    # one member: the CRPS is the MAE
    bilinear = methods["bilinear NCEP pr"]
    assert bilinear["crps"] == pytest.approx(bilinear["mae_ensmean"], rel=1e-6)
    edm = methods["EDM euler 2"]
    assert edm["n_members"] == 2 and edm["nfe"] == 2 and edm["train_seconds"] > 0
    assert edm["train_device"].startswith("cpu (") and edm["sample_device"].startswith("cpu (")
    hparams = (tmp_path / "skill" / "iberia" / "train" / "edm" / "hparams.yaml").read_text()
    assert "lr: 0.0005" in hparams
    assert all(math.isfinite(edm[k]) for k in ("crps", "ralsd", "spread_skill", "q99"))
    samples = xr.open_zarr(
        tmp_path / "skill" / "iberia" / "samples" / "edm_euler_2" / "samples.zarr",
        consolidated=False,
    )["precip"]
    assert samples.sizes["time"] == 90 and float(samples.min()) >= 0.0
    gcm = data["suites"]["iberia"]["gcm"]["summary"]
    assert 0.0 < gcm["E-OBS (observed)"]["wet_day_frequency"] < 1.0
    assert gcm["E-OBS (observed)"]["spectral_rms_db"] == pytest.approx(0.0, abs=1e-9)
    text = (tmp_path / "results.md").read_text()
    assert "| EDM euler 2 |" in text and data["commit"] in text
    assert "experiment=iberia_edm optimizer.lr=5e-4" in text
    assert f"- trained on {edm['train_device']}: every model row" in text

    # a rerun reuses every finished store; a changed setting under the same name is refused
    timing = tmp_path / "skill" / "iberia" / "samples" / "edm_euler_2" / "timing.json"
    recorded = timing.read_text()
    assert skill.main(["--suite", "iberia", "--stage", "sample"]) == 0
    assert timing.read_text() == recorded
    three = skill.Sampling("EDM euler 2", "edm", ("sampler=euler", "sampler.steps=3"), 2)
    changed = dataclasses.replace(suite, samplings=(three,))
    monkeypatch.setattr(skill, "SUITES", {"iberia": changed})
    with pytest.raises(SystemExit, match="sampler.steps=2.*not.*sampler.steps=3.*remove it"):
        skill.main(["--suite", "iberia", "--stage", "sample"])
