"""Torch datasets over a dataset store: whole domain, random patches, or a fixed region.

Each item is a dict: ``target`` (C_out, H, W) and ``cond`` (C_in, H, W) scaled, ``mask`` (1, H, W),
``time`` (index into the store's time axis) and ``anchor`` (row, col of the top-left corner).
Coarse predictors are brought to the fine grid by nearest neighbour, as in the reference system; with
time offsets (``DownscaleDataModule(coarse_offsets=[0, 1])``) the predictors of each offset follow
one another in ``cond`` (all variables at ``t + k0``, then at ``t + k1``, ...).

``pad_to_multiple`` (whole-domain and fixed-region datasets) pads a window at its bottom/right edge up
to a multiple of ``m`` (a UNet with L levels needs sizes divisible by 2**(L-1)): padded pixels have
target 0 and mask 0 (so they never enter the loss or the metrics), the conditioning is extended with
its edge values, and the location channels continue their linear ramps. Crop model outputs back with
:meth:`downscale.data.datamodule.DownscaleDataModule.crop_to_grid` (``array[..., :H, :W]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from downscale.utils.errors import UserError, require


@dataclass
class Fields:
    """Arrays a dataset reads from: in-memory numpy or lazily indexed zarr/dask-backed arrays.

    ``targets`` and ``coarse`` are lists of (time, y, x) arrays; ``statics`` are (y, x) arrays already
    scaled; ``row_index``/``col_index`` map each fine row/column to its nearest coarse row/column.
    """

    targets: list
    coarse: list
    statics: list[np.ndarray]
    mask: np.ndarray
    row_index: np.ndarray
    col_index: np.ndarray
    target_scalers: list
    coarse_scalers: list
    coarse_names: list[str]
    day_of_year: np.ndarray | None = None
    location: bool = False
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    regions: dict | None = None
    coarse_times: np.ndarray | None = None  # (n_offsets, T) from time_offset_table; None: [t]

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def n_offsets(self) -> int:
        return 1 if self.coarse_times is None else len(self.coarse_times)

    @property
    def cond_channels(self) -> int:
        extra = (2 if self.day_of_year is not None else 0) + (2 if self.location else 0)
        return len(self.coarse) * self.n_offsets + len(self.statics) + extra


def padded_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``size`` rounded up to multiples of ``multiple``."""
    require(int(multiple) >= 1, f"pad_to_multiple must be a positive integer, got {multiple}")
    m = int(multiple)
    return (-(-size[0] // m) * m, -(-size[1] // m) * m)


def _edge_index(start: int, size: int, padded: int) -> np.ndarray:
    """Indices ``start .. start + size - 1`` continued to ``padded`` by repeating the last one: taking
    them pads a window at its bottom/right edge with its edge values (as ``np.pad(mode="edge")``)."""
    return start + np.minimum(np.arange(padded), size - 1)


def read_window(
    fields: Fields,
    t: int,
    row: int,
    col: int,
    size: tuple[int, int],
    padded: tuple[int, int] | None = None,
) -> dict:
    """Scaled target/cond/mask for time index ``t`` and the window at (row, col) of ``size``.

    With ``padded`` = (H, W) >= ``size`` the window is padded at its bottom/right edge to (H, W):
    target and mask with zeros, conditioning with its edge values (see the module docstring).
    """
    # Written for few numpy calls per item: on the 24 x 32 Iberia domain the data loader's Python
    # overhead was 1.3 ms an item (9% of a training step); bench/read_window.py measures it.
    h, w = size
    H, W = padded or size
    rows, cols = slice(row, row + h), slice(col, col + w)
    mask = fields.mask[rows, cols]
    target = np.zeros((len(fields.targets), H, W), dtype=np.float32)
    for k, (arr, scaler) in enumerate(zip(fields.targets, fields.target_scalers, strict=True)):
        values = scaler.forward(np.asarray(arr[t, rows, cols], dtype=np.float32))
        target[k, :h, :w] = np.where(mask & np.isfinite(values), values, 0.0)
    # the fine window's nearest coarse rows/columns, edge-padded; the coarse blocks they span
    r_idx = fields.row_index[_edge_index(row, h, H)]
    c_idx = fields.col_index[_edge_index(col, w, W)]
    r0, r1 = int(r_idx.min()), int(r_idx.max()) + 1
    c0, c1 = int(c_idx.min()), int(c_idx.max()) + 1
    coarse_times = [t] if fields.coarse_times is None else fields.coarse_times[:, t].tolist()
    blocks = []
    for tk in coarse_times:
        for arr, scaler, name in zip(
            fields.coarse, fields.coarse_scalers, fields.coarse_names, strict=True
        ):
            block = np.asarray(arr[tk, r0:r1, c0:c1], dtype=np.float32)
            if not np.isfinite(block).all():
                raise UserError(
                    f"NaNs in predictor '{name}' at time index {tk}; fill or drop them when "
                    "building the store"
                )
            blocks.append(scaler.forward(block))
    parts = [np.stack(blocks)[:, (r_idx - r0)[:, None], (c_idx - c0)[None, :]]] if blocks else []
    if fields.statics:
        fine = np.ix_(_edge_index(row, h, H), _edge_index(col, w, W))
        parts.append(np.stack([s[fine] for s in fields.statics]))
    extra = []
    if fields.day_of_year is not None:
        angle = 2 * np.pi * fields.day_of_year[t] / 365.25
        extra += [np.full((H, W), np.sin(angle)), np.full((H, W), np.cos(angle))]
    if fields.location:
        # the patch anchor as a conditioning input: each pixel's position in the whole domain,
        # scaled to [-1, 1] over the domain (padded pixels continue the ramp beyond 1)
        ny, nx = fields.shape
        yy = (np.arange(row, row + H) / max(ny - 1, 1)) * 2 - 1
        xx = (np.arange(col, col + W) / max(nx - 1, 1)) * 2 - 1
        extra += [np.repeat(yy[:, None], W, 1), np.repeat(xx[None, :], H, 0)]
    if extra:
        parts.append(np.stack(extra))
    padded_mask = np.zeros((1, H, W), dtype=np.float32)
    padded_mask[0, :h, :w] = mask
    return {
        "target": torch.from_numpy(target),
        "cond": torch.from_numpy(np.concatenate(parts).astype(np.float32)),
        "mask": torch.from_numpy(padded_mask),
        "time": torch.tensor(t, dtype=torch.int64),
        "anchor": torch.tensor([row, col], dtype=torch.int64),
    }


def box_to_region(fields: Fields, box: dict) -> list[int]:
    """``[row, col, height, width]`` of the fine cells whose centres lie in ``box``
    ``{lat: [south, north], lon: [west, east]}`` (degrees, as the store's coordinates)."""
    require(
        fields.lat is not None and fields.lon is not None,
        "a region given as a box needs the store's lat/lon coordinates; give region=[row, col, h, w]",
    )
    require(
        set(box) == {"lat", "lon"},
        f"a region box must be {{lat: [south, north], lon: [west, east]}}, got {dict(box)}",
    )
    picks = []
    for name, coord in (("lat", fields.lat), ("lon", fields.lon)):
        lo, hi = (float(v) for v in box[name])
        half = float(np.abs(np.diff(coord)).max()) / 2 if len(coord) > 1 else 0.0
        first, last = float(coord.min()), float(coord.max())
        require(
            lo < hi and lo >= first - half and hi <= last + half,
            f"region box {name} [{lo}, {hi}] is outside the data ({first - half:g} .. "
            f"{last + half:g}) or empty; choose a box inside the domain",
        )
        idx = np.flatnonzero((coord >= lo) & (coord <= hi))
        require(idx.size > 0, f"region box {name} [{lo}, {hi}] contains no cell centre; widen it")
        picks.append(idx)
    rows, cols = picks
    return [int(rows[0]), int(cols[0]), len(rows), len(cols)]


class UpsampleDataset(Dataset):
    """The whole domain for every time index, optionally padded to a multiple of ``pad_to_multiple``."""

    #: an item's (time, anchor) always names the same window (downscale.models.mean_cache)
    fixed_items = True

    def __init__(self, fields: Fields, times: np.ndarray, pad_to_multiple: int = 1) -> None:
        self.fields, self.times = fields, np.asarray(times)
        self.padded = padded_size(fields.shape, pad_to_multiple)

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i: int) -> dict:
        t = int(self.times[i])
        return read_window(self.fields, t, 0, 0, self.fields.shape, self.padded)


class FixedRegionDataset(Dataset):
    """A fixed window of the fine grid for every time index.

    ``region`` is ``[row, col, height, width]``, a box ``{lat: [s, n], lon: [w, e]}`` (cells whose
    centres fall inside), or the name of one of the data config's ``regions`` (either form).
    """

    fixed_items = True

    def __init__(
        self,
        fields: Fields,
        times: np.ndarray,
        region: list[int] | dict | str,
        pad_to_multiple: int = 1,
    ) -> None:
        if isinstance(region, str):
            named = fields.regions or {}
            require(
                region in named,
                f"unknown region '{region}'; name one of the data config's regions {sorted(named)}"
                " or give [row, col, height, width]",
            )
            region = named[region]
        if hasattr(region, "keys"):
            region = box_to_region(fields, dict(region))
        region = list(region)
        require(len(region) == 4, f"region must be [row, col, height, width], got {region}")
        row, col, h, w = (int(v) for v in region)
        ny, nx = fields.shape
        require(
            h > 0 and w > 0 and row >= 0 and col >= 0 and row + h <= ny and col + w <= nx,
            f"region {region} lies outside the {ny} x {nx} domain; choose a window inside it",
        )
        self.fields, self.times, self.region = fields, np.asarray(times), (row, col, h, w)
        self.padded = padded_size((h, w), pad_to_multiple)

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i: int) -> dict:
        row, col, h, w = self.region
        return read_window(self.fields, int(self.times[i]), row, col, (h, w), self.padded)


class RandomPatchDataset(Dataset):
    """Random ``patch_size`` crops; ``patches_per_time`` crops per time index per epoch.

    Anchors are drawn from torch's global generator, which Lightning seeds per run and per data-loader
    worker (``seed_everything(workers=True)``), so a seeded run sees the same crops.
    """

    #: a new crop every epoch: nothing to cache per item
    fixed_items = False

    def __init__(
        self,
        fields: Fields,
        times: np.ndarray,
        patch_size: int | list[int],
        patches_per_time: int = 1,
    ) -> None:
        h, w = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        ny, nx = fields.shape
        require(
            h <= ny and w <= nx,
            f"patch {h} x {w} is larger than the {ny} x {nx} domain; use a smaller data.train_dataset.patch_size",
        )
        self.fields, self.times, self.size = fields, np.asarray(times), (h, w)
        self.patches_per_time = patches_per_time

    def __len__(self) -> int:
        return len(self.times) * self.patches_per_time

    def __getitem__(self, i: int) -> dict:
        h, w = self.size
        ny, nx = self.fields.shape
        row = int(torch.randint(0, ny - h + 1, ()))
        col = int(torch.randint(0, nx - w + 1, ()))
        t = int(self.times[i // self.patches_per_time])
        return read_window(self.fields, t, row, col, self.size)
