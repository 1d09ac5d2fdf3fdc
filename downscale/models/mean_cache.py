"""The frozen regression's mean of each training sample, kept across the residual stage's epochs.

In the residual stage of :class:`~downscale.models.residual.ResidualModel` the regression is frozen,
so the mean of a training sample is the same every epoch. When the training items are fixed windows
(the whole domain, or one region: ``fixed_items`` on the dataset), a sample is named by its store
time index and window anchor, and its mean is computed once and looked up afterwards. On Iberia's core
training the regression's forward pass was 27% of a residual-stage step (bench/skill/notes.md,
"Machine and budget"). Random patches rarely repeat, so they are not cached.

The cached values are those a step computes, to float32 rounding: the nets use no batch statistics,
but CPU convolutions round differently for different batch sizes, and a cross-fitted mean runs each
fold's net on that fold's part of the batch, whose size changes with the shuffle. On the Iberia core's
trained regression a day's mean moved by up to 2e-7 (in the scaled units) against a batch of one,
and by up to 4e-8 between two shuffles, which the uncached path also sees from epoch to epoch. A training with the cache
therefore follows another trajectory from the first residual epoch on, as a run with another
shuffle order would (bench/skill/notes.md, item 30).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_info


class MeanCache:
    """Means keyed by ``(time index, anchor row, anchor column)``, up to ``max_bytes`` of them
    (further samples are computed every step, as without a cache)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._means: dict[tuple[int, int, int], torch.Tensor] = {}
        self._full_reported = False

    def __len__(self) -> int:
        return len(self._means)

    def mean(
        self,
        compute: Callable[[torch.Tensor | None], torch.Tensor],
        time: torch.Tensor,
        anchor: torch.Tensor,
    ) -> torch.Tensor:
        """The batch's means: cached rows looked up, the others from ``compute(rows)`` (``rows``:
        the batch indices to compute, ``None`` for the whole batch), then cached while room is
        left."""
        keys = [(t, r, c) for t, (r, c) in zip(time.tolist(), anchor.tolist(), strict=True)]
        missing = [i for i, key in enumerate(keys) if key not in self._means]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if len(missing) == len(keys):
            fresh = compute(None)
            return self._keep(keys, fresh)
        out = [self._means.get(key) for key in keys]
        if missing:
            rows = torch.tensor(missing, device=time.device)
            fresh = self._keep([keys[i] for i in missing], compute(rows))
            for i, value in zip(missing, fresh, strict=True):
                out[i] = value
        return torch.stack(out)  # type: ignore[arg-type]

    def _keep(self, keys: list[tuple[int, int, int]], values: torch.Tensor) -> torch.Tensor:
        values = values.detach()
        for key, value in zip(keys, values, strict=True):
            size = value.numel() * value.element_size()
            if self.bytes + size > self.max_bytes:
                self._report_full()
                break
            # a clone: a view would keep the whole batch's tensor alive
            self._means[key] = value.clone()
            self.bytes += size
        return values

    def _report_full(self) -> None:
        if not self._full_reported:
            self._full_reported = True
            rank_zero_info(
                f"regression mean cache full ({len(self)} samples, {self.bytes / 2**20:.0f} MiB); "
                "the other samples' means are computed every step (raise model.mean_cache_gb)"
            )
