"""downscale: probabilistic downscaling of climate fields with diffusion models."""

__version__ = "0.1.0"
