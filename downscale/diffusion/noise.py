"""Training noise-level distributions p(sigma).

Each is a small callable ``dist(n, *, generator=None, device=None) -> sigma`` of shape ``(n,)``
(float32). Without ``device`` the generator's device is used (CPU when there is no generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from downscale.diffusion.precond import vp_sigma
from downscale.utils.errors import UserError

NoiseLevels = Callable[..., torch.Tensor]


def _device(generator: torch.Generator | None, device: torch.device | str | None):
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


class LogNormal:
    """``ln(sigma) ~ N(P_mean, P_std^2)`` (EDM training distribution, Karras et al. 2022 Sec. 5)."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2) -> None:
        if P_std <= 0:
            raise UserError(f"LogNormal P_std={P_std} must be positive; set a positive P_std")
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)

    def __call__(self, n: int, *, generator=None, device=None) -> torch.Tensor:
        z = torch.randn(n, generator=generator, device=_device(generator, device))
        return (z * self.P_std + self.P_mean).exp()

    def __repr__(self) -> str:
        return f"LogNormal(P_mean={self.P_mean}, P_std={self.P_std})"


class LogUniform:
    """``ln(sigma) ~ U[ln sigma_min, ln sigma_max]``."""

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 80.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise UserError(
                f"LogUniform needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}; "
                "fix the range"
            )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def __call__(self, n: int, *, generator=None, device=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=_device(generator, device))
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (lo + u * (hi - lo)).exp()

    def __repr__(self) -> str:
        return f"LogUniform(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class VPTime:
    """VP training levels: ``t ~ U[epsilon_t, 1]``, ``sigma = sigma_VP(t)`` (Song et al. 2021; EDM
    Table 1). REFERENCE uses ``epsilon_t = 1e-4``."""

    def __init__(
        self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-4
    ) -> None:
        if not 0 < epsilon_t < 1:
            raise UserError(f"VPTime epsilon_t={epsilon_t} must lie in (0, 1); e.g. 1e-4")
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.epsilon_t = float(epsilon_t)

    def __call__(self, n: int, *, generator=None, device=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=_device(generator, device))
        t = self.epsilon_t + u * (1 - self.epsilon_t)
        return vp_sigma(t, self.beta_d, self.beta_min)

    def __repr__(self) -> str:
        return f"VPTime(beta_d={self.beta_d}, beta_min={self.beta_min}, epsilon_t={self.epsilon_t})"


class Mixture:
    """Mixture of noise-level distributions with the given ``fractions`` of each batch.

    Stratified: component ``k`` gets ``floor(f_k n)`` samples, the remaining few go to components
    drawn with probability proportional to the leftover fractions, and positions are shuffled. Every
    sample has the marginal law ``sum_k f_k p_k``, and a batch holds the stated fractions up to
    rounding (e.g. exactly half and half for an even batch), which lowers the loss variance over
    independent draws.
    """

    def __init__(self, components: Sequence[NoiseLevels], fractions: Sequence[float]) -> None:
        if len(components) != len(fractions) or not components:
            raise UserError(
                f"Mixture got {len(components)} components and {len(fractions)} fractions; "
                "give one fraction per component"
            )
        total = float(sum(fractions))
        if any(f < 0 for f in fractions) or not math.isclose(total, 1.0, rel_tol=1e-6):
            raise UserError(
                f"Mixture fractions {list(fractions)} must be >= 0 and sum to 1; fix the fractions"
            )
        self.components = list(components)
        self.fractions = [float(f) / total for f in fractions]

    def __call__(self, n: int, *, generator=None, device=None) -> torch.Tensor:
        device = _device(generator, device)
        frac = torch.tensor(self.fractions, dtype=torch.float64)
        counts = torch.floor(frac * n).long()
        left = n - int(counts.sum())
        if left:
            rest = frac * n - counts
            gen_cpu = None
            if generator is not None:  # keep the draw reproducible from the caller's generator
                seed = torch.randint(2**62, (1,), generator=generator, device=generator.device)
                gen_cpu = torch.Generator().manual_seed(int(seed))
            extra = torch.multinomial(rest, left, replacement=True, generator=gen_cpu)
            counts += torch.bincount(extra, minlength=len(counts))
        draws = [
            comp(int(c), generator=generator, device=device)
            for comp, c in zip(self.components, counts.tolist(), strict=True)
        ]
        sigma = torch.cat(draws)
        perm = torch.randperm(n, generator=generator, device=device)
        return sigma[perm]

    def __repr__(self) -> str:
        return f"Mixture({self.components}, fractions={self.fractions})"
