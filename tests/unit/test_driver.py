"""The ensemble driver: per-(time, member) seeding, block-wise resumable writes, atomic completion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from downscale.data.datamodule import DownscaleDataModule
from downscale.data.scaling import LogScaler, ZScaler
from downscale.data.synthetic import synthetic_store
from downscale.sampling import driver
from downscale.sampling.driver import SampleRequest, SamplerRun, make_generators, write_samples
from downscale.sampling.samplers import sample_euler_ancestral
from downscale.sampling.schedules import sigmas_karras
from downscale.utils.errors import UserError


class GaussianModel(torch.nn.Module):
    """Exact denoiser of N(mu, s^2) data with mu taken from the first cond channel."""

    def __init__(self, s: float = 0.3) -> None:
        super().__init__()
        self.s = s
        self.calls = 0

    def denoise(self, x, sigma, cond):
        s2, sig2 = self.s**2, sigma.view(-1, 1, 1, 1) ** 2
        return (s2 * x + sig2 * cond[:, :1]) / (s2 + sig2)

    def generate(self, cond, n_members, *, sampler, generators):
        self.calls += 1
        rep = cond.repeat_interleave(n_members, 0)
        x0 = sampler(self.denoise, rep, out_channels=1, generators=generators)
        return x0.view(cond.shape[0], n_members, 1, *cond.shape[-2:])


@pytest.fixture
def datamodule(tmp_path):
    store = synthetic_store(tmp_path / "cache", n_days=20, size=16, factor=4)
    scalers = {"precip": LogScaler(), "coarse_precip": LogScaler(), "coarse_humidity": ZScaler()}
    dm = DownscaleDataModule(
        store,
        ["precip"],
        ["precip", "humidity"],
        scalers,
        {"train": [0.0, 0.5], "test": [0.5, 1.0]},
    )
    dm.prepare()
    return dm


def sampler():
    # an SDE sampler: every step draws noise, so seeding matters
    return SamplerRun(fn=sample_euler_ancestral, sigmas=sigmas_karras(6, 0.02, 10.0))


def request(tmp_path, dm, name="samples.zarr", **kw):
    args = dict(
        out=tmp_path / name,
        times=dm.split_indices["test"],
        n_members=3,
        seed=7,
        block_size=4,
        attrs={"sampler": "euler_ancestral"},
    )
    args.update(kw)
    return SampleRequest(**args)


def read(path):
    return xr.open_zarr(path, consolidated=False).precip.values


def test_draws_do_not_depend_on_batching_or_blocks(tmp_path, datamodule):
    a = write_samples(
        GaussianModel(),
        datamodule,
        sampler(),
        request(tmp_path, datamodule, "a.zarr"),
        batch_size=3,
        progress=False,
    )
    b = write_samples(
        GaussianModel(),
        datamodule,
        sampler(),
        request(tmp_path, datamodule, "b.zarr", block_size=3),
        batch_size=12,
        progress=False,
    )
    np.testing.assert_array_equal(read(a["path"]), read(b["path"]))
    values = read(a["path"])
    assert not np.allclose(values[0], values[1], equal_nan=True)  # members differ
    assert a["nfe"] == 6


def test_another_seed_gives_other_draws(tmp_path, datamodule):
    a = write_samples(
        GaussianModel(),
        datamodule,
        sampler(),
        request(tmp_path, datamodule, "a.zarr"),
        progress=False,
    )
    b = write_samples(
        GaussianModel(),
        datamodule,
        sampler(),
        request(tmp_path, datamodule, "b.zarr", seed=8),
        progress=False,
    )
    assert not np.allclose(read(a["path"]), read(b["path"]), equal_nan=True)


def test_generators_are_one_per_time_and_member():
    gens = make_generators(0, np.array([5, 6]), 2, torch.device("cpu"))
    draws = [torch.randn(1, generator=g).item() for g in gens]
    assert len(set(draws)) == 4
    again = make_generators(0, np.array([6]), 2, torch.device("cpu"))
    assert [torch.randn(1, generator=g).item() for g in again] == draws[2:]


def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(tmp_path, datamodule, monkeypatch):
    reference = write_samples(
        GaussianModel(),
        datamodule,
        sampler(),
        request(tmp_path, datamodule, "ref.zarr"),
        progress=False,
    )
    real_write = driver._write_block
    calls = {"n": 0}

    def crash_on_second_block(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(driver, "_write_block", crash_on_second_block)
    req = request(tmp_path, datamodule, "resumed.zarr")
    with pytest.raises(KeyboardInterrupt):
        write_samples(GaussianModel(), datamodule, sampler(), req, progress=False)
    assert not req.out.exists()  # nothing that looks complete
    monkeypatch.setattr(driver, "_write_block", real_write)
    model = GaussianModel()
    resumed = write_samples(model, datamodule, sampler(), req, progress=False)
    n_blocks = -(-len(req.times) // req.block_size)
    assert resumed["blocks_computed"] == n_blocks - 1  # the finished block was not recomputed
    np.testing.assert_array_equal(read(resumed["path"]), read(reference["path"]))
    assert not req.out.with_name(req.out.name + ".partial").exists()


def test_existing_samples_of_another_request_are_never_overwritten(tmp_path, datamodule):
    first = write_samples(
        GaussianModel(), datamodule, sampler(), request(tmp_path, datamodule), progress=False
    )
    before = read(first["path"])
    with pytest.raises(UserError, match="different request"):
        write_samples(
            GaussianModel(),
            datamodule,
            sampler(),
            request(tmp_path, datamodule, seed=99),
            progress=False,
        )
    np.testing.assert_array_equal(read(first["path"]), before)


def test_store_layout_units_and_mask(tmp_path, datamodule):
    out = write_samples(
        GaussianModel(), datamodule, sampler(), request(tmp_path, datamodule), progress=False
    )
    ds = xr.open_zarr(out["path"], consolidated=False)
    assert ds.precip.dims == ("member", "time", "lat", "lon")
    assert ds.precip.attrs["units"] == "mm/day"
    assert ds.attrs["seed"] == 7 and ds.attrs["nfe"] == 6
    np.testing.assert_array_equal(
        ds.time.values, datamodule.ds.time.values[datamodule.split_indices["test"]]
    )
    invalid = ~datamodule.fields.mask
    assert np.isnan(ds.precip.values[..., invalid]).all()
