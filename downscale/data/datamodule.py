"""The DataModule: opens a dataset store, splits it in time, fits scalers on the training split, and
serves batches (contract in docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from torch.utils.data import DataLoader, Dataset

from downscale.data.datasets import Fields, UpsampleDataset
from downscale.data.scaling import Scaler, scaler_from_state
from downscale.data.store import (
    COARSE_PREFIX,
    STATIC_PREFIX,
    nearest_index,
    open_store,
    require_variables,
    time_split,
    valid_mask,
)
from downscale.utils.errors import require

DatasetFactory = Callable[..., Dataset]


class DownscaleDataModule(L.LightningDataModule):
    """Batches from a dataset store.

    Args:
        store: path of the dataset store (zarr or netCDF).
        targets: predictand variable names (e.g. ``[precip]``).
        coarse: coarse predictor names without the ``coarse_`` prefix.
        statics: fine static predictor names without the ``static_`` prefix.
        variables: scaler per store variable name (e.g. ``precip``, ``coarse_precip``, ``static_terrain``).
        train_dataset: factory ``(fields, times) -> Dataset`` for training (e.g. random patches).
        eval_dataset: factory for validation/test/sampling; whole domain when None.
        splits: ``{train, val, test}`` -> [start, end] as fractions or dates.
        drop_feb29: drop 29 February (as the reference system does).
        day_of_year: add sin/cos of the day of year as inputs.
        location: add normalised row/column coordinates as inputs.
        in_memory_limit_gb: load arrays into memory when they are smaller than this, else read lazily.
    """

    def __init__(
        self,
        store: str | Path,
        targets: list[str],
        coarse: list[str],
        variables: dict[str, Scaler],
        splits: dict[str, list],
        statics: list[str] | None = None,
        train_dataset: DatasetFactory | None = None,
        eval_dataset: DatasetFactory | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        drop_feb29: bool = True,
        day_of_year: bool = False,
        location: bool = False,
        in_memory_limit_gb: float = 4.0,
    ) -> None:
        super().__init__()
        self.store = str(store)
        self.targets = list(targets)
        self.coarse_names = [COARSE_PREFIX + c for c in coarse]
        self.static_names = [STATIC_PREFIX + s for s in (statics or [])]
        self.scalers = dict(variables)
        self.splits = {k: list(v) for k, v in splits.items()}
        self.train_factory = train_dataset
        self.eval_factory = eval_dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.drop_feb29 = drop_feb29
        self.day_of_year = day_of_year
        self.location = location
        self.in_memory_limit_gb = in_memory_limit_gb
        self.fitted = False
        self.ds: xr.Dataset | None = None
        self.fields: Fields | None = None
        self.split_indices: dict[str, np.ndarray] = {}

    # --- set-up --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Open the store, check variables and splits, fit scalers if needed, build the fields."""
        if self.fields is not None:
            return
        ds = open_store(self.store)
        names = self.targets + self.coarse_names + self.static_names
        require_variables(ds, names, f"data config for {self.store}")
        unscaled = [n for n in names if n not in self.scalers]
        require(
            not unscaled,
            f"no scaler for {unscaled}; add them to the data config's variables (conf/variables/)",
        )
        times = pd.DatetimeIndex(ds.indexes["time"])
        usable = np.arange(len(times))
        if self.drop_feb29:
            usable = usable[~((times.month == 2) & (times.day == 29))]
        for name, bounds in self.splits.items():
            idx = usable[time_split(times[usable], bounds)]
            require(len(idx) > 0, f"split '{name}' {bounds} selects no time steps of {self.store}")
            self.split_indices[name] = idx
        self.ds = ds
        if not self.fitted:
            self._fit_scalers(ds)
        self.fields = self._fields(ds)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _fit_scalers(self, ds: xr.Dataset) -> None:
        train = self.split_indices["train"]
        for name in self.targets + self.coarse_names:
            self.scalers[name].fit(ds[name].isel(time=train))
        for name in self.static_names:
            self.scalers[name].fit(ds[name])
        self.fitted = True

    def _array(self, ds: xr.Dataset, name: str, load: bool):
        if load:
            return ds[name].values
        if Path(self.store).suffix != ".nc":
            return zarr.open_group(self.store, mode="r")[name]
        return ds[name].variable  # lazily indexed netCDF variable

    def _fields(self, ds: xr.Dataset) -> Fields:
        nbytes = sum(ds[n].nbytes for n in self.targets + self.coarse_names)
        load = nbytes < self.in_memory_limit_gb * 2**30
        target0 = self.targets[0]
        fine_lat, fine_lon = (ds[d].values for d in ds[target0].dims[-2:])
        coarse_dims = (
            ds[self.coarse_names[0]].dims[-2:] if self.coarse_names else ds[target0].dims[-2:]
        )
        coarse_lat, coarse_lon = (ds[d].values for d in coarse_dims)
        times = pd.DatetimeIndex(ds.indexes["time"])
        return Fields(
            targets=[self._array(ds, n, load) for n in self.targets],
            coarse=[self._array(ds, n, load) for n in self.coarse_names],
            statics=[
                np.nan_to_num(self.scalers[n].forward(ds[n].values.astype(np.float32)))
                for n in self.static_names
            ],
            mask=valid_mask(ds, target0),
            row_index=nearest_index(fine_lat, coarse_lat),
            col_index=nearest_index(fine_lon, coarse_lon),
            target_scalers=[self.scalers[n] for n in self.targets],
            coarse_scalers=[self.scalers[n] for n in self.coarse_names],
            coarse_names=self.coarse_names,
            day_of_year=times.dayofyear.values if self.day_of_year else None,
            location=self.location,
        )

    # --- what models and checkpoints need ------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return len(self.targets)

    @property
    def cond_channels(self) -> int:
        self.prepare()
        return self.fields.cond_channels

    def scaler_states(self) -> dict[str, dict[str, Any]]:
        return {name: scaler.state_dict() for name, scaler in self.scalers.items()}

    def load_scaler_states(self, states: dict[str, dict[str, Any]]) -> None:
        """Use scalers saved in a checkpoint instead of fitting them."""
        self.scalers = {name: scaler_from_state(state) for name, state in states.items()}
        self.fitted = True
        self.fields = None

    def grid(self) -> dict[str, Any]:
        """Description of the fine grid and variables (stored in checkpoints and samples)."""
        self.prepare()
        ds = self.ds
        ydim, xdim = ds[self.targets[0]].dims[-2:]
        return {
            "store": self.store,
            "dims": [ydim, xdim],
            ydim: ds[ydim].values.tolist(),
            xdim: ds[xdim].values.tolist(),
            "targets": self.targets,
            "units": {n: ds[n].attrs.get("units", "") for n in self.targets},
        }

    # --- datasets and loaders ------------------------------------------------------------------
    def dataset(
        self, split: str, *, train: bool = False, times: np.ndarray | None = None
    ) -> Dataset:
        self.prepare()
        factory = self.train_factory if train else self.eval_factory
        factory = factory or UpsampleDataset
        idx = self.split_indices[split] if times is None else np.asarray(times)
        return factory(self.fields, idx)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train", train=True), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, shuffle=False)
