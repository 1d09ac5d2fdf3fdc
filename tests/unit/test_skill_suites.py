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
