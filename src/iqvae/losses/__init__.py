"""Training losses of IQ-VAE: the objective of Eq. 3 (:mod:`iqvae.losses.vqgan`).

Its regulariser, the sliced Gromov-Wasserstein distance, is computed inside the tokenizer's forward pass and so
lives with the models (:mod:`iqvae.models.sgw`); it is handed on here under its paper name.
"""

from ..models.sgw import (
    random_projections,
    sliced_gromov_wasserstein,
    sliced_gromov_wasserstein_reference,
)

__all__ = [
    "random_projections",
    "sliced_gromov_wasserstein",
    "sliced_gromov_wasserstein_reference",
]
