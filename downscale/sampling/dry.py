"""Drizzle correction: member values below a threshold become 0.

A generative model of precipitation in a log or power space puts small positive amounts where the
observations are dry: its noise does not collapse exactly onto the point mass at zero. On Iberia
61% of the residual EDM's member values exceed 0.1 mm/day where 30% of the observations do
(docs/sampling.md, "Drizzle"). The classic correction is the first step of Schmidli, Frei and
Vidale's (2006) local intensity scaling, the "frequency adaptation" of later bias corrections: a
threshold in the model's values chosen so that the model exceeds it as often as the observations
exceed the wet-day threshold, and every model value below it set to zero. Intensities above it are
left as drawn (scaling them as well made the Iberia CRPS worse).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from downscale.utils.errors import require


def fit_dry_threshold(samples: np.ndarray, obs: np.ndarray, wet_day: float) -> tuple[float, float]:
    """The value that ``samples`` (members, *obs.shape) exceed as often as ``obs`` reaches
    ``wet_day``, over the cells where both are finite; and that observed wet frequency.

    Schmidli et al. (2006), Int. J. Climatol. 26, 679-689, section 3.2 (the LOCI threshold)."""
    samples = np.asarray(samples, np.float64)
    obs = np.asarray(obs, np.float64)
    require(
        samples.shape[1:] == obs.shape,
        f"dry threshold: samples {samples.shape} do not match observations {obs.shape}",
    )
    valid = np.isfinite(obs) & np.isfinite(samples).all(axis=0)
    require(valid.any(), "dry.threshold=auto: the fit split has no valid observed cells")
    frequency = float((obs[valid] >= wet_day).mean())
    require(
        frequency > 0,
        f"dry.threshold=auto: no observation of the fit split reaches dry.wet_day={wet_day}; "
        "lower dry.wet_day or fit on a longer split (dry.fit_split)",
    )
    threshold = float(np.quantile(samples[:, valid], 1.0 - frequency))
    return max(threshold, 0.0), frequency


class DryThreshold:
    """A sampling post-processor: values of ``variables`` below ``threshold`` become 0 (NaN stays
    NaN). Called as ``(name, samples (T, M, H, W), store time indices)`` like the conservation
    constraint, and applied before it."""

    def __init__(self, threshold: float, variables: Sequence[str]) -> None:
        require(
            threshold >= 0,
            f"dry.threshold={threshold} must be >= 0 (units of the predictand) or auto",
        )
        self.threshold = float(threshold)
        self.variables = tuple(variables)

    def __call__(self, name: str, samples: np.ndarray, times: np.ndarray) -> np.ndarray:
        if name not in self.variables:
            return samples
        return np.where(samples < self.threshold, samples.dtype.type(0), samples)
