"""The ensemble driver: one loop for every model type, seeded per (time, member), written in time
blocks to ``samples.zarr`` so an interrupted run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import shutil
import time as _time
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


class CountingDenoiser(torch.nn.Module):
    """Counts network evaluations (per sample) of a wrapped denoiser."""

    def __init__(self, denoiser: Callable) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.calls = 0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(x, sigma, cond)


@dataclass
class SamplerRun:
    """A sampler function with its noise schedule: ``run(denoiser, cond, out_channels, generators)``.

    ``wrap`` optionally wraps the denoiser (e.g. tiled inference over a large domain).
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
    ) -> torch.Tensor:
        counted = CountingDenoiser(self.wrap(denoiser) if self.wrap else denoiser)
        sigmas = self.sigmas.to(cond.device, cond.dtype)
        shape = (cond.shape[0], out_channels, *cond.shape[-2:])
        x = randn_like(torch.empty(shape, device=cond.device, dtype=cond.dtype), generators)
        x0 = self.fn(counted, x * sigmas[0], sigmas, cond=cond, generator=generators)
        self.nfe = counted.calls
        return x0


def member_seed(seed: int, time_index: int, member: int) -> int:
    """A 63-bit seed for one (time, member) draw, independent of batching and block layout."""
    digest = hashlib.sha256(f"{seed}:{time_index}:{member}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generators(seed: int, times: np.ndarray, n_members: int, device: torch.device) -> list:
    """One generator per (time, member), ordered time-major like ``generate``'s output."""
    return [
        torch.Generator(device=device).manual_seed(member_seed(seed, int(t), m))
        for t in times
        for m in range(n_members)
    ]


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
    out.attrs.update(
        {
            k: v if isinstance(v, str | int | float) else json.dumps(v)
            for k, v in request.attrs.items()
        }
    )
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
    sampler: SamplerRun | None,
    request: SampleRequest,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Sample ``request.times`` into ``request.out`` block by block; skip blocks already done.

    Returns ``{"path", "nfe", "seconds", "blocks_computed"}``. The store appears at ``request.out``
    only when complete (it is built as ``<out>.partial`` and renamed).
    """
    require(request.n_members >= 1, "n_members must be at least 1; e.g. n_members=4")
    require(request.block_size >= 1, "block_size must be at least 1; e.g. block_size=8")
    require(batch_size >= 1, "batch_size must be at least 1")
    if request.out.exists():
        existing = xr.open_zarr(request.out, consolidated=False).attrs
        require(
            existing.get("request_key") == request.key(),
            f"{request.out} already holds samples of a different request (checkpoint, sampler, seed "
            "or times); choose another out= or remove it",
        )
        return {
            "path": request.out,
            "nfe": existing.get("nfe"),
            "seconds": 0.0,
            "blocks_computed": 0,
        }
    device = torch.device(device)
    model = model.to(device).eval()
    partial, blocks = _open_or_create(datamodule, request)
    n_blocks = -(-len(request.times) // request.block_size)
    todo = [b for b in range(n_blocks) if not (blocks / str(b)).exists()]
    started, nfe = _time.perf_counter(), 0
    bar = tqdm(
        total=len(todo) * request.block_size, disable=not progress, desc="sampling", unit="day"
    )
    for b in todo:
        lo, hi = b * request.block_size, min((b + 1) * request.block_size, len(request.times))
        times = request.times[lo:hi]
        dataset = datamodule.dataset("test", times=times)
        per_batch = max(1, batch_size // request.n_members)
        chunks = []
        for start in range(0, len(times), per_batch):
            items = [dataset[i] for i in range(start, min(start + per_batch, len(times)))]
            batch = default_collate(items)
            cond = batch["cond"].to(device)
            generators = make_generators(
                request.seed, batch["time"].numpy(), request.n_members, device
            )
            with torch.no_grad():
                draws = model.generate(
                    cond, request.n_members, sampler=sampler, generators=generators
                )
            nfe = max(nfe, sampler.nfe if sampler is not None else 1)
            chunks.append(draws.float().cpu().numpy())
            bar.update(len(items))
        _write_block(datamodule, np.concatenate(chunks), partial, lo, hi)
        zarr.open_group(partial, mode="r+").attrs["nfe"] = int(nfe)
        (blocks / str(b)).touch()
    bar.close()
    seconds = _time.perf_counter() - started
    replace(partial, request.out)
    shutil.rmtree(blocks, ignore_errors=True)
    return {"path": request.out, "nfe": nfe, "seconds": seconds, "blocks_computed": len(todo)}


def _write_block(datamodule: Any, draws: np.ndarray, store: Path, lo: int, hi: int) -> None:
    """Inverse-scale draws (T, M, C, H, W) to physical units, mask invalid pixels, write the region."""
    draws = datamodule.crop_to_grid(draws)  # drop any padding added to fit the network
    mask = datamodule.fields.mask
    variables = {}
    ydim, xdim = datamodule.ds[datamodule.targets[0]].dims[-2:]
    for c, name in enumerate(datamodule.targets):
        physical = datamodule.scalers[name].inverse(draws[:, :, c].astype(np.float64))
        physical = np.where(mask[None, None], physical, np.nan).astype(np.float32)
        variables[name] = (("member", "time", ydim, xdim), np.moveaxis(physical, 0, 1))
    xr.Dataset(variables).to_zarr(
        store,
        region={"member": slice(None), "time": slice(lo, hi), ydim: slice(None), xdim: slice(None)},
        consolidated=False,
        zarr_format=3,
    )
