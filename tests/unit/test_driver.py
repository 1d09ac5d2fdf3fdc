"""The ensemble driver: per-(time, member) seeding, block-wise resumable writes, atomic completion."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import xarray as xr

from downscale.sampling import driver
from downscale.sampling.driver import (
    Ranks,
    SampleRequest,
    SamplerRun,
    batch_slices,
    make_generators,
    write_samples,
)
from downscale.sampling.samplers import SamplingError, sample_euler, sample_euler_ancestral
from downscale.sampling.schedules import sigmas_karras
from downscale.utils.errors import UserError
from tests.conftest import CPU_AND_CUDA, synthetic_datamodule


class GaussianModel(torch.nn.Module):
    """Exact denoiser of N(mu, s^2) data with mu taken from the first cond channel."""

    def __init__(self, s: float = 0.3) -> None:
        super().__init__()
        self.s = s
        self.calls = 0

    def denoise(self, x, sigma, cond, anchor=None):
        s2, sig2 = self.s**2, sigma.view(-1, 1, 1, 1) ** 2
        return (s2 * x + sig2 * cond[:, :1]) / (s2 + sig2)

    def generate(self, cond, n_members, *, sampler, generators, anchor=None):
        self.calls += 1
        rep = cond.repeat_interleave(n_members, 0)
        x0 = sampler(self.denoise, rep, out_channels=1, generators=generators)
        return x0.view(cond.shape[0], n_members, 1, *cond.shape[-2:])


@pytest.fixture
def datamodule(tmp_path):
    return synthetic_datamodule(tmp_path / "cache", 20, {"train": [0.0, 0.5], "test": [0.5, 1.0]})


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


@pytest.mark.parametrize(
    ("n_times", "n_members", "batch"), [(5, 3, 16), (5, 3, 3), (4, 7, 3), (1, 1, 1)]
)
def test_batches_cover_every_draw_once_and_fill_the_batch(n_times, n_members, batch):
    seen = np.zeros((n_times, n_members), int)
    sizes = []
    for t, m in batch_slices(n_times, n_members, batch):
        seen[t, m] += 1
        sizes.append((t.stop - t.start) * (m.stop - m.start))
    assert (seen == 1).all()
    assert max(sizes) <= batch
    # all but the last batch of a time (or of the block) are as full as whole ensembles allow
    full = batch // n_members * n_members if n_members <= batch else batch
    assert sorted(sizes)[len(sizes) // 2 :] == [full] * (len(sizes) - len(sizes) // 2) or (
        len(sizes) == 1
    )


def test_members_split_across_batches_give_the_same_draws(tmp_path, datamodule):
    a = write_samples(
        GaussianModel(),
        datamodule,
        sampler(),
        request(tmp_path, datamodule, "a.zarr"),
        batch_size=12,
        progress=False,
    )
    b = write_samples(
        GaussianModel(),
        datamodule,
        sampler(),
        request(tmp_path, datamodule, "b.zarr"),
        batch_size=2,
        progress=False,  # 3 members > 2: each ensemble is split in two batches
    )
    np.testing.assert_array_equal(read(a["path"]), read(b["path"]))


class ThreadRanks(Ranks):
    """Ranks of threads in one process: a real barrier and sum, to test the shared-store protocol."""

    def __init__(self, rank, world_size, barrier, totals):
        super().__init__(rank, world_size)
        object.__setattr__(self, "_barrier", barrier)
        object.__setattr__(self, "_totals", totals)

    def barrier(self):
        self._barrier.wait(timeout=120)

    def sum(self, value):
        self._totals[self.rank] = value
        self.barrier()
        return sum(self._totals)


def test_ranks_take_disjoint_blocks_and_write_one_identical_store(tmp_path, datamodule):
    single = write_samples(
        GaussianModel(),
        datamodule,
        sampler(),
        request(tmp_path, datamodule, "one.zarr"),
        progress=False,
    )
    world, barrier, totals = 2, threading.Barrier(2), [0, 0]
    models, results, errors = [GaussianModel() for _ in range(world)], [None] * world, []
    req = request(tmp_path, datamodule, "two.zarr")

    def work(rank):
        try:
            results[rank] = write_samples(
                models[rank],
                datamodule,
                sampler(),
                req,
                progress=False,
                batch_size=12,  # one batch per block
                ranks=ThreadRanks(rank, world, barrier, totals),
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    n_blocks = -(-len(req.times) // req.block_size)  # 10 test days in blocks of 4: 3 blocks
    assert [m.calls for m in models] == [2 * 1, 1 * 1]  # rank 0: blocks 0, 2; rank 1: block 1
    assert results[0]["blocks_computed"] == results[1]["blocks_computed"] == n_blocks
    np.testing.assert_array_equal(read(results[0]["path"]), read(single["path"]))
    one = xr.open_zarr(single["path"], consolidated=False)
    two = xr.open_zarr(results[0]["path"], consolidated=False)
    assert one.attrs == two.attrs


def test_ranks_default_to_one_process():
    assert Ranks.current() == Ranks(0, 1)
    assert Ranks(1, 3).blocks(list(range(8))) == [1, 4, 7]


class NaNModel(GaussianModel):
    """Its denoiser breaks down below sigma 1 (as a diverged network would)."""

    def denoise(self, x, sigma, cond):
        out = super().denoise(x, sigma, cond)
        return out * torch.where(sigma.view(-1, 1, 1, 1) < 1.0, float("nan"), 1.0)


def test_nan_mid_sampling_names_the_step_and_writes_nothing(tmp_path, datamodule):
    run = SamplerRun(fn=sample_euler, sigmas=sigmas_karras(6, 0.02, 10.0))
    req = request(tmp_path, datamodule)
    first_bad = int(np.argmax(run.sigmas.numpy() < 1.0))
    with pytest.raises(SamplingError, match=f"at step {first_bad} of 6"):
        write_samples(NaNModel(), datamodule, run, req, progress=False)
    assert not req.out.exists()
    ds = xr.open_zarr(req.out.with_name(req.out.name + ".partial"), consolidated=False)
    assert not list(req.out.with_name(req.out.name + ".blocks").iterdir())  # no block claimed done
    assert np.isnan(ds.precip.values).all()  # unwritten chunks only: no half-written block


class NaNGenerator(GaussianModel):
    """A model without a sampler (a GAN or regression) whose output is NaN for one day."""

    def generate(self, cond, n_members, *, sampler, generators, anchor=None):
        out = torch.zeros(cond.shape[0], n_members, 1, *cond.shape[-2:])
        out[-1] = float("nan")
        return out


def test_non_finite_model_output_is_refused_before_writing(tmp_path, datamodule):
    req = request(tmp_path, datamodule)
    with pytest.raises(UserError, match="non-finite values for time index 3"):
        write_samples(NaNGenerator(), datamodule, None, req, batch_size=12, progress=False)
    assert not req.out.exists()


class LocalModel(GaussianModel):
    """Exact Gaussian denoiser around a 3 x 3 mean of the cond (a local operator of radius 1);
    records the largest batch its denoiser sees."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def denoise(self, x, sigma, cond, anchor=None):
        self.largest = max(self.largest, x.shape[0])
        mean = torch.nn.functional.avg_pool2d(cond[:, :1], 3, stride=1, padding=1)
        return super().denoise(x, sigma, torch.cat([mean, cond[:, 1:]], 1))


def test_tiled_sampling_covers_the_domain_and_equals_untiled_for_a_local_denoiser(
    tmp_path, datamodule
):
    from functools import partial

    from downscale.sampling.tiling import TiledDenoiser

    plain = write_samples(
        LocalModel(),
        datamodule,
        sampler(),
        request(tmp_path, datamodule, "plain.zarr"),
        batch_size=12,
        progress=False,
    )
    model = LocalModel()
    run = sampler()
    # 16 x 16 domain, 8 px tiles: 3 x 3 tiles; halo 1 >= the operator's radius -> exact
    run.wrap = partial(TiledDenoiser, tile=8, overlap=4, halo=1, max_batch=5)
    tiled = write_samples(
        model,
        datamodule,
        run,
        request(tmp_path, datamodule, "tiled.zarr"),
        batch_size=12,
        progress=False,
    )
    ds = xr.open_zarr(tiled["path"], consolidated=False)
    assert ds.precip.shape[-2:] == datamodule.ds.precip.shape[-2:] == (16, 16)
    assert model.largest == 5  # bounded by max_batch: never the 12 x 9 tiles of a whole batch
    np.testing.assert_allclose(read(tiled["path"]), read(plain["path"]), rtol=1e-5, atol=1e-6)


class ConvGaussianModel(GaussianModel):
    """GaussianModel's exact denoiser applied after an identity 1 x 1 convolution, whose output
    autocast rounds to half precision (as a network's), cast back to float32 (as EDMPrecond does);
    records the dtypes the sampler's state and the convolution have."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1, bias=False)
        torch.nn.init.ones_(self.conv.weight)
        self.dtypes: set[tuple[torch.dtype, torch.dtype]] = set()

    def denoise(self, x, sigma, cond, anchor=None):
        h = self.conv(x)
        self.dtypes.add((x.dtype, h.dtype))
        return super().denoise(h.float(), sigma, cond)


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_bf16_mixed_runs_the_network_in_bf16_and_the_sampler_in_float32(
    tmp_path, datamodule, device
):
    draws = {}
    for precision in ("32-true", "bf16-mixed"):
        model = ConvGaussianModel()
        result = write_samples(
            model,
            datamodule,
            sampler(),
            request(tmp_path, datamodule, f"{precision}.zarr"),
            batch_size=12,
            device=device,
            progress=False,
            precision=precision,
        )
        half = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
        assert model.dtypes == {(torch.float32, half)}
        draws[precision] = read(result["path"])
    exact, mixed = draws["32-true"], draws["bf16-mixed"]
    assert mixed.dtype == np.float32
    assert not np.array_equal(exact, mixed, equal_nan=True)  # autocast took effect
    # compared in the scaled space the sampler works in: bf16 rounds the convolution's output to 8
    # significant bits (2^-9 relative) at each of the 6 calls, 0.02 at the first noise level (10),
    # which the denoiser then shrinks; within 5% of the draws' spread (measured: 2.7%)
    forward = datamodule.scalers["precip"].forward
    scaled_exact = forward(exact.astype(np.float64))
    scaled_mixed = forward(mixed.astype(np.float64))
    assert np.nanmax(np.abs(scaled_mixed - scaled_exact)) < 0.05 * np.nanstd(scaled_exact)


def test_unknown_or_gpu_only_precision_is_refused(tmp_path, datamodule):
    for precision, message in (("fp8", "precision=fp8 is unknown"), ("16-mixed", "needs a GPU")):
        with pytest.raises(UserError, match=message):
            write_samples(
                GaussianModel(),
                datamodule,
                sampler(),
                request(tmp_path, datamodule, f"{precision}.zarr"),
                device="cpu",
                progress=False,
                precision=precision,
            )
        assert not (tmp_path / f"{precision}.zarr").exists()


class DivergedModel(torch.nn.Module):
    """Finite but huge scaled output, as a diverged sampler gives: overflows in physical units."""

    def generate(self, cond, n_members, *, sampler, generators, anchor=None):
        return torch.full((cond.shape[0], n_members, 1, *cond.shape[-2:]), 200.0)


def test_overflow_in_physical_units_is_reported(tmp_path, datamodule):
    with pytest.warns(UserWarning, match="sampler diverged"):
        write_samples(
            DivergedModel(), datamodule, sampler(), request(tmp_path, datamodule), progress=False
        )


class AnchorModel(GaussianModel):
    """Records the anchors the driver gives ``generate`` and the sampler gives the denoiser."""

    def __init__(self):
        super().__init__()
        self.given, self.seen = [], []

    def denoise(self, x, sigma, cond, anchor=None):
        self.seen.append(anchor)
        return super().denoise(x, sigma, cond)

    def generate(self, cond, n_members, *, sampler, generators, anchor=None):
        self.given.append((cond.shape[0], anchor))
        rep, anchor_rep = (
            cond.repeat_interleave(n_members, 0),
            anchor.repeat_interleave(n_members, 0),
        )
        x0 = sampler(self.denoise, rep, out_channels=1, generators=generators, anchor=anchor_rep)
        return x0.view(cond.shape[0], n_members, 1, *cond.shape[-2:])


def test_batch_anchors_reach_generate_and_every_denoiser_call(tmp_path, datamodule):
    model = AnchorModel()
    write_samples(model, datamodule, sampler(), request(tmp_path, datamodule), progress=False)
    assert model.given and model.seen
    for b, anchor in model.given:  # the whole domain: each input's top-left corner is (0, 0)
        assert anchor.dtype == torch.int64 and anchor.tolist() == [[0, 0]] * b
    assert all(a is not None and a.shape == (a.shape[0], 2) for a in model.seen)
    # SamplerRun binds the anchor to every call; without one the denoiser gets no keyword
    run, cond, anchor = sampler(), torch.zeros(2, 1, 4, 4), torch.tensor([[1, 2], [3, 4]])
    model.seen.clear()
    run(model.denoise, cond, out_channels=1, anchor=anchor)
    assert len(model.seen) == run.nfe > 0 and all(a is anchor for a in model.seen)
    model.seen.clear()
    run(model.denoise, cond, out_channels=1)
    assert model.seen == [None] * run.nfe
