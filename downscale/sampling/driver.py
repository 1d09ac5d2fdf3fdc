"""The ensemble driver: one loop for every model type, seeded per (time, member), written in time
blocks to ``samples.zarr`` so an interrupted run resumes where it stopped.

Several processes (``torch.distributed`` initialised, e.g. by Lightning Fabric) share one run: block
``b`` goes to rank ``b % world_size``; each rank writes its own time regions of the one
``<out>.partial`` store (chunks along time are one block, so regions never share a chunk). Rank 0
creates the store before, and renames it after, the others' work (barriers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time as _time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from downscale import __version__
from downscale.sampling.samplers import randn_like
from downscale.utils.atomic import replace
from downscale.utils.errors import require
from downscale.utils.seeding import device_label, warn_emulated_bf16

# the networks' precision while sampling, named as Lightning's trainer.precision
PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def check_precision(precision: str, device: torch.device | str | None = None) -> None:
    """Refuse an unknown sampling precision, and ``16-mixed`` off a GPU, with the fix."""
    require(
        precision in PRECISIONS,
        f"precision={precision} is unknown; use one of {', '.join(PRECISIONS)}",
    )
    require(
        precision != "16-mixed" or device is None or torch.device(device).type == "cuda",
        "precision=16-mixed needs a GPU; use 32-true or bf16-mixed on CPU",
    )
    if device is not None:
        warn_emulated_bf16(torch.device(device).type, precision)


def network_precision(
    device: torch.device, precision: str
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``bf16-mixed``/``16-mixed``: the networks' convolutions, matmuls and
    attention run in half precision, while the sampler's state and arithmetic stay float32 (the
    preconditioners return float32; tiles blend in float32). ``32-true``: no autocast."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class CountingDenoiser(torch.nn.Module):
    """Counts network evaluations (per sample) of a wrapped denoiser and passes it ``anchor`` (the
    inputs' patch anchors, (B, 2)) when one is given: samplers only call ``denoiser(x, sigma,
    cond)``."""

    def __init__(self, denoiser: Callable, anchor: torch.Tensor | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.kwargs = {} if anchor is None else {"anchor": anchor}
        self.calls = 0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(x, sigma, cond, **self.kwargs)


@dataclass
class SamplerRun:
    """A sampler function with its noise schedule: ``run(denoiser, cond, out_channels, generators,
    anchor)``.

    ``wrap`` optionally wraps the denoiser (e.g. tiled inference over a large domain). ``anchor``
    (B, 2), the (row, col) of each input's top-left corner in the whole domain, is bound to the
    (wrapped) denoiser's calls, so nets with a learned location map see where their input lies.
    """

    fn: Callable
    sigmas: torch.Tensor
    wrap: Callable | None = None
    nfe: int = field(default=0, init=False)

    def __call__(
        self,
        denoiser: Callable,
        cond: torch.Tensor,
        *,
        out_channels: int,
        generators: list[torch.Generator] | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        counted = CountingDenoiser(self.wrap(denoiser) if self.wrap else denoiser, anchor)
        sigmas = self.sigmas.to(cond.device, cond.dtype)
        shape = (cond.shape[0], out_channels, *cond.shape[-2:])
        x = randn_like(torch.empty(shape, device=cond.device, dtype=cond.dtype), generators)
        x0 = self.fn(counted, x * sigmas[0], sigmas, cond=cond, generator=generators)
        self.nfe = counted.calls
        return x0


@dataclass
class OneShotRun:
    """What a one-shot model (regression, GAN) takes from the sampling config: the tiling wrapper
    (``model.generate(..., sampler=OneShotRun(wrap))``, which the model calls with its anchors,
    see :func:`downscale.sampling.tiling.tiled_one_shot`); one network evaluation per draw."""

    wrap: Callable | None = None
    nfe: int = 1


def member_seed(seed: int, time_index: int, member: int) -> int:
    """A 63-bit seed for one (time, member) draw, independent of batching and block layout."""
    digest = hashlib.sha256(f"{seed}:{time_index}:{member}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generators(
    seed: int, times: np.ndarray, n_members: int, device: torch.device, first_member: int = 0
) -> list:
    """One generator per (time, member) for members ``first_member .. first_member + n_members - 1``,
    ordered time-major like ``generate``'s output."""
    return [
        torch.Generator(device=device).manual_seed(member_seed(seed, int(t), m))
        for t in times
        for m in range(first_member, first_member + n_members)
    ]


def batch_slices(n_times: int, n_members: int, batch_size: int) -> list[tuple[slice, slice]]:
    """(times, members) slices covering a block, each at most ``batch_size`` draws.

    Whole ensembles of ``batch_size // n_members`` times per batch; when one ensemble is larger than
    ``batch_size``, its members are split into chunks of ``batch_size`` (seeding is per (time,
    member), so the draws do not depend on this split).
    """
    if n_members <= batch_size:
        per = batch_size // n_members
        return [
            (slice(t, min(t + per, n_times)), slice(0, n_members)) for t in range(0, n_times, per)
        ]
    return [
        (slice(t, t + 1), slice(m, min(m + batch_size, n_members)))
        for t in range(n_times)
        for m in range(0, n_members, batch_size)
    ]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a multi-process run (``torch.distributed``), or a single process."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Ranks:
        """From the initialised default process group; one process when there is none."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, value: int) -> int:
        """Sum of an integer over all ranks."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(total)
        return int(total.item())

    def blocks(self, todo: list[int]) -> list[int]:
        """This rank's share of the blocks: block ``b`` goes to rank ``b % world_size``."""
        return [b for b in todo if b % self.world_size == self.rank]


@dataclass
class SampleRequest:
    """What to sample and where: the contents of the samples store's attributes."""

    out: Path
    times: np.ndarray
    n_members: int
    seed: int
    block_size: int
    attrs: dict[str, Any]

    def key(self) -> str:
        """Identity of the request: a partial store is resumed only when this matches."""
        payload = json.dumps(
            {
                "times": self.times.tolist(),
                "members": self.n_members,
                "seed": self.seed,
                "block": self.block_size,
                "attrs": self.attrs,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def store_attrs(attrs: dict[str, Any]) -> dict[str, str | int | float]:
    """A request's attributes as the samples store holds them (anything else as JSON)."""
    return {k: v if isinstance(v, str | int | float) else json.dumps(v) for k, v in attrs.items()}


def _template(datamodule: Any, request: SampleRequest) -> xr.Dataset:
    """The empty samples store (lazy zeros) with coordinates copied from the dataset store."""
    import dask.array as da

    ds = datamodule.ds
    ydim, xdim = ds[datamodule.targets[0]].dims[-2:]
    ny, nx = ds.sizes[ydim], ds.sizes[xdim]
    coords = {
        "member": np.arange(request.n_members),
        "time": ds["time"].values[request.times],
        ydim: ds[ydim],
        xdim: ds[xdim],
    }
    shape = (request.n_members, len(request.times), ny, nx)
    chunks = (request.n_members, request.block_size, ny, nx)
    variables = {
        name: (
            ("member", "time", ydim, xdim),
            da.zeros(shape, chunks=chunks, dtype=np.float32),
            {
                "units": ds[name].attrs.get("units", ""),
                "long_name": ds[name].attrs.get("long_name", name),
            },
        )
        for name in datamodule.targets
    }
    out = xr.Dataset(variables, coords=coords)
    out["time_index"] = ("time", request.times.astype(np.int64))
    out.attrs.update(store_attrs(request.attrs))
    out.attrs.update(request_key=request.key(), seed=request.seed, downscale_version=__version__)
    return out


def _partial_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.name + ".partial"), out.with_name(out.name + ".blocks")


def _open_or_create(datamodule: Any, request: SampleRequest) -> tuple[Path, Path]:
    partial, blocks = _partial_paths(request.out)
    if partial.exists():
        try:
            key = xr.open_zarr(partial, consolidated=False).attrs.get("request_key")
        except Exception:  # noqa: BLE001 - an unreadable partial store is simply started again
            key = None
        if key != request.key():
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(blocks, ignore_errors=True)
    if not partial.exists():
        shutil.rmtree(blocks, ignore_errors=True)
        _template(datamodule, request).to_zarr(
            partial, compute=False, consolidated=False, zarr_format=3
        )
    blocks.mkdir(parents=True, exist_ok=True)
    return partial, blocks


def write_samples(
    model: Any,
    datamodule: Any,
    sampler: SamplerRun | OneShotRun | None,
    request: SampleRequest,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = True,
    ranks: Ranks | None = None,
    constraint: Callable[[str, np.ndarray, np.ndarray], np.ndarray] | None = None,
    precision: str = "32-true",
) -> dict[str, Any]:
    """Sample ``request.times`` into ``request.out`` block by block; skip blocks already done.

    ``constraint(name, physical (T, M, H, W), store time indices)`` post-processes each block in
    physical units before it is written (:class:`downscale.sampling.constraints.Conservation`).
    ``precision``: the networks' precision (:func:`network_precision`).

    Returns ``{"path", "nfe", "seconds", "blocks_computed", "device"}`` (blocks summed over ranks;
    ``device`` names the hardware, None when the store was complete already). The store
    appears at ``request.out`` only when complete (it is built as ``<out>.partial`` and renamed).
    ``ranks`` defaults to the ``torch.distributed`` process group when one is initialised; every
    rank must call this with the same request.
    """
    require(request.n_members >= 1, "n_members must be at least 1; e.g. n_members=4")
    require(request.block_size >= 1, "block_size must be at least 1; e.g. block_size=8")
    require(batch_size >= 1, "batch_size must be at least 1")
    check_precision(precision, device)
    ranks = ranks or Ranks.current()
    if request.out.exists():
        existing = xr.open_zarr(request.out, consolidated=False).attrs
        require(
            existing.get("request_key") == request.key(),
            f"{request.out} already holds samples of a different request (checkpoint, sampler, "
            "tiling, seed or times); choose another out= or remove it",
        )
        return {
            "path": request.out,
            "nfe": existing.get("nfe"),
            "seconds": 0.0,
            "blocks_computed": 0,
            "device": None,  # drawn earlier, on hardware this call does not know
        }
    device = torch.device(device)
    model = model.to(device).eval()
    partial, blocks = _partial_paths(request.out)
    if ranks.rank == 0:
        _open_or_create(datamodule, request)
    ranks.barrier()  # the template exists before any rank writes into it
    n_blocks = -(-len(request.times) // request.block_size)
    todo = [b for b in range(n_blocks) if not (blocks / str(b)).exists()]
    mine = ranks.blocks(todo)
    started = _time.perf_counter()
    bar = tqdm(
        total=sum(len(_block_times(request, b)) for b in mine),
        disable=not progress or ranks.rank != 0,
        desc="sampling" if ranks.world_size == 1 else f"sampling (rank 0 of {ranks.world_size})",
        unit="day",
    )
    for b in mine:
        lo, times = b * request.block_size, _block_times(request, b)
        with network_precision(device, precision):
            draws, nfe = _sample_block(
                model, datamodule, sampler, request, times, batch_size, device
            )
        _write_block(datamodule, draws, partial, lo, times, constraint)
        (blocks / str(b)).write_text(str(nfe))  # the block is done (and its cost)
        bar.update(len(times))
    bar.close()
    seconds = _time.perf_counter() - started
    computed = ranks.sum(len(mine))
    ranks.barrier()  # every rank's blocks are written
    nfe = _recorded_nfe(blocks)
    ranks.barrier()  # every rank has read the block records before rank 0 removes them
    if ranks.rank == 0:
        zarr.open_group(partial, mode="r+").attrs["nfe"] = nfe
        replace(partial, request.out)
        shutil.rmtree(blocks, ignore_errors=True)
    ranks.barrier()  # no rank returns before the store is complete
    return {
        "path": request.out,
        "nfe": nfe,
        "seconds": seconds,
        "blocks_computed": computed,
        "device": device_label(device),
    }


def _block_times(request: SampleRequest, b: int) -> np.ndarray:
    return request.times[b * request.block_size : (b + 1) * request.block_size]


def _recorded_nfe(blocks: Path) -> int:
    """The largest NFE recorded by any finished block (adaptive samplers vary per batch)."""
    values = [int(text) for f in blocks.iterdir() if (text := f.read_text().strip())]
    return max(values, default=0)


def _sample_block(
    model: Any,
    datamodule: Any,
    sampler: SamplerRun | OneShotRun | None,
    request: SampleRequest,
    times: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, int]:
    """Draws (T, M, C, H, W) in scaled space for one block, in batches of <= ``batch_size`` draws."""
    dataset = datamodule.dataset("test", times=times)
    draws: np.ndarray | None = None
    nfe = 0
    for tslice, mslice in batch_slices(len(times), request.n_members, batch_size):
        batch = default_collate([dataset[i] for i in range(tslice.start, tslice.stop)])
        cond, anchor = batch["cond"].to(device), batch["anchor"].to(device)
        n = mslice.stop - mslice.start
        generators = make_generators(request.seed, batch["time"].numpy(), n, device, mslice.start)
        with torch.no_grad():
            out = model.generate(cond, n, sampler=sampler, generators=generators, anchor=anchor)
        nfe = max(nfe, sampler.nfe if sampler is not None else 1)
        out = out.float().cpu().numpy()
        if draws is None:
            draws = np.empty((len(times), request.n_members, *out.shape[2:]), np.float32)
        draws[tslice, mslice] = out
    return draws, nfe


def _write_block(
    datamodule: Any,
    draws: np.ndarray,
    store: Path,
    lo: int,
    times: np.ndarray,
    constraint: Callable[[str, np.ndarray, np.ndarray], np.ndarray] | None,
) -> None:
    """Inverse-scale draws (T, M, C, H, W) to physical units, apply ``constraint``, mask invalid
    pixels, write the region starting at position ``lo`` of the request's times."""
    hi = lo + len(times)
    draws = datamodule.crop_to_grid(draws)  # drop any padding added to fit the network
    mask = datamodule.fields.mask
    bad = ~np.isfinite(draws[..., mask]).all(axis=(1, 2, 3))
    require(
        not bad.any(),
        f"the model produced non-finite values for time index {lo + int(np.argmax(bad))} of the "
        "sampled times; nothing was written for that block (check the checkpoint and its inputs)",
    )
    variables = {}
    ydim, xdim = datamodule.ds[datamodule.targets[0]].dims[-2:]
    for c, name in enumerate(datamodule.targets):
        with np.errstate(over="ignore"):
            physical = datamodule.scalers[name].inverse(draws[:, :, c].astype(np.float64))
        physical = np.where(mask[None, None], physical, np.nan).astype(np.float32)
        overflow = int(np.isinf(physical).sum())
        if overflow:
            warnings.warn(
                f"{overflow} sampled '{name}' values overflow in physical units (time indices "
                f"{lo}..{hi - 1}): the sampler diverged; use more steps (sampler.steps) or another "
                "sampler",
                stacklevel=2,
            )
        if constraint is not None:
            physical = constraint(name, physical, times)  # invalid pixels stay NaN
        variables[name] = (("member", "time", ydim, xdim), np.moveaxis(physical, 0, 1))
    xr.Dataset(variables).to_zarr(
        store,
        region={"member": slice(None), "time": slice(lo, hi), ydim: slice(None), xdim: slice(None)},
        consolidated=False,
        zarr_format=3,
    )
