"""IQ-VAE: auto-regressive image synthesis with integrated quantization (Zhan et al., ECCV 2022).

Importing the package is cheap; submodules load torch-heavy code on demand.
"""

__version__ = "0.1.0"
