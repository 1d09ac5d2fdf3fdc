"""The bad-input suite: mistakes users make, each ending with one line that names the problem and the
fix, exit status 2, no traceback and no output left behind.

Most cases run in-process (an entry point's ``run(cfg)`` wrapped by ``report_user_errors``, or the
command-line pre-check ``check_overrides``); a few run the real command line, and one checks that
``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from downscale import build, evaluate, sample, train
from downscale.data.fake_sources import write_mswep_era5_layout
from downscale.utils.cli import check_overrides
from downscale.utils.errors import report_user_errors
from tests.conftest import REPO, TINY_DATA, compose_config
from tests.unit._evaldata import fields

pytestmark = pytest.mark.slow

TRAIN = [*TINY_DATA, "logger=csv", "callbacks=none", "trainer.limit_val_batches=1"]
BUILD_SMALL = [
    "build=mswep_era5",
    "build.domain.box={lon:[-110,-106],lat:[36,40]}",
    "build.period.start=2000-02-25",
    "build.period.end=2000-03-03",
]


@dataclass(frozen=True)
class Ctx:
    """Paths the cases refer to as ``{name}``."""

    root: Path
    run_dir: Path  # a tiny trained EDM run
    reg_run: Path  # a tiny trained regression run
    ckpt: Path
    corrupt: Path  # random bytes named .ckpt
    truncated: Path  # the first half of a real checkpoint
    foreign: Path  # embedded config names os.system
    tampered: Path  # state_dict with a layer removed
    plain: Path  # a torch file that is not a downscale checkpoint
    store: Path  # a built mswep_era5 store (other grid, other variables)
    sources: Path  # tiny MSWEP/MSWX/ERA5 files
    bad_sources: Path  # the same with a corrupt file
    nan_sources: Path  # the same with NaN surface pressure on one day
    obs: Path  # observations for the evaluation cases
    samples: Path
    samples_shifted: Path  # lat/lon do not match the observations
    samples_other_days: Path  # no common day with the observations
    samples_no_member: Path
    samples_corrupt: Path
    pwned: Path  # created only if the foreign checkpoint's target ran


def _train(out: Path, *extra: str) -> Path:
    cfg = compose_config("train", [*TRAIN, f"paths.output_dir={out}", *extra])
    return Path(train.run(cfg)["run_dir"])


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    root = tmp_path_factory.mktemp("bad_input")
    mp = pytest.MonkeyPatch()
    mp.setenv("DOWNSCALE_CACHE_DIR", str(root / "cache"))
    one_epoch = ["trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    run_dir = _train(root / "edm", *one_epoch)
    reg_run = _train(root / "reg", "model=regression", *one_epoch)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    pwned = root / "pwned"

    corrupt = root / "corrupt.ckpt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = root / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    foreign = root / "foreign.ckpt"
    evil = {**state, "downscale": {**state["downscale"]}}
    evil["downscale"]["config"] = {
        **state["downscale"]["config"],
        "net": {"_target_": "os.system", "_args_": [f"touch {pwned}"]},
    }
    torch.save(evil, foreign)
    tampered = root / "tampered.ckpt"
    cut = dict(state["state_dict"])
    cut.pop(next(iter(cut)))
    torch.save({**state, "state_dict": cut}, tampered)
    plain = root / "plain.ckpt"
    torch.save({"state_dict": state["state_dict"]}, plain)

    sources = write_mswep_era5_layout(root / "sources" / "mswep_era5").parent
    store = build.run(
        compose_config(
            "build", [*BUILD_SMALL, f"paths.data_root={sources}", f"out={root / 'mswep.zarr'}"]
        )
    )
    bad_sources = root / "bad_sources"
    write_mswep_era5_layout(bad_sources / "mswep_era5")
    f = bad_sources / "mswep_era5" / "MSWEP" / "2000058.nc"
    f.write_bytes(f.read_bytes()[:100])

    nan_sources = root / "nan_sources"
    write_mswep_era5_layout(nan_sources / "mswep_era5")
    f = nan_sources / "mswep_era5" / "MSWX" / "Pres" / "Daily" / "2000058.nc"
    ds = xr.load_dataset(f)
    ds["surface_pressure"][:] = np.nan
    ds.to_netcdf(f)

    members, obs = fields(members=3, days=4, size=8)
    obs.to_dataset().to_zarr(root / "obs.zarr", consolidated=False)
    samples = root / "samples.zarr"
    members.to_dataset().to_zarr(samples, consolidated=False)
    shifted = members.assign_coords(lat=members.lat + 5.0, lon=members.lon + 5.0)
    shifted.to_dataset().to_zarr(root / "shifted.zarr", consolidated=False)
    later = members.assign_coords(time=members.time + np.timedelta64(400, "D"))
    later.to_dataset().to_zarr(root / "later.zarr", consolidated=False)
    members.isel(member=0, drop=True).to_dataset().to_zarr(
        root / "nomember.zarr", consolidated=False
    )
    broken = root / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    yield Ctx(
        root=root,
        run_dir=run_dir,
        reg_run=reg_run,
        ckpt=ckpt,
        corrupt=corrupt,
        truncated=truncated,
        foreign=foreign,
        tampered=tampered,
        plain=plain,
        store=Path(store),
        sources=sources,
        bad_sources=bad_sources,
        nan_sources=nan_sources,
        obs=root / "obs.zarr",
        samples=samples,
        samples_shifted=root / "shifted.zarr",
        samples_other_days=root / "later.zarr",
        samples_no_member=root / "nomember.zarr",
        samples_corrupt=broken,
        pwned=pwned,
    )
    mp.undo()


# (id, entry point, overrides with {ctx fields}, regex the one error line must match)
CASES = [
    # --- configuration: what the command-line pre-check catches -------------------------------
    ("unknown group option", "compose:train", ["model=edn"], r"unknown option model=edn; available: .*edm"),
    ("unknown sampler", "compose:sample", ["sampler=eulr"], r"unknown option sampler=eulr; available"),
    ("unknown schedule", "compose:sample", ["schedule=karas"], r"unknown option schedule=karas"),
    ("unknown recipe", "compose:build", ["build=iberai"], r"unknown option build=iberai"),
    ("mistyped trainer key", "compose:train", ["trainer.max_epoch=3"], r"unknown key trainer.max_epoch.*spelling"),
    ("mistyped sampler key", "compose:sample", ["sampler.stpes=3"], r"unknown key sampler.stpes"),
    ("mistyped top-level key", "compose:sample", ["n_member=3"], r"unknown key n_member"),
    ("malformed override", "compose:train", ["trainer.max_epochs=[1,"], r"cannot parse the override .trainer.max_epochs=\[1,.*syntax"),
    # --- training ---------------------------------------------------------------------------------
    ("wrong type in override", "train", ["trainer.max_epochs=abc"], r"trainer.max_epochs='abc' must be an integer"),
    ("GPU trainer without a GPU", "train", ["trainer=gpu"], r"needs a CUDA GPU.*trainer=cpu"),
    ("16-mixed without a GPU", "train", ["trainer.precision=16-mixed"], r"16-mixed needs a GPU.*bf16-mixed"),
    ("resume a missing run", "train", ["resume={root}/nope"], r"cannot resume.*resume=<train run dir>"),
    ("missing dataset store", "train", ["data.store={root}/nope.zarr"], r"dataset store not found.*build"),
    ("corrupt dataset store", "train", ["data.store={samples_corrupt}"], r"cannot read dataset store.*rebuild"),
    ("missing predictand", "train", ["data.targets=[rain]"], r"\['rain'\] not in the store; available"),
    ("missing predictor", "train", ["data.coarse=[precip,wind]"], r"coarse_wind.* not in the store"),
    ("empty split", "train", ["data.splits.val=[0.95,0.96]"], r"split 'val' .* selects no time steps.*data.splits.val"),
    ("no train split", "train", ["~data.splits.train"], r"no 'train' split"),
    ("split out of range", "train", ["data.splits.test=[0.9,1.5]"], r"0 <= start < end <= 1"),
    ("patch larger than the domain", "train", ["data.train_dataset.patch_size=64"], r"patch 64 x 64 is larger than the 32 x 32 domain.*data.train_dataset.patch_size"),
    ("callback setting without a callback", "train", ["+callbacks.progress_bar.refresh_rate=100"], r"callbacks.progress_bar has settings but no _target_.*~callbacks.progress_bar"),
    ("zero batch size", "train", ["data.batch_size=0"], r"data.batch_size=0 .* must be >= 1"),
    ("init_from a missing file", "train", ["init_from={root}/nope.ckpt"], r"checkpoint not found: .*nope.ckpt"),
    ("init_from a checkpoint of other channels", "train", ["data.coarse=[precip]", "init_from={ckpt}"], r"channels .* fine-tune"),
    ("init_from a foreign _target_", "train", ["init_from={foreign}"], r"os.system.*refusing"),
    # --- sampling ---------------------------------------------------------------------------------
    ("no checkpoint given", "sample", [], r"give exactly one of run_dir"),
    ("zero sampler steps", "sample", ["run_dir={run_dir}", "sampler.steps=0"], r"sampler.steps must be an integer >= 1"),
    ("negative sampler steps", "sample", ["run_dir={run_dir}", "sampler.steps=-1"], r"sampler.steps must be an integer >= 1"),
    ("sigma_min above sigma_max", "sample", ["run_dir={run_dir}", "schedule.sigma_min=100"], r"0 < sigma_min < sigma_max, got sigma_min=100.*set schedule.sigma_min"),
    ("CUDA device without a GPU", "sample", ["run_dir={run_dir}", "device=cuda"], r"device=cuda needs a CUDA GPU.*device=cpu"),
    ("unknown split", "sample", ["run_dir={run_dir}", "split=holdout"], r"split=holdout is not defined.*one of"),
    ("conditional mean of an EDM", "sample", ["run_dir={run_dir}", "residual_mean=true"], r"residual_mean=true draws a residual model's regression stage, but .* holds a DiffusionModel; pass a model=residual checkpoint"),
    ("run dir without checkpoint", "sample", ["run_dir={root}"], r"no checkpoint in .*ckpt=<path>"),
    ("corrupt checkpoint", "sample", ["ckpt={corrupt}"], r"cannot load checkpoint .*complete"),
    ("truncated checkpoint", "sample", ["ckpt={truncated}"], r"cannot load checkpoint .*complete"),
    ("not a downscale checkpoint", "sample", ["ckpt={plain}"], r"not a downscale checkpoint"),
    ("tampered checkpoint", "sample", ["ckpt={tampered}"], r"does not fit its model config"),
    ("foreign _target_ in checkpoint", "sample", ["ckpt={foreign}"], r"\['os.system'\], outside downscale/torch/lightning; refusing"),
    ("store of another grid and variables", "sample", ["run_dir={run_dir}", "data.store={store}"], r"not in the store; available"),
    ("zero members", "sample", ["run_dir={run_dir}", "n_members=0"], r"n_members"),
    ("zero block size", "sample", ["run_dir={run_dir}", "block_size=0"], r"block_size"),
    # --- evaluation -------------------------------------------------------------------------------
    ("no samples", "evaluate", [], r"no samples given; pass samples="),
    ("missing samples", "evaluate", ["samples={root}/nope.zarr"], r"samples store not found"),
    ("missing observations", "evaluate", ["samples={samples}", "obs={root}/nope.zarr"], r"does not exist"),
    ("corrupt samples", "evaluate", ["samples={samples_corrupt}", "obs={obs}"], r"cannot read .*broken.zarr.*complete"),
    ("unknown variable", "evaluate", ["samples={samples}", "obs={obs}", "variable=tas"], r"variable 'tas' is not in the samples"),
    ("lat/lon mismatch", "evaluate", ["samples={samples_shifted}", "obs={obs}"], r"different grids \(lat coordinates differ.*regrid"),
    ("no common days", "evaluate", ["samples={samples_other_days}", "obs={obs}"], r"4 sample times are not in the observations"),
    ("samples without member dim", "evaluate", ["samples={samples_no_member}", "obs={obs}"], r"without a .member. dim; add one"),
    # --- dataset building -------------------------------------------------------------------------
    ("missing source variable", "build", ["build.predictors.sources.mswx.variables.RH.name=rh"], r"'rh' is not in .*fix"),
    ("box outside the data", "build", ["build.domain.box={{lon:[10,20],lat:[36,40]}}"], r"holds no cell.*domain.box"),
    ("period outside the data", "build", ["build.period.start=2010-01-01", "build.period.end=2010-02-01"], r"no <YYYYDDD>.nc file in period"),
    ("wrong units", "build", ["build.predictors.sources.mswx.variables.RH.units=K"], r"cannot be converted to 'K'"),
    ("missing source folder", "build", ["paths.data_root={root}/nowhere"], r"MSWEP folder .*nowhere.* does not exist; check paths.data_root"),
    ("corrupt netCDF", "build", ["paths.data_root={bad_sources}"], r"cannot read .*2000058.nc"),
    ("NaNs in predictors", "build", ["paths.data_root={nan_sources}"], r"coarse_PRES \(from mswx.*\) has .* NaN"),
]  # fmt: skip


def _fill(items: list[str], ctx: Ctx) -> list[str]:
    values = {k: str(v) for k, v in vars(ctx).items()}
    return [item.format(**values) for item in items]


def _call(entry: str, overrides: list[str], out: Path, ctx: Ctx) -> None:
    """Compose the entry point's config as the command line would and run it."""
    if entry == "build":
        cfg = compose_config("build", [*BUILD_SMALL, *overrides, f"out={out / 's.zarr'}"])
        if not any(o.startswith("paths.data_root") for o in overrides):
            cfg.paths.data_root = str(ctx.sources)
        report_user_errors(build.run)(cfg)
        return
    base = {"train": TRAIN, "sample": ["evaluate=false"], "evaluate": ["evaluation=quick"]}[entry]
    cfg = compose_config(entry, [*base, *overrides, f"paths.output_dir={out}"])
    {"train": train.run, "sample": sample.run, "evaluate": evaluate.run}[entry](cfg)


@pytest.mark.parametrize(
    ("name", "entry", "overrides", "pattern"), CASES, ids=[c[0] for c in CASES]
)
def test_mistake(name, entry, overrides, pattern, ctx, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOWNSCALE_CACHE_DIR", str(ctx.root / "cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("DOWNSCALE_DEBUG", raising=False)
    argv = _fill(overrides, ctx)
    if entry.startswith("compose:"):
        line = check_overrides(entry.split(":")[1], argv)
        assert line is not None and "\n" not in line
        assert re.search(pattern, line), line
        return
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        _call(entry, argv, out, ctx)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert ";" in lines[0], f"no fix named: {lines[0]}"
    assert not out.exists(), f"partial output: {sorted(p.name for p in out.rglob('*'))}"
    assert not ctx.pwned.exists()


def test_deterministic_model_with_members_warns_and_draws_one(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("DOWNSCALE_CACHE_DIR", str(ctx.root / "cache"))
    cfg = compose_config(
        "sample",
        [f"run_dir={ctx.reg_run}", "n_members=4", "evaluate=false", f"paths.output_dir={tmp_path}"],
    )
    with pytest.warns(UserWarning, match="deterministic: drawing 1 member instead of 4"):
        result = sample.run(cfg)
    assert xr.open_zarr(result["path"], consolidated=False).sizes["member"] == 1


def test_regression_model_samples_in_tiles(ctx, tmp_path, monkeypatch):
    """tiling= reaches a one-shot model through sample.run (the 32 x 32 domain in 16 px tiles)."""
    from downscale.sampling.tiling import TiledDenoiser

    monkeypatch.setenv("DOWNSCALE_CACHE_DIR", str(ctx.root / "cache"))
    calls = []
    original = TiledDenoiser.__call__
    monkeypatch.setattr(
        TiledDenoiser,
        "__call__",
        lambda self, *a, **k: calls.append(a[0].shape) or original(self, *a, **k),
    )
    stores = {}
    for name, extra in {
        "whole": [],
        "tiled": ["tiling=default", "tiling.tile=16", "tiling.overlap=8"],
    }.items():
        cfg = compose_config(
            "sample",
            [f"run_dir={ctx.reg_run}", "n_members=1", "evaluate=false", f"paths.output_dir={tmp_path / name}", *extra],
        )  # fmt: skip
        path = sample.run(cfg)["path"]
        stores[name] = xr.open_zarr(path, consolidated=False)
    assert calls and all(shape[-2:] == (32, 32) for shape in calls)  # whole fields in, tiles inside
    assert stores["tiled"].attrs["sampler"] == "none"
    whole, tiled = (stores[k].precip.values for k in ("whole", "tiled"))
    valid = np.isfinite(whole)
    assert np.isfinite(tiled[valid]).all() and not np.array_equal(tiled[valid], whole[valid])


def test_foreign_target_refused_before_instantiation(ctx, monkeypatch):
    import hydra.utils

    from downscale.utils.checkpoint import load_checkpoint

    called = []
    monkeypatch.setattr(hydra.utils, "instantiate", lambda *a, **k: called.append(a))
    with pytest.raises(Exception, match="os.system"):
        load_checkpoint(ctx.foreign)
    assert not called and not ctx.pwned.exists()
    # our own checkpoints load with the safe unpickler
    state = torch.load(ctx.ckpt, map_location="cpu", weights_only=True)
    assert state["downscale"]["config"]["model"]["_target_"].startswith("downscale.")


# --- the real command line: one line and exit 2; HYDRA_FULL_ERROR=1 shows the trace -------------
def _cli(argv: list[str], tmp_path: Path, ctx: Ctx, **env_extra: str):
    env = {**os.environ, "WANDB_MODE": "disabled", "DOWNSCALE_CACHE_DIR": str(ctx.root / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DOWNSCALE_DEBUG", None)
    env.update(env_extra)
    cmd = [sys.executable, "-m", *argv, f"hydra.run.dir={tmp_path}/run"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


CLI_CASES = [
    (["downscale.sample", "sampler.steps=0", "run_dir={run_dir}"], "sampler.steps must be"),
    (["downscale.sample", "ckpt={corrupt}"], "cannot load checkpoint"),
    (["downscale.sample", "ckpt={foreign}"], "refusing"),
    (["downscale.train", "trainer.precision=16-mixed"], "16-mixed needs a GPU"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_CASES, ids=[c[1] for c in CLI_CASES])
def test_cli_one_line(argv, message, ctx, tmp_path):
    proc = _cli(_fill(argv, ctx), tmp_path, ctx)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # not even Hydra's records of the failed run


@pytest.mark.parametrize("flag", ["HYDRA_FULL_ERROR", "DOWNSCALE_DEBUG", "--debug"])
def test_full_traceback_on_request(flag, ctx, tmp_path):
    argv = _fill(["downscale.sample", "sampler.steps=0", "run_dir={run_dir}"], ctx)
    if flag.startswith("--"):
        proc = _cli([*argv, flag], tmp_path, ctx)
    else:
        proc = _cli(argv, tmp_path, ctx, **{flag: "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UserError" in proc.stderr
    assert "sampler.steps must be an integer >= 1" in proc.stderr


def test_training_into_a_used_run_dir_is_refused(ctx, capsys, monkeypatch):
    """A new training in a dir with checkpoints neither resumes them quietly (Lightning would) nor
    writes over them: one line naming resume= and another output dir."""
    monkeypatch.setenv("DOWNSCALE_CACHE_DIR", str(ctx.root / "cache"))
    before = {p.name: p.read_bytes() for p in (ctx.run_dir / "checkpoints").glob("*.ckpt")}
    cfg = compose_config("train", [*TRAIN, f"paths.output_dir={ctx.run_dir}"])
    with pytest.raises(SystemExit) as info:
        train.run(cfg)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert re.search(rf"error: {ctx.run_dir} already holds .*last.ckpt.*resume={ctx.run_dir}", err)
    after = {p.name: p.read_bytes() for p in (ctx.run_dir / "checkpoints").glob("*.ckpt")}
    assert after == before and "last.ckpt" in before
