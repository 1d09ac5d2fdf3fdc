"""The DataModule: opens a dataset store, splits it in time, fits scalers on the training split, and
serves batches (contract in docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import xarray as xr
from torch.utils.data import DataLoader, Dataset

from downscale.data.chunks import open_array
from downscale.data.datasets import Fields, UpsampleDataset
from downscale.data.scaling import Scaler, scaler_from_state
from downscale.data.store import (
    COARSE_PREFIX,
    STATIC_PREFIX,
    nearest_index,
    open_store,
    require_variables,
    time_offset_table,
    time_offsets,
    time_split,
    valid_mask,
)
from downscale.utils.errors import UserError, require

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
        eval_dataset: factory for test/sampling (and validation unless ``val_dataset``); whole
            domain when None. Sampling writes the whole fine grid, so keep it whole-domain
            (``UpsampleDataset``, optionally padded) when the model is sampled with this config.
        val_dataset: factory for validation only (e.g. a fixed region of a large domain); defaults
            to ``eval_dataset``.
        splits: ``{train, val, test}`` -> [start, end] as fractions or dates.
        drop_feb29: drop 29 February (as the reference system does).
        day_of_year: add sin/cos of the day of year as inputs.
        location: add normalised row/column coordinates as inputs.
        in_memory_limit_gb: load arrays into memory, smallest first, while their total stays below
            this; the rest is read lazily from the store (chunk by chunk).
        recipe: the build recipe (``conf/build/<recipe>.yaml``) that makes the store; named in the
            error when the store is missing.
        regions: named fixed regions, ``name -> [row, col, height, width]`` or
            ``{lat: [s, n], lon: [w, e]}``, usable as ``FixedRegionDataset(region=<name>)``.
        fit_scalers: fit scalers on the training split (True) or require scalers from a checkpoint
            (False: a store that is only ever sampled, e.g. GCM predictors on the training grids).
        coarse_offsets: time steps of the predictors relative to the target (``[0, 1]``: the same
            and the next step, e.g. for E-OBS days that end at 06 UTC of the next reanalysis day);
            a step missing from the store is replaced by the target's own (``time_offset_table``).
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
        val_dataset: DatasetFactory | None = None,
        recipe: str | None = None,
        regions: dict[str, Any] | None = None,
        fit_scalers: bool = True,
        coarse_offsets: Sequence[int] = (0,),
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
        self.val_factory = val_dataset
        self.recipe = recipe
        self.regions = {k: _plain(v) for k, v in (regions or {}).items()}
        self.fit_scalers = fit_scalers
        self.coarse_offsets = time_offsets(coarse_offsets)
        self.fitted = False
        self.ds: xr.Dataset | None = None
        self.fields: Fields | None = None
        self.split_indices: dict[str, np.ndarray] = {}

    # --- set-up --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Open the store, check variables and splits, fit scalers if needed, build the fields."""
        if self.fields is not None:
            return
        ds = open_store(self.store, self.recipe)
        require(
            self.batch_size >= 1 and self.eval_batch_size >= 1,
            f"data.batch_size={self.batch_size} / data.eval_batch_size={self.eval_batch_size} must be "
            ">= 1; set a positive batch size",
        )
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
        require(
            "train" in self.splits or self.fitted or not self.fit_scalers,
            f"data.splits has no 'train' split to fit the scalers on (has {list(self.splits)}); add one",
        )
        for name, bounds in self.splits.items():
            idx = usable[time_split(times[usable], bounds)]
            require(
                len(idx) > 0,
                f"split '{name}' {list(bounds)} selects no time steps of {self.store} (it holds "
                f"{times[0]} .. {times[-1]}, {len(times)} steps); change data.splits.{name}",
            )
            self.split_indices[name] = idx
        self.ds = ds
        if not self.fitted:
            require(
                self.fit_scalers,
                f"the data config of {self.store} takes its scalers from a checkpoint (fit_scalers: "
                "false); sample a trained model with 'python -m downscale.sample run_dir=<train run> "
                f"data.store={self.store}'",
            )
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
            values = ds[name].values
            if name in self.coarse_names:
                _require_finite(values, name, ds)
            return values
        if Path(self.store).suffix != ".nc":
            return open_array(self.store, name)
        return ds[name].variable  # lazily indexed netCDF variable

    def _in_memory(self, ds: xr.Dataset) -> set[str]:
        """Arrays to load, smallest first (coarse predictors before fine targets) within the limit."""
        budget, chosen = self.in_memory_limit_gb * 2**30, set()
        for name in sorted(self.targets + self.coarse_names, key=lambda n: ds[n].nbytes):
            if ds[name].nbytes > budget:
                break
            budget -= ds[name].nbytes
            chosen.add(name)
        return chosen

    def _fields(self, ds: xr.Dataset) -> Fields:
        load = self._in_memory(ds)
        target0 = self.targets[0]
        fine_lat, fine_lon = (ds[d].values for d in ds[target0].dims[-2:])
        coarse_dims = (
            ds[self.coarse_names[0]].dims[-2:] if self.coarse_names else ds[target0].dims[-2:]
        )
        coarse_lat, coarse_lon = (ds[d].values for d in coarse_dims)
        times = pd.DatetimeIndex(ds.indexes["time"])
        return Fields(
            targets=[self._array(ds, n, n in load) for n in self.targets],
            coarse=[self._array(ds, n, n in load) for n in self.coarse_names],
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
            lat=fine_lat,
            lon=fine_lon,
            regions=self.regions,
            coarse_times=(
                None
                if self.coarse_offsets == [0]
                else time_offset_table(times.values, self.coarse_offsets)
            ),
        )

    # --- what models and checkpoints need ------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return len(self.targets)

    @property
    def cond_channels(self) -> int:
        self.prepare()
        return self.fields.cond_channels

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(H, W) of the fine grid (before any padding of the datasets)."""
        self.prepare()
        return self.fields.shape

    def crop_to_grid(self, array: Any) -> Any:
        """Crop the last two dims of a model output (e.g. draws (..., H', W') of a padded
        whole-domain dataset) back to the fine grid: ``array[..., :H, :W]`` (padding is at the
        bottom/right). Works on numpy arrays and torch tensors; a no-op at the grid's size."""
        H, W = self.grid_shape
        h, w = array.shape[-2:]
        require(
            h >= H and w >= W,
            f"model output is {h} x {w} but the fine grid is {H} x {W}; sample with a whole-domain "
            "eval_dataset (downscale.data.datasets.UpsampleDataset)",
        )
        return array[..., :H, :W]

    def scaled_target_std(self, max_values: int = 2**24) -> float:
        """Standard deviation of the scaled training targets over valid cells, pooled over the
        target variables: the data std that EDM's preconditioning assumes (``sigma_data``, Karras
        et al. 2022, Sec. 5 and Table 1). Uses evenly spaced training steps, at most ``max_values``
        values per variable."""
        self.prepare()
        mask = self.fields.mask
        train = self.split_indices["train"]
        n_steps = int(np.clip(max_values // max(int(mask.sum()), 1), 1, len(train)))
        chosen = train[np.unique(np.linspace(0, len(train) - 1, n_steps).round().astype(int))]
        values = []
        for name in self.targets:
            raw = self.ds[name].isel(time=chosen).values.astype(np.float32)
            scaled = np.asarray(self.scalers[name].forward(raw))[:, mask]
            values.append(scaled[np.isfinite(scaled)])
        pooled = np.concatenate(values)
        require(
            pooled.size > 1 and pooled.std() > 0,
            f"cannot estimate sigma_data: the scaled training targets of {self.store} have no "
            "spread; set model.precond.sigma_data to a number",
        )
        return float(pooled.std())

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
        self,
        split: str,
        *,
        train: bool = False,
        times: np.ndarray | None = None,
        factory: DatasetFactory | None = None,
    ) -> Dataset:
        """The dataset of ``split`` (or of ``times``): the training factory when ``train``, else
        ``factory`` or the eval factory (whole domain when none is configured)."""
        self.prepare()
        factory = factory or (self.train_factory if train else self.eval_factory)
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
        dataset = self.dataset("val", factory=self.val_factory)
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, shuffle=False)


def _require_finite(values: np.ndarray, name: str, ds: xr.Dataset) -> None:
    """Coarse predictors must be finite: NaNs would silently poison the conditioning."""
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise UserError(
            f"NaNs in predictor '{name}' ({int(bad.sum())} values, first at time "
            f"{ds['time'].values[first]}); fill them when building the store (the recipe's fillna)"
        )


def _plain(value: Any) -> Any:
    """OmegaConf containers to plain lists/dicts (regions come from configs)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value
