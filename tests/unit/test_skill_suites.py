"""Every model of every skill suite composes its training config as written, GPU suites too: their
models train only on a lease, where a typo would cost device minutes."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import downscale.utils.resolvers  # noqa: F401  (registers ${first:...})
from bench.skill import run as skill

MODELS = [(s, m) for s, suite in skill.SUITES.items() for m in suite.models]


@pytest.mark.parametrize(("suite", "model"), MODELS, ids=[f"{s}.{m}" for s, m in MODELS])
def test_a_suite_model_composes_with_its_overrides_applied(suite, model, tmp_path):
    overrides = skill._train_overrides(skill.SUITES[suite], model)
    cfg = skill.compose_config("train", [*overrides, f"paths.output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert cfg.model._target_.startswith("downscale.models.")
    parser = OverridesParser.create()
    for override in parser.parse_overrides(overrides):
        key = override.key_or_group
        if override.is_delete():
            assert OmegaConf.select(cfg, key) is None, override.input_line
        elif "." in key and override.package is None:  # a value, not a config group's option
            assert OmegaConf.select(cfg, key) == override.value(), override.input_line


def test_a_row_samples_the_checkpoint_it_names():
    suite = skill.SUITES["radar_gpu"]
    rows = {row.model: row for row in suite.samplings if not row.derived_from}
    train = skill.OUT / "radar_gpu" / "train"
    assert skill._checkpoint(suite, rows["residual"]) == train / "residual/checkpoints/best.ckpt"
    # the resumed run's own end, not the best validation it inherited from the first lease
    assert skill._checkpoint(suite, rows["residual_long"]) == (
        train / "residual_long/checkpoints/last.ckpt"
    )


def test_the_radar_core_edm_is_the_ablation_setting_it_was_measured_as(tmp_path):
    """experiment=radar_edm_long is the 30-epoch EDM of notes item 40 (radar_edm
    trainer.max_epochs=30), so its recorded rows and the table's compare like for like."""
    out = f"paths.output_dir={tmp_path}"
    long = skill.compose_config("train", ["experiment=radar_edm_long", out])
    overridden = skill.compose_config(
        "train", ["experiment=radar_edm", "trainer.max_epochs=30", out]
    )
    assert long.trainer.max_epochs == 30
    assert OmegaConf.to_container(long) == OmegaConf.to_container(overridden)
    core = [row for row in skill.SUITES["radar"].samplings if not row.ablation]
    assert {row.model for row in core} == {"regression", "edm_auto_30", "gan"}
    assert all(row.checkpoint == "last" for row in core if row.model == "edm_auto_30")


def test_the_report_keeps_the_recorded_rows_these_outputs_lack(monkeypatch):
    monkeypatch.setattr(skill, "_log", lambda msg: None)
    recorded = {
        "scores": {
            "q99_obs": 9.0,
            "methods": {"earlier lease": {"crps": 1.0}, "fresh": {"crps": 3.0}},
        }
    }
    fresh = {"q99_obs": 8.0, "methods": {"fresh": {"crps": 0.5}}}
    merged = skill._with_recorded_rows(fresh, recorded)
    # this run's rows and suite facts win; a recorded row it lacks is kept after them
    assert merged == {
        "q99_obs": 8.0,
        "methods": {"fresh": {"crps": 0.5}, "earlier lease": {"crps": 1.0}},
    }
    assert list(merged["methods"]) == ["fresh", "earlier lease"]
    # no outputs of a suite here (a GPU suite on a CPU machine): the whole record
    assert skill._with_recorded_rows({}, recorded) == recorded["scores"]
    assert skill._with_recorded_rows({}, {}) == {}


def test_the_lease_scripts_heun_row_is_a_radar_gpu_row():
    """bench/skill/radar_gpu_lease.sh names its row by slug: a renamed row must rename it there."""
    script = (skill.REPO / "bench" / "skill" / "radar_gpu_lease.sh").read_text()
    [row] = [
        line.split("=", 1)[1] for line in script.splitlines() if line.strip().startswith("ROW=")
    ]
    slugs = {skill._slug(s.name): s for s in skill.SUITES["radar_gpu"].samplings}
    assert slugs[row.strip()] is skill._RADAR_FULL_EDM_HEUN
