"""Bad sampling options end in one clear line before any checkpoint is read or anything written."""

from __future__ import annotations

import pytest

from downscale import sample
from tests.conftest import compose_config

CASES = [
    (["sampler.steps=0"], "sampler.steps must be an integer >= 1"),
    (["sampler=dpmpp_2m", "sampler.steps=-3"], "sampler.steps must be an integer >= 1"),
    (["schedule.sigma_min=100"], "needs 0 < sigma_min < sigma_max"),
    (["schedule=exponential", "schedule.sigma_min=80"], "needs 0 < sigma_min < sigma_max"),
    (["schedule.rho=0"], "rho must be > 0"),
    (["schedule_sigma_data=0"], "schedule_sigma_data must be a positive number or null"),
    (["schedule_sigma_data=auto"], "schedule_sigma_data must be a positive number or null"),
    (["n_members=0"], "n_members must be an integer >= 1"),
    (["block_size=0"], "block_size must be an integer >= 1"),
    (["devices=0"], "devices must be an integer >= 1"),
    (["tiling=default", "tiling.halo=20"], "tiling halo must satisfy"),
    (["+sampler.s_chrun=3"], "has no argument(s) s_chrun"),
    (["conserve=exact"], "conserve=exact is unknown"),
    (["dry.threshold=-1"], "dry.threshold must be null, a number >= 0"),
    (["dry.threshold=yes"], "dry.threshold must be null, a number >= 0"),
    (["dry.threshold=auto", "dry.wet_day=0"], "dry.wet_day must be a positive number"),
    (["dry.threshold=auto", "devices=2", "strategy=ddp"], "use strategy=ddp_spawn"),
    (["dry.threshold=0.5", "dry.fit_store=x.zarr"], "set dry.threshold=auto or drop"),
]


@pytest.mark.parametrize(("overrides", "message"), CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_option_gives_one_line_and_writes_nothing(overrides, message, tmp_path, capsys):
    # a run_dir that does not exist: the option checks must come before the checkpoint is looked up
    cfg = compose_config(
        "sample",
        [f"paths.output_dir={tmp_path / 'out'}", f"run_dir={tmp_path / 'run'}", *overrides],
    )
    with pytest.raises(SystemExit) as exit_info:
        sample.run(cfg)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()
