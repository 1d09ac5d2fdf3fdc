"""Torch datasets over a dataset store: whole domain, random patches, or a fixed region.

Each item is a dict: ``target`` (C_out, H, W) and ``cond`` (C_in, H, W) scaled, ``mask`` (1, H, W),
``time`` (index into the store's time axis) and ``anchor`` (row, col of the top-left corner).
Coarse predictors are brought to the fine grid by nearest neighbour, as in the reference system.
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

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def cond_channels(self) -> int:
        extra = (2 if self.day_of_year is not None else 0) + (2 if self.location else 0)
        return len(self.coarse) + len(self.statics) + extra


def read_window(fields: Fields, t: int, row: int, col: int, size: tuple[int, int]) -> dict:
    """Scaled target/cond/mask for time index ``t`` and the window at (row, col) of ``size``."""
    h, w = size
    rows, cols = slice(row, row + h), slice(col, col + w)
    mask = fields.mask[rows, cols]
    targets = []
    for arr, scaler in zip(fields.targets, fields.target_scalers, strict=True):
        values = scaler.forward(np.asarray(arr[t, rows, cols], dtype=np.float32))
        targets.append(np.where(mask & np.isfinite(values), values, 0.0))
    r_idx, c_idx = fields.row_index[rows], fields.col_index[cols]
    r0, r1 = int(r_idx.min()), int(r_idx.max()) + 1
    c0, c1 = int(c_idx.min()), int(c_idx.max()) + 1
    cond = []
    for arr, scaler, name in zip(
        fields.coarse, fields.coarse_scalers, fields.coarse_names, strict=True
    ):
        block = np.asarray(arr[t, r0:r1, c0:c1], dtype=np.float32)
        if not np.isfinite(block).all():
            raise UserError(
                f"NaNs in predictor '{name}' at time index {t}; fill or drop them when building the store"
            )
        cond.append(scaler.forward(block)[np.ix_(r_idx - r0, c_idx - c0)])
    cond.extend(s[rows, cols] for s in fields.statics)
    if fields.day_of_year is not None:
        angle = 2 * np.pi * fields.day_of_year[t] / 365.25
        cond.extend([np.full((h, w), np.sin(angle)), np.full((h, w), np.cos(angle))])
    if fields.location:
        ny, nx = fields.shape
        yy = (np.arange(row, row + h) / max(ny - 1, 1)) * 2 - 1
        xx = (np.arange(col, col + w) / max(nx - 1, 1)) * 2 - 1
        cond.extend([np.repeat(yy[:, None], w, 1), np.repeat(xx[None, :], h, 0)])
    return {
        "target": torch.from_numpy(np.stack(targets).astype(np.float32)),
        "cond": torch.from_numpy(np.stack(cond).astype(np.float32)),
        "mask": torch.from_numpy(mask[None].astype(np.float32)),
        "time": torch.tensor(t, dtype=torch.int64),
        "anchor": torch.tensor([row, col], dtype=torch.int64),
    }


class UpsampleDataset(Dataset):
    """The whole domain for every time index."""

    def __init__(self, fields: Fields, times: np.ndarray) -> None:
        self.fields, self.times = fields, np.asarray(times)

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i: int) -> dict:
        return read_window(self.fields, int(self.times[i]), 0, 0, self.fields.shape)


class FixedRegionDataset(Dataset):
    """A fixed window ``[row, col, height, width]`` of the fine grid for every time index."""

    def __init__(self, fields: Fields, times: np.ndarray, region: list[int]) -> None:
        require(len(region) == 4, f"region must be [row, col, height, width], got {region}")
        row, col, h, w = (int(v) for v in region)
        ny, nx = fields.shape
        require(
            row >= 0 and col >= 0 and row + h <= ny and col + w <= nx,
            f"region {region} lies outside the {ny} x {nx} domain; choose a window inside it",
        )
        self.fields, self.times, self.region = fields, np.asarray(times), (row, col, h, w)

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i: int) -> dict:
        row, col, h, w = self.region
        return read_window(self.fields, int(self.times[i]), row, col, (h, w))


class RandomPatchDataset(Dataset):
    """Random ``patch_size`` crops; ``patches_per_time`` crops per time index per epoch.

    Anchors are drawn from torch's global generator, which Lightning seeds per run and per data-loader
    worker (``seed_everything(workers=True)``), so a seeded run sees the same crops.
    """

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
            f"patch {h} x {w} is larger than the {ny} x {nx} domain; use a smaller data.patch_size",
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
