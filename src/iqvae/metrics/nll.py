"""Negative log-likelihood of the transformer on token codes, in bits per image token."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


@torch.no_grad()
def validation_nll(model: torch.nn.Module, cond: torch.Tensor, image: torch.Tensor, *, batch_size: int,
                   max_batches: int = 0, device: Any = "cpu") -> float:
    """Mean negative log-likelihood of the image tokens in bits per token (``model`` is left in training mode)."""
    model.eval()
    total, count = 0.0, 0
    n = image.shape[0]
    for b, i in enumerate(range(0, n, batch_size)):
        if max_batches and b >= max_batches:
            break
        c, x = cond[i:i + batch_size].to(device), image[i:i + batch_size].to(device)
        logits = model(c, x)
        total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="sum").item()
        count += x.numel()
    model.train()
    return total / max(count, 1) / math.log(2)
