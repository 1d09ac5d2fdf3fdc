"""Rectilinear lat/lon grid descriptions with explicit cell bounds.

A :class:`Grid` holds ascending cell centres and cell edges for latitude and longitude (degrees,
longitude in -180..180). Edges are what conservative regridding needs: the area of a cell on the
unit sphere is ``(sin(lat_hi) - sin(lat_lo)) * (lon_hi - lon_lo)`` (radians), which is exact for
cells bounded by meridians and latitude circles (regular and Gaussian grids alike).

Grid factories used by the build recipes take the fine grid (``fine``) as their first argument so
that a recipe can say "a 2.5 deg grid covering the fine domain", "the grid of this file, cropped to
the fine domain" or "the fine grid coarsened x8"; they are configured with ``_partial_: true``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from downscale.utils.errors import UserError

_LAT_NAMES = ("lat", "latitude", "nav_lat", "y")
_LON_NAMES = ("lon", "longitude", "nav_lon", "x")


@dataclass(frozen=True, eq=False)
class Grid:
    """A rectilinear lat/lon grid: ascending centres and their ``n + 1`` edges (degrees)."""

    lat: np.ndarray
    lon: np.ndarray
    lat_bounds: np.ndarray
    lon_bounds: np.ndarray
    kind: str = "regular"

    def __post_init__(self) -> None:
        for name in ("lat", "lon", "lat_bounds", "lon_bounds"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if self.lat_bounds.shape != (self.lat.size + 1,) or self.lon_bounds.shape != (
            self.lon.size + 1,
        ):
            raise ValueError("a Grid needs n + 1 edges for n centres")
        if np.any(np.diff(self.lat_bounds) <= 0) or np.any(np.diff(self.lon_bounds) <= 0):
            raise ValueError("Grid edges must be strictly ascending")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lat.size, self.lon.size)

    def cell_area(self) -> np.ndarray:
        """Cell areas on the unit sphere (steradians), shape ``(nlat, nlon)``."""
        return np.outer(lat_band_area(self.lat_bounds), np.radians(np.diff(self.lon_bounds)))

    def extent(self) -> tuple[float, float, float, float]:
        """``(lon_min, lon_max, lat_min, lat_max)`` of the cell edges."""
        return (
            float(self.lon_bounds[0]),
            float(self.lon_bounds[-1]),
            float(self.lat_bounds[0]),
            float(self.lat_bounds[-1]),
        )

    def isel(self, lat: slice, lon: slice) -> Grid:
        """The sub-grid of the given centre index slices (step 1)."""
        i0, i1, _ = lat.indices(self.lat.size)
        j0, j1, _ = lon.indices(self.lon.size)
        return Grid(
            self.lat[i0:i1],
            self.lon[j0:j1],
            self.lat_bounds[i0 : i1 + 1],
            self.lon_bounds[j0 : j1 + 1],
            self.kind,
        )

    def describe(self) -> dict[str, object]:
        """A plain-dict summary (for store attributes and checkpoints)."""
        return {
            "kind": self.kind,
            "nlat": int(self.lat.size),
            "nlon": int(self.lon.size),
            "lat": [float(self.lat[0]), float(self.lat[-1])],
            "lon": [float(self.lon[0]), float(self.lon[-1])],
            "extent": list(self.extent()),
        }

    def same_as(self, other: Grid, atol: float = 1e-6) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.lat_bounds, other.lat_bounds, atol=atol)
            and np.allclose(self.lon_bounds, other.lon_bounds, atol=atol)
        )


def lat_band_area(lat_bounds: np.ndarray) -> np.ndarray:
    """Area of latitude bands on the unit sphere per radian of longitude: ``diff(sin(edges))``."""
    return np.diff(np.sin(np.radians(np.clip(lat_bounds, -90.0, 90.0))))


def normalise_lon(lon: np.ndarray | float) -> np.ndarray:
    """Map longitudes to [-180, 180)."""
    return (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0


def edges_from_centres(centres: np.ndarray) -> np.ndarray:
    """Cell edges halfway between ascending centres, the outer ones mirrored (cdo's convention)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        raise UserError(
            "a grid axis has a single point, so its cell size is unknown; widen the box"
        )
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def gaussian_latitudes(nlat: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres and edges (ascending, degrees) of the Gaussian grid with ``nlat`` latitudes.

    Centres are the roots of the Legendre polynomial P_nlat; edges are placed so that each band's
    area equals its Gauss quadrature weight, ``sin(edge_k) = -1 + sum_{i<k} w_i`` (the usual
    definition of Gaussian grid cell bounds, e.g. in ECMWF/CDO).
    """
    x, w = np.polynomial.legendre.leggauss(nlat)
    centres = np.degrees(np.arcsin(x))
    s = np.clip(-1.0 + np.concatenate([[0.0], np.cumsum(w)]), -1.0, 1.0)
    edges = np.degrees(np.arcsin(s))
    edges[0], edges[-1] = -90.0, 90.0
    return centres, edges


def _match_gaussian(lat: np.ndarray, tol: float = 2e-3) -> np.ndarray | None:
    """Edges of the Gaussian grid whose latitudes contain ``lat`` (ascending), or None."""
    if lat.size < 2:
        return None
    step = float(np.median(np.diff(lat)))
    guess = int(round(180.0 / step))
    for nlat in range(max(guess - 3, 2), guess + 4):
        centres, edges = gaussian_latitudes(nlat)
        i0 = int(np.argmin(np.abs(centres - lat[0])))
        if i0 + lat.size <= nlat and np.allclose(centres[i0 : i0 + lat.size], lat, atol=tol):
            return edges[i0 : i0 + lat.size + 1]
    return None


def _is_regular(c: np.ndarray, atol: float = 2e-5) -> bool:
    """Equal spacing up to float32 rounding of coordinates (Gaussian grids deviate by ~1e-4 deg)."""
    d = np.diff(c)
    return c.size < 3 or bool(np.abs(d - np.median(d)).max() < atol)


def grid_from_coords(
    lat: np.ndarray,
    lon: np.ndarray,
    lat_bounds: np.ndarray | None = None,
    lon_bounds: np.ndarray | None = None,
) -> Grid:
    """Build a :class:`Grid` from ascending centres (and optional CF bounds of shape (n, 2)).

    Without bounds, unequally spaced latitudes that match a Gaussian grid get Gaussian bounds,
    others get midpoints. (Near the equator Gaussian latitudes are equally spaced to < 2e-5 deg
    and are taken as regular; their midpoint bounds then differ by < 2e-3 deg: pass
    ``grids.gaussian(...)`` for exact ones.)
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    kind = "regular"
    if lat_bounds is not None:
        lb = np.asarray(lat_bounds, dtype=np.float64)
        lat_edges = np.concatenate([lb[:, 0], lb[-1:, 1]]) if lb.ndim == 2 else lb
        lat_edges = np.sort(lat_edges)
        kind = "regular" if _is_regular(lat) else "irregular"
    elif _is_regular(lat):
        lat_edges = np.clip(edges_from_centres(lat), -90.0, 90.0)
    else:
        lat_edges = _match_gaussian(lat)
        kind = "gaussian"
        if lat_edges is None:
            lat_edges, kind = edges_from_centres(lat), "irregular"
    if lon_bounds is not None:
        ob = np.asarray(lon_bounds, dtype=np.float64)
        lon_edges = np.concatenate([ob[:, 0], ob[-1:, 1]]) if ob.ndim == 2 else ob
        lon_edges = np.sort(lon_edges)
    else:
        lon_edges = edges_from_centres(lon)
    return Grid(lat, lon, lat_edges, lon_edges, kind)


def _coord_name(obj: xr.Dataset | xr.DataArray, names: Sequence[str]) -> str:
    for n in names:
        if n in obj.coords or n in obj.dims:
            return n
    raise UserError(
        f"no latitude/longitude coordinate among {list(names)} (found {list(obj.coords)}); "
        "name the grid coordinates lat/lon"
    )


def grid_of(obj: xr.Dataset | xr.DataArray) -> Grid:
    """The grid of a standardised dataset/array (``lat``/``lon`` ascending, optional CF bounds)."""
    lat_name, lon_name = _coord_name(obj, _LAT_NAMES), _coord_name(obj, _LON_NAMES)
    lat = obj[lat_name].values
    lon = obj[lon_name].values
    bounds = {}
    if isinstance(obj, xr.Dataset):
        for key, name in (("lat", lat_name), ("lon", lon_name)):
            bname = obj[name].attrs.get("bounds")
            if bname and bname in obj:
                b = np.asarray(obj[bname].values, dtype=np.float64)
                b = np.sort(b, axis=1)
                if key == "lon":
                    b = b - (np.asarray(obj[name].values) - lon)[:, None]
                bounds[key] = b
    if lat[0] > lat[-1]:
        lat = lat[::-1]
        if "lat" in bounds:
            bounds["lat"] = bounds["lat"][::-1]
    return grid_from_coords(lat, lon, bounds.get("lat"), bounds.get("lon"))


def snap_box(
    grid: Grid,
    lon: Sequence[float] | None = None,
    lat: Sequence[float] | None = None,
    margin: int = 0,
    *,
    rule: str = "centre",
    what: str = "the data",
) -> tuple[slice, slice]:
    """Index slices of the cells of ``grid`` in a lon/lat box, plus ``margin`` cells each side.

    ``rule="centre"``: cells whose centre lies in the box; ``rule="overlap"``: cells overlapping it.
    Raises :class:`UserError` when the box holds no cell.
    """
    out = []
    for axis, box, centres, edges in (
        ("lat", lat, grid.lat, grid.lat_bounds),
        ("lon", lon, grid.lon, grid.lon_bounds),
    ):
        n = centres.size
        if box is None:
            out.append(slice(0, n))
            continue
        lo, hi = float(min(box)), float(max(box))
        if axis == "lon" and hi > 180.0:  # a 0..360 box: to -180..180 like the data
            lo, hi = (float(v) for v in normalise_lon(np.array([lo, hi])))
            if lo > hi:
                raise UserError(
                    f"the domain box lon {list(box)} crosses the date line; split it or use a "
                    "box within -180..180"
                )
        if rule == "centre":
            idx = np.nonzero((centres >= lo - 1e-9) & (centres <= hi + 1e-9))[0]
        else:
            idx = np.nonzero((edges[1:] > lo + 1e-9) & (edges[:-1] < hi - 1e-9))[0]
        if idx.size == 0:
            ext = grid.extent()
            raise UserError(
                f"the domain box {axis} [{lo}, {hi}] holds no cell of {what} (which covers lon "
                f"[{ext[0]:.3f}, {ext[1]:.3f}], lat [{ext[2]:.3f}, {ext[3]:.3f}]); fix domain.box"
            )
        out.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, n)))
    return out[0], out[1]


def regular(
    fine: Grid | None = None,
    resolution: Sequence[float] = (1.0, 1.0),
    offset: Sequence[float] | None = None,
    margin: int = 0,
    box: dict[str, Sequence[float]] | None = None,
) -> Grid:
    """A regular grid of ``resolution = (dlon, dlat)`` degrees covering ``fine`` (or ``box``).

    Centres sit at ``offset + k * d`` (default ``offset = d / 2``, so edges fall on multiples of d);
    e.g. the CESM f09 grid is ``resolution: [1.25, 0.9424083769633508], offset: [0, -90]``.
    ``margin`` adds whole cells on every side.
    """
    dlon, dlat = float(resolution[0]), float(resolution[1])
    if dlon <= 0 or dlat <= 0:
        raise UserError(f"grid resolution must be positive, got {list(resolution)}; fix it")
    off_lon, off_lat = (dlon / 2, dlat / 2) if offset is None else map(float, offset)
    if box is not None:
        lon0, lon1 = min(box["lon"]), max(box["lon"])
        lat0, lat1 = min(box["lat"]), max(box["lat"])
    elif fine is not None:
        lon0, lon1, lat0, lat1 = fine.extent()
    else:
        raise UserError("a regular grid needs a fine grid or a box to cover; give box: {lon, lat}")

    def axis(lo: float, hi: float, d: float, off: float) -> np.ndarray:
        # every cell overlapping [lo, hi], plus the margin
        k0 = int(np.floor((lo - off) / d + 0.5 + 1e-9)) - margin
        k1 = int(np.ceil((hi - off) / d - 0.5 - 1e-9)) + margin
        return off + d * np.arange(k0, k1 + 1)

    lat = axis(lat0, lat1, dlat, off_lat)
    lat = lat[(lat > -90.0) & (lat < 90.0)]
    lon = axis(lon0, lon1, dlon, off_lon)
    lat_edges = np.clip(np.concatenate([lat - dlat / 2, [lat[-1] + dlat / 2]]), -90.0, 90.0)
    lon_edges = np.concatenate([lon - dlon / 2, [lon[-1] + dlon / 2]])
    return Grid(lat, lon, lat_edges, lon_edges, "regular")


def gaussian(
    fine: Grid | None = None, nlat: int = 94, dlon: float | None = None, margin: int = 0
) -> Grid:
    """The Gaussian grid with ``nlat`` latitudes (and ``dlon = 360 / (2 nlat)`` unless given)
    cropped to the cells overlapping ``fine``, plus ``margin`` cells."""
    centres, edges = gaussian_latitudes(nlat)
    dlon = 360.0 / (2 * nlat) if dlon is None else float(dlon)
    lon = normalise_lon(np.arange(int(round(360.0 / dlon))) * dlon)
    lon = np.sort(lon)
    full = Grid(centres, lon, edges, np.concatenate([lon - dlon / 2, [lon[-1] + dlon / 2]]))
    full = Grid(full.lat, full.lon, full.lat_bounds, full.lon_bounds, "gaussian")
    if fine is None:
        return full
    ext = fine.extent()
    sl = snap_box(full, ext[:2], ext[2:], margin, rule="overlap", what=f"Gaussian N{nlat}")
    return full.isel(*sl)


def from_file(fine: Grid | None = None, path: str | os.PathLike[str] = "", margin: int = 0) -> Grid:
    """The grid of a reference file (e.g. a GCM's), cropped to the cells overlapping ``fine``."""
    from downscale.data.sources import open_any, standardise

    ds = standardise(open_any(path), str(path))
    full = grid_of(ds)
    if fine is None:
        return full
    ext = fine.extent()
    sl = snap_box(full, ext[:2], ext[2:], margin, rule="overlap", what=str(path))
    return full.isel(*sl)


def coarsen(fine: Grid, factor: int = 8) -> Grid:
    """The grid of ``factor x factor`` blocks of ``fine`` (trailing rows/columns that do not fill a
    block are dropped); the block edges are the fine edges, so coarse cells tile the fine ones."""
    f = int(factor)
    ny, nx = fine.lat.size // f, fine.lon.size // f
    if ny == 0 or nx == 0:
        raise UserError(f"the fine grid {fine.shape} is smaller than one x{f} block; widen the box")
    lat_e = fine.lat_bounds[: ny * f + 1 : f]
    lon_e = fine.lon_bounds[: nx * f + 1 : f]
    lat = np.degrees(
        np.arcsin(0.5 * (np.sin(np.radians(lat_e[1:])) + np.sin(np.radians(lat_e[:-1]))))
    )
    return Grid(lat, 0.5 * (lon_e[1:] + lon_e[:-1]), lat_e, lon_e, fine.kind)


def grid_to_coords(
    grid: Grid, lat_name: str = "lat", lon_name: str = "lon"
) -> dict[str, xr.DataArray]:
    """Coordinates (with CF attributes) for a grid."""
    return {
        lat_name: xr.DataArray(
            grid.lat, dims=lat_name, attrs={"units": "degrees_north", "standard_name": "latitude"}
        ),
        lon_name: xr.DataArray(
            grid.lon, dims=lon_name, attrs={"units": "degrees_east", "standard_name": "longitude"}
        ),
    }


def bounds_dataset(grid: Grid, lat_name: str = "lat", lon_name: str = "lon") -> xr.Dataset:
    """A dataset holding the grid's coordinates and CF ``*_bnds`` variables."""
    coords = grid_to_coords(grid, lat_name, lon_name)
    coords[lat_name].attrs["bounds"] = f"{lat_name}_bnds"
    coords[lon_name].attrs["bounds"] = f"{lon_name}_bnds"
    lb = np.stack([grid.lat_bounds[:-1], grid.lat_bounds[1:]], axis=1)
    ob = np.stack([grid.lon_bounds[:-1], grid.lon_bounds[1:]], axis=1)
    return xr.Dataset(
        {
            f"{lat_name}_bnds": ((lat_name, "bnds"), lb),
            f"{lon_name}_bnds": ((lon_name, "bnds"), ob),
        },
        coords=coords,
    )
