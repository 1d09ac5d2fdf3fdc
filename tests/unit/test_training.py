"""Training machinery: LR schedules and optimizers, precision, torch.compile, summaries, fine-tuning,
two-stage residual training."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from hydra.utils import instantiate

from downscale.models.base import make_scheduler
from downscale.models.schedulers import cosine_factor, linear_warmup, warmup_cosine
from downscale.train import run
from downscale.utils.errors import UserError
from tests.conftest import CONF, TINY_DATA, compose_config

FAST = [
    *TINY_DATA,
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
]


def _train(out, extra, logger="csv", callbacks="none"):
    overrides = [*FAST, f"logger={logger}", f"callbacks={callbacks}", f"paths.output_dir={out}"]
    return run(compose_config("train", [*overrides, *extra]))


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cosine_and_warmup_factors():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0) and lrs[1] == pytest.approx(2.0)  # (k + 1) / 2 ramp
    # after warm-up: 0.1 + 0.9 (1 + cos(pi p)) / 2 with p = (step - 2) / 8
    for step in range(2, 10):
        p = (step - 2) / 8
        assert lrs[step] == pytest.approx(2.0 * (0.1 + 0.45 * (1 + math.cos(math.pi * p))))
    assert cosine_factor(10, 10, 2, 0.1) == pytest.approx(0.1)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    warm = linear_warmup(opt2, warmup_steps=4)
    seen = []
    for _ in range(6):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        warm.step()
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


SCHEDULERS = sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_options_build(name):
    cfg = compose_config("train", [f"scheduler={name}", "paths.output_dir=/tmp/unused"])
    spec = instantiate(cfg.model.scheduler)
    assert spec["interval"] in ("step", "epoch")
    if spec["factory"] is None:
        assert name == "none"
        return
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.model.optimizer.lr)
    sched = make_scheduler(spec["factory"], opt, total_steps=100)
    opt.step()
    sched.step(1.0) if name == "plateau" else sched.step()
    assert opt.param_groups[0]["lr"] > 0


def test_schedule_needing_steps_without_them_is_a_user_error():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    import functools

    with pytest.raises(UserError, match="number of training steps"):
        make_scheduler(functools.partial(warmup_cosine), opt, total_steps=None)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_options_build(name):
    cfg = compose_config("train", [f"optimizer={name}", "paths.output_dir=/tmp/unused"])
    opt = instantiate(cfg.model.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert type(opt).__name__.lower() == name


def test_lr_schedule_is_logged_and_summary_written(tmp_path, cache_dir):
    result = _train(
        tmp_path,
        ["scheduler=cosine", "callbacks.sample_panels.every_n_epochs=1"],
        callbacks="default",
    )
    rows = _rows(tmp_path / "metrics.csv")
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert lrs[0] == pytest.approx(2e-4) and lrs[-1] < lrs[0]  # cosine decays over 2 steps
    summary = json.loads((tmp_path / "summary.json").read_text())
    hardware = {
        "device": f"cpu ({torch.get_num_threads()} threads)",
        "devices": 1,
        "precision": "32-true",
    }
    assert summary == result["summary"] | {"epochs": 1, "global_step": 2} | hardware
    assert summary["train_steps"] == 2 and summary["steps_per_s"] > 0
    assert (tmp_path / "panels" / "epoch_0000.png").stat().st_size > 1000
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} >= {"best.ckpt", "last.ckpt"}
    from downscale.utils.checkpoint import load_checkpoint, load_model

    model = load_model(load_checkpoint(result["last_ckpt"]), result["last_ckpt"])
    assert summary["n_parameters"] == sum(p.numel() for p in model.denoiser.parameters())


def test_schedule_horizon_longer_than_the_run(tmp_path, cache_dir):
    """horizon_epochs=2 with max_epochs=1: the run's 2 steps are the first half of a 4-step cosine,
    0.5 (1 + cos(pi k / 4)), not the whole of a 2-step one."""
    _train(tmp_path, ["scheduler=cosine", "scheduler.horizon_epochs=2"], callbacks="default")
    rows = _rows(tmp_path / "metrics.csv")
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    expected = [2e-4 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(2)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["trainer.max_epochs=3", "scheduler.horizon_epochs=2"],
            "ends before trainer.max_epochs=3",
        ),
        (["scheduler.horizon_epochs=0"], "ends before trainer.max_epochs=1"),
        (["trainer.max_steps=2", "scheduler.horizon_epochs=2"], "set trainer.max_epochs"),
    ],
)
def test_schedule_horizon_errors(tmp_path, cache_dir, capsys, extra, message):
    with pytest.raises(SystemExit):
        _train(tmp_path, ["scheduler=cosine", *extra], logger="none")
    assert message in capsys.readouterr().err


def test_bf16_mixed_trains_on_cpu(tmp_path, cache_dir):
    result = _train(tmp_path, ["trainer.precision=bf16-mixed"], logger="none")
    assert math.isfinite(result["metrics"]["train/loss"])
    assert math.isfinite(result["metrics"]["val/loss"])


def test_compile_keeps_checkpoint_keys():
    cfg = compose_config("train", ["paths.output_dir=/tmp/unused", "model.precond.sigma_data=0.5"])
    plain = instantiate(cfg.model, net=instantiate(cfg.net), out_channels=1, cond_channels=3)
    compiled = instantiate(
        cfg.model,
        net=instantiate(cfg.net),
        out_channels=1,
        cond_channels=3,
        compile=True,
        compile_kwargs={"backend": "eager"},
    )
    assert plain.state_dict().keys() == compiled.state_dict().keys()
    assert compiled.denoiser.net._compiled_call_impl is not None


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, cache_dir):
    eager = _train(tmp_path / "eager", ["model.ema=null"], logger="none")
    # aot_eager: dynamo graph capture + AOT autograd (what inductor consumes) without the C++ code
    # generation, which takes minutes on two shared CPU cores the first time
    compiled = _train(
        tmp_path / "compiled",
        ["model.ema=null", "model.compile=true", "+model.compile_kwargs.backend=aot_eager"],
        logger="none",
    )
    a = torch.load(eager["last_ckpt"], weights_only=True)["state_dict"]
    b = torch.load(compiled["last_ckpt"], weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_init_from_fine_tunes_and_refuses_mismatches(tmp_path, cache_dir):
    first = _train(tmp_path / "a", [], logger="none")
    cfg = compose_config(
        "train",
        [
            *FAST,
            "logger=none",
            "callbacks=none",
            f"paths.output_dir={tmp_path}/b",
            f"init_from={first['last_ckpt']}",
        ],
    )
    from downscale.train import build

    _, model, _ = build(cfg)
    saved = torch.load(first["last_ckpt"], weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    bad = compose_config(
        "train",
        [
            *FAST,
            "logger=none",
            f"paths.output_dir={tmp_path}/c",
            f"init_from={first['last_ckpt']}",
            "data.statics=[]",
        ],
    )
    with pytest.raises(UserError, match="channels"):
        build(bad)
    wrong_model = compose_config(
        "train",
        [
            *FAST,
            "logger=none",
            f"paths.output_dir={tmp_path}/d",
            f"init_from={first['last_ckpt']}",
            "model=regression",
        ],
    )
    with pytest.raises(UserError, match="does not fit this model"):
        build(wrong_model)


def test_residual_two_stages_in_one_run(tmp_path, cache_dir, capsys):
    _train(tmp_path, ["model=residual", "model.regression_epochs=1", "trainer.max_epochs=2"])
    rows = [r for r in _rows(tmp_path / "metrics.csv") if r.get("val/loss")]
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert math.isinf(float(rows[0]["val/loss"])) and math.isfinite(float(rows[1]["val/loss"]))
    # the regression is frozen in the residual stage
    assert rows[0]["val/regression_loss"] == rows[1]["val/regression_loss"]
    with pytest.raises(SystemExit):
        _train(tmp_path / "short", ["model=residual", "model.regression_epochs=2"])
    # a cross-fit fold without training days stops before training, with one line
    one_fold = ["model.cross_fit=2", "model.cross_fit_block=100000"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _train(
            tmp_path / "cf",
            ["model=residual", "model.regression_epochs=1", "trainer.max_epochs=2", *one_fold],
        )
    assert "leaves a fold without training steps" in capsys.readouterr().err


def test_diverging_run_stops_with_one_line(tmp_path, cache_dir, capsys):
    with pytest.raises(SystemExit) as info:
        _train(
            tmp_path,
            [
                "model=regression",
                "optimizer.lr=1e12",
                "trainer.gradient_clip_val=null",
                "trainer.max_epochs=4",
            ],
            logger="none",
            callbacks="default",
        )
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(("error: loss became", "error: weights became non-finite"))
    assert "at step" in err and "optimizer.lr" in err
    # no checkpoint holds diverged weights (the divergence is caught before they are written)
    for path in tmp_path.glob("checkpoints/*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize(("model", "expected"), [("edm", False), ("gan", True), ("residual", True)])
def test_ddp_finds_unused_parameters_for_gan_and_residual(tmp_path, cache_dir, model, expected):
    from downscale.train import build

    cfg = compose_config(
        "train",
        [
            *FAST,
            "logger=none",
            "callbacks=none",
            f"model={model}",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.precision=32",
            f"paths.output_dir={tmp_path}",
        ],
    )
    _, _, trainer = build(cfg)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is expected
