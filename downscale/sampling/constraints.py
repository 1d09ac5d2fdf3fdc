"""Conservation of the coarse field: each sample's mean over a coarse cell equals the predictor.

Where the predictor is the conservative coarse-graining of the predictand (the radar task: MRMS and
its x8 block mean), every plausible fine field has the coarse value as its cell mean, so a sample
whose cell means drift carries an error the data rule out. The constraint rescales each sample
after inverse scaling, in physical units, as the constraint layers of Harder et al. (2023, "Hard-
constrained deep learning for climate downscaling", JMLR 24(365), section 3.2):

- ``multiplicative`` (MultCL): y_i * x / mean(y) over the cell; keeps non-negative fields non-negative
  and dry pixels dry (a cell whose sample is dry everywhere gets the coarse value uniformly);
- ``additive`` (AddCL): y_i + x - mean(y), for fields that may be negative (temperature).

The cell of a fine pixel is its nearest coarse cell (the data module's ``row_index``/``col_index``),
the mean is weighted by cos(latitude) over valid pixels (the area mean over the covered part, as the
conservative regridding computes it). Only meaningful when the coarse variable is the same quantity
as the predictand on the same footprint (not NCEP pr for E-OBS on Iberia).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
import xarray as xr

from downscale.data.store import nearest_index, valid_mask
from downscale.utils.errors import UserError, require

METHODS = ("multiplicative", "additive")


@dataclass(frozen=True)
class CellMap:
    """Which coarse cell each valid fine pixel falls in, and its area weight."""

    pixels: np.ndarray  # (P,) flat indices of the valid fine pixels
    average: scipy.sparse.csr_matrix  # (P, n_cells): weighted-mean operator, columns sum to 1
    cell: np.ndarray  # (P,) coarse cell of each valid pixel
    n_cells: int


def cell_map(
    row_index: np.ndarray,
    col_index: np.ndarray,
    coarse_shape: tuple[int, int],
    mask: np.ndarray,
    lat: Any,
) -> CellMap:
    """The cell map of a fine grid (``mask`` (H, W)) whose rows/columns lie in coarse rows/columns
    ``row_index``/``col_index`` of a ``coarse_shape`` grid; weights cos(``lat``) per fine row."""
    cells = row_index[:, None] * coarse_shape[1] + col_index[None, :]
    weights = np.broadcast_to(np.cos(np.deg2rad(np.asarray(lat, float)))[:, None], mask.shape)
    pixels = np.flatnonzero(mask)
    cell, w = cells.ravel()[pixels], weights.ravel()[pixels]
    n_cells = int(coarse_shape[0] * coarse_shape[1])
    total = np.bincount(cell, weights=w, minlength=n_cells)
    average = scipy.sparse.csr_matrix(
        (w / total[cell], (np.arange(cell.size), cell)), shape=(cell.size, n_cells)
    )
    return CellMap(pixels=pixels, average=average, cell=cell, n_cells=n_cells)


def conserve(samples: np.ndarray, coarse: np.ndarray, cells: CellMap, method: str) -> np.ndarray:
    """``samples`` (T, M, H, W) with each cell mean set to ``coarse`` (T, n_cells) of the same time.

    Pixels outside the cell map's valid pixels, and cells whose coarse value is NaN, are returned
    unchanged.
    """
    require(method in METHODS, f"conserve={method} is unknown; use one of {', '.join(METHODS)}")
    t, m = samples.shape[:2]
    flat = samples.reshape(t, m, -1).astype(np.float64)
    x = flat[..., cells.pixels]  # (T, M, P)
    means = (cells.average.T @ x.reshape(t * m, -1).T).T.reshape(t, m, cells.n_cells)
    target = np.broadcast_to(coarse[:, None, :], means.shape)
    keep = ~np.isfinite(target[..., cells.cell])
    if method == "additive":
        out = x + (target - means)[..., cells.cell]
    else:
        if (target < 0).any():
            raise UserError(
                "conserve=multiplicative needs a non-negative coarse field, but it has negative "
                "values; use conserve=additive"
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = (target / means)[..., cells.cell]
        dry = (means <= 0)[..., cells.cell]
        out = np.where(dry, target[..., cells.cell], x * np.where(dry, 0.0, factor))
    flat[..., cells.pixels] = np.where(keep, x, out)
    return flat.reshape(samples.shape).astype(samples.dtype)


class Conservation:
    """The constraint for the ``targets`` of a data store ``ds``: target ``v`` follows ``coarse_v``.

    Each fine pixel's cell is its nearest ``coarse_v`` cell, as the data module maps them.
    """

    def __init__(self, ds: xr.Dataset, targets: Sequence[str], method: str) -> None:
        require(method in METHODS, f"conserve={method} is unknown; use one of {', '.join(METHODS)}")
        missing = [v for v in targets if f"coarse_{v}" not in ds.data_vars]
        require(
            not missing,
            f"conserve={method} needs the coarse-grained predictand in the store, but it has no "
            f"{', '.join('coarse_' + v for v in missing)}; drop conserve= for this data",
        )
        coarse = ds[f"coarse_{targets[0]}"]
        fine_lat, fine_lon = (ds[d].values for d in ds[targets[0]].dims[-2:])
        coarse_lat, coarse_lon = (ds[d].values for d in coarse.dims[-2:])
        self.method = method
        self.coarse = {v: ds[f"coarse_{v}"] for v in targets}
        self.cells = cell_map(
            nearest_index(fine_lat, coarse_lat),
            nearest_index(fine_lon, coarse_lon),
            coarse.shape[-2:],
            valid_mask(ds, targets[0]),
            fine_lat,
        )

    def __call__(self, name: str, samples: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``samples`` (T, M, H, W) of target ``name`` at store time indices ``times``, conserved."""
        coarse = self.coarse[name].isel(time=np.asarray(times)).values.astype(np.float64)
        return conserve(samples, coarse.reshape(len(times), -1), self.cells, self.method)


def conserve_samples(samples: xr.Dataset, store: xr.Dataset, method: str) -> xr.Dataset:
    """A samples store (``downscale.sample``'s layout) conserved after the fact: the same values as
    drawing it again with ``conserve=<method>`` (the constraint acts on the stored float32 samples
    either way), without running the model again."""
    require(
        "conserve" not in samples.attrs,
        f"these samples were drawn with conserve={samples.attrs.get('conserve')} already",
    )
    targets = [v for v in samples.data_vars if samples[v].dims[:2] == ("member", "time")]
    constraint = Conservation(store, targets, method)
    times = samples["time_index"].values
    out = samples.copy()
    for name in targets:
        values = np.moveaxis(samples[name].values, 0, 1)  # (T, M, H, W)
        out[name] = samples[name].copy(data=np.moveaxis(constraint(name, values, times), 0, 1))
    out.attrs["conserve"] = method
    return out
