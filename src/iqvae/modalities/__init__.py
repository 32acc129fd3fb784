"""Condition types: one :class:`~.base.Modality` object per file; this module is the registry's list.

A new condition type is one new file (a :class:`Modality` subclass ending in ``register(...)``) and one import line
below.  ``MODALITIES`` / ``SPATIAL`` / ``SEQUENCE`` are the built-in names, in this order.
"""

from __future__ import annotations

from . import seg, edge, keypoints, layout, text, audio  # noqa: F401,E401  (importing registers them)
from .base import (MAX_UPLOAD_PIXELS, ConditionSpec, Modality, Nets, get_modality, modality_names, register,
                   spatial_names, unregister)

MODALITIES: tuple[str, ...] = modality_names()
SPATIAL: tuple[str, ...] = spatial_names()
SEQUENCE: tuple[str, ...] = tuple(n for n in MODALITIES if n not in SPATIAL)

__all__ = ["MAX_UPLOAD_PIXELS", "MODALITIES", "SEQUENCE", "SPATIAL", "ConditionSpec", "Modality", "Nets",
           "get_modality", "modality_names", "register", "spatial_names", "unregister"]
