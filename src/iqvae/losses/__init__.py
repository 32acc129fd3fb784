"""Training losses of IQ-VAE."""

from .sgw import (
    ShapeError,
    random_projections,
    sliced_gromov_wasserstein,
    sliced_gromov_wasserstein_reference,
)

__all__ = [
    "ShapeError",
    "random_projections",
    "sliced_gromov_wasserstein",
    "sliced_gromov_wasserstein_reference",
]
