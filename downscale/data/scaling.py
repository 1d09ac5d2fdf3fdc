"""Per-variable scalers, fitted on the training split only and stored in checkpoints.

Each scaler maps physical values to the network's space (``forward``) and back (``inverse``) on numpy
arrays, torch tensors and xarray objects alike; ``inverse(forward(x)) == x`` to float precision.
Their state is made of plain Python values so checkpoints load with ``torch.load(weights_only=True)``.
Definitions follow the reference system (see REFERENCE.md, "Scalers").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from downscale.utils.errors import require

Array = Any  # numpy array, torch tensor or xarray object


def _lib(x: Array):
    """numpy-like namespace for ``x`` (torch for tensors, numpy otherwise; xarray uses numpy ufuncs)."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def _finite_values(data: xr.DataArray) -> xr.DataArray:
    return data.where(np.isfinite(data))


class Scaler:
    """Base class: subclasses implement ``forward``/``inverse`` and, when they need it, ``fit``."""

    def fit(self, data: xr.DataArray) -> Scaler:
        return self

    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def inverse(self, y: Array) -> Array:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"class": type(self).__name__, **state}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class IdentityScaler(Scaler):
    """y = x."""

    def forward(self, x: Array) -> Array:
        return x

    def inverse(self, y: Array) -> Array:
        return y


class ZScaler(Scaler):
    """y = (x - mean) / (k std); the reference uses k = 5 so that most values fall in [-1, 1].

    ``with_mean=False`` gives x / (k std); ``threshold`` fits mean and std on values above it only.
    """

    def __init__(
        self,
        k: float = 5.0,
        with_mean: bool = True,
        threshold: float | None = None,
        mean: float | None = None,
        std: float | None = None,
    ) -> None:
        self.k = float(k)
        self.with_mean = bool(with_mean)
        self.threshold = threshold
        self.mean = mean
        self.std = std

    def fit(self, data: xr.DataArray) -> ZScaler:
        values = _finite_values(data)
        if self.threshold is not None:
            values = values.where(values > self.threshold)
        mean, std = (
            float(v) for v in xr.Dataset({"m": values.mean(), "s": values.std()}).compute().values()
        )
        require(
            math.isfinite(mean) and math.isfinite(std) and std > 0,
            f"cannot fit a z-score scaler on '{data.name}': no finite values with spread"
            " (above the threshold); check the variable and the training split",
        )
        self.mean = mean if self.with_mean else 0.0
        self.std = std
        return self

    def forward(self, x: Array) -> Array:
        return (x - self.mean) / (self.k * self.std)

    def inverse(self, y: Array) -> Array:
        return y * (self.k * self.std) + self.mean


class MinMaxScaler(Scaler):
    """y = 2 (x - min) / (max - min) - 1, mapping the training range to [-1, 1].

    (The reference codebase's formula maps to [-2, 0]; this is the intended one.)
    """

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        self.min = min
        self.max = max

    def fit(self, data: xr.DataArray) -> MinMaxScaler:
        values = _finite_values(data)
        lo, hi = (
            float(v) for v in xr.Dataset({"a": values.min(), "b": values.max()}).compute().values()
        )
        require(hi > lo, f"cannot fit a min-max scaler on '{data.name}': the variable is constant")
        self.min, self.max = lo, hi
        return self

    def forward(self, x: Array) -> Array:
        return 2.0 * (x - self.min) / (self.max - self.min) - 1.0

    def inverse(self, y: Array) -> Array:
        return (y + 1.0) * 0.5 * (self.max - self.min) + self.min


class LogScaler(Scaler):
    """Precipitation: y = log10(1 + x) / divisor (reference: divisor 2), inverse 10^(divisor y) - 1."""

    def __init__(self, divisor: float = 2.0) -> None:
        self.divisor = float(divisor)

    def forward(self, x: Array) -> Array:
        lib = _lib(x)
        if lib is np:
            return np.log10(1.0 + np.maximum(x, 0.0)) / self.divisor
        return lib.log10(1.0 + lib.clamp(x, min=0.0)) / self.divisor

    def inverse(self, y: Array) -> Array:
        # y < 0 maps to negative rain (down to -1): clamp as SqrtScaler does, so that generated
        # fields (which can undershoot 0 in scaled space) stay physical
        lib = _lib(y)
        y = np.maximum(y, 0.0) if lib is np else lib.clamp(y, min=0.0)
        return 10.0 ** (self.divisor * y) - 1.0


class SqrtScaler(Scaler):
    """Precipitation: y = sqrt(x) / divisor (reference: divisor 15), inverse (divisor y)^2 for y >= 0."""

    def __init__(self, divisor: float = 15.0) -> None:
        self.divisor = float(divisor)

    def forward(self, x: Array) -> Array:
        lib = _lib(x)
        if lib is np:
            return np.sqrt(np.maximum(x, 0.0)) / self.divisor
        return lib.sqrt(lib.clamp(x, min=0.0)) / self.divisor

    def inverse(self, y: Array) -> Array:
        lib = _lib(y)
        y = np.maximum(y, 0.0) if lib is np else lib.clamp(y, min=0.0)
        return (self.divisor * y) ** 2


SCALER_CLASSES = {
    cls.__name__: cls for cls in (IdentityScaler, ZScaler, MinMaxScaler, LogScaler, SqrtScaler)
}


def scaler_from_state(state: dict[str, Any]) -> Scaler:
    """Rebuild a scaler from :meth:`Scaler.state_dict` (used when loading a checkpoint)."""
    params = dict(state)
    name = params.pop("class", None)
    require(
        name in SCALER_CLASSES,
        f"unknown scaler '{name}' in checkpoint; expected one of {sorted(SCALER_CLASSES)}",
    )
    return SCALER_CLASSES[name](**params)
