"""downscale: probabilistic downscaling of climate fields with diffusion models."""

import downscale.utils.resolvers  # noqa: F401 - registers the config resolvers (${first:...})

__version__ = "0.1.0"
