"""Unit conversions checked from the files' ``units`` attributes.

Spellings are normalised to a canonical symbol (``"kg m-2 s-1"``, ``"kg/m2/s"`` and
``"kg m**-2 s**-1"`` are one unit); a conversion is an affine map ``y = scale * x + offset`` between
canonical symbols. Only physically meaningful pairs are listed (precipitation flux/rate/depth per
time, temperature, pressure, geopotential, humidity); anything else is a :class:`UserError` naming
the file, variable and units.
"""

from __future__ import annotations

import re

import xarray as xr

from downscale.utils.errors import UserError

G0 = 9.80665  # standard gravity, m s-2 (geopotential -> geopotential height)

# canonical symbol -> accepted spellings (after lower-casing and removing spaces/'*'/'^')
_ALIASES: dict[str, tuple[str, ...]] = {
    "mm/day": ("mm/day", "mm/d", "mmday-1", "mmd-1", "mm/24h", "kgm-2day-1", "kg/m2/day"),
    "mm/h": ("mm/h", "mm/hr", "mmh-1", "mmhr-1", "mm/hour", "kgm-2h-1"),
    "kg m-2 s-1": ("kgm-2s-1", "kg/m2/s", "kg/m^2/s", "kgm-2s-1", "mm/s", "mms-1"),
    "m/day": ("m/day", "md-1", "mday-1"),
    "K": ("k", "kelvin", "degk", "deg_k"),
    "degC": ("degc", "c", "celsius", "deg_c", "degreec", "degreesc", "degree_celsius", "°c"),
    "Pa": ("pa", "pascal"),
    "hPa": ("hpa", "mbar", "mb", "millibar"),
    "kg kg-1": ("kgkg-1", "kg/kg", "1", "", "dimensionless"),
    "g kg-1": ("gkg-1", "g/kg"),
    "%": ("%", "percent"),
    "m": ("m", "meter", "metre", "meters", "metres", "gpm"),
    "m2 s-2": ("m2s-2", "m2/s2", "m^2/s^2", "m**2s**-2"),
    "s-1": ("s-1", "1/s", "s**-1"),
}
_CANON = {alias: canon for canon, aliases in _ALIASES.items() for alias in aliases}

# (from, to) -> (scale, offset)
_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("kg m-2 s-1", "mm/day"): (86400.0, 0.0),
    ("kg m-2 s-1", "mm/h"): (3600.0, 0.0),
    ("mm/h", "mm/day"): (24.0, 0.0),
    ("mm/day", "mm/h"): (1 / 24.0, 0.0),
    ("mm/day", "kg m-2 s-1"): (1 / 86400.0, 0.0),
    ("mm/h", "kg m-2 s-1"): (1 / 3600.0, 0.0),
    ("m/day", "mm/day"): (1000.0, 0.0),
    ("degC", "K"): (1.0, 273.15),
    ("K", "degC"): (1.0, -273.15),
    ("hPa", "Pa"): (100.0, 0.0),
    ("Pa", "hPa"): (0.01, 0.0),
    ("g kg-1", "kg kg-1"): (1e-3, 0.0),
    ("kg kg-1", "g kg-1"): (1e3, 0.0),
    ("m2 s-2", "m"): (1 / G0, 0.0),
    ("m", "m2 s-2"): (G0, 0.0),
}


def canonical(units: str) -> str | None:
    """The canonical symbol of a units string, or None when unknown."""
    key = re.sub(r"[\s*^]", "", str(units).strip().lower())
    key = key.replace("**", "")
    return _CANON.get(key)


def conversion(src: str, dst: str) -> tuple[float, float] | None:
    """``(scale, offset)`` taking ``src`` units to ``dst`` units, or None if impossible."""
    a, b = canonical(src), canonical(dst)
    if a is None or b is None:  # unknown units convert only to the identical spelling
        return (1.0, 0.0) if src.strip() == dst.strip() else None
    if a == b:
        return (1.0, 0.0)
    return _CONVERSIONS.get((a, b))


def convert(da: xr.DataArray, dst: str, *, where: str, src: str | None = None) -> xr.DataArray:
    """Convert ``da`` to ``dst`` units, reading its units from ``attrs['units']`` (or ``src``).

    ``where`` names the file and variable for the error message.
    """
    have = src if src is not None else da.attrs.get("units")
    if have is None:
        raise UserError(
            f"{where} has no `units` attribute; add `units_in: <units>` to its variable entry"
        )
    factor = conversion(str(have), dst)
    if factor is None:
        raise UserError(
            f"{where} is in {have!r}, which cannot be converted to {dst!r}; "
            "fix the recipe's `units` (or `units_in` if the file's attribute is wrong)"
        )
    scale, offset = factor
    attrs = dict(da.attrs)
    out = da if (scale, offset) == (1.0, 0.0) else da * scale + offset
    attrs["units"] = dst
    if (scale, offset) != (1.0, 0.0):
        attrs["units_converted_from"] = str(have)
    out.attrs = attrs
    return out
