"""A learned location map end to end: patch training, then tiled sampling, through run(cfg)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from downscale import sample, train
from tests.conftest import TINY_DATA, compose_config, tiny_training

pytestmark = pytest.mark.slow

# the tiny synthetic domain is 32 x 32 (TINY_DATA), trained on 16 x 16 patches
LOCATION = ["net.location_channels=2", "net.location_size=[32,32]"]
MODELS = {
    "edm": [],
    "regression": ["model=regression"],
    "gan": ["model=gan", "model.warmup_steps=2"],
    "residual": ["model=residual", "model.regression_epochs=1", "trainer.max_epochs=2"],
}


@pytest.mark.filterwarnings("ignore:RegressionModel is deterministic")
@pytest.mark.parametrize("model", list(MODELS))
def test_patch_training_and_tiled_sampling_with_a_location_map(
    model, tmp_path_factory, monkeypatch
):
    with tiny_training(tmp_path_factory, "location", *LOCATION, *MODELS[model]) as (root, result):
        monkeypatch.setenv("DOWNSCALE_CACHE_DIR", str(root / "cache"))
        overrides = [
            f"run_dir={result['run_dir']}",
            "sampler=euler",
            "sampler.steps=3",
            "n_members=2",
            "evaluate=false",
            "tiling=default",
            "tiling.tile=16",
            "tiling.overlap=8",
        ]
        cfg = compose_config("sample", [f"paths.output_dir={root / 'sample'}", *overrides])
        out = sample.run(cfg)
    ds = xr.open_zarr(out["path"], consolidated=False)
    obs = xr.open_zarr(ds.attrs["obs_store"], consolidated=False)
    valid = obs.valid_mask.values.astype(bool)
    values = ds.precip.values
    assert values.shape[0] == (1 if model == "regression" else 2) and values.shape[-2:] == (32, 32)
    assert np.isfinite(values[..., valid]).all()
    if model == "residual":  # its regression stage alone: one member, through the same tiles
        mean_cfg = compose_config(
            "sample", [*overrides, f"paths.output_dir={root / 'mean'}", "residual_mean=true"]
        )
        mean_cfg.n_members = 1
        mean = xr.open_zarr(sample.run(mean_cfg)["path"], consolidated=False)
        assert mean.attrs["model"] == "ConditionalMean" and mean.precip.shape[0] == 1
        assert np.isfinite(mean.precip.values[..., valid]).all()


def test_a_location_map_smaller_than_the_domain_is_one_line(tmp_path, cache_dir, capsys):
    cfg = compose_config(
        "train",
        [
            *TINY_DATA,
            f"paths.output_dir={tmp_path}",
            "trainer.max_epochs=1",
            "logger=csv",
            "callbacks=none",
            "net.location_channels=2",
            "net.location_size=[16,16]",
        ],
    )
    with pytest.raises(SystemExit) as info:
        train.run(cfg)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert info.value.code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert re.search(r"outside the learned location map of 16x16.*net\.location_size", lines[0])
