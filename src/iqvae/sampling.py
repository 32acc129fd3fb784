"""Auto-regressive sampling of image tokens (paper Sec. 3.3: top-k sampling with k = 100).

Pure functions in the style of LlamaGen's ``generate.py``: :func:`generate` runs a prefill over the condition tokens
and then a decode loop over a preallocated static KV cache (:class:`iqvae.models.gpt.KVCache`);
:func:`generate_reference` recomputes the whole sequence with the training ``forward`` at every step (no cache) and
makes the same sampling calls in the same order, so for the same generator state both return the same tokens.

Conventions
-----------
* Classifier-free guidance comes first: with ``guidance_scale`` s != 1 every step runs the conditional rows and the
  same rows under the model's null condition as one batch of 2B (one prefill, one decode per step, one KV cache) and
  samples from ``l_u + s * (l_c - l_u)`` (float32); s = 1 runs only the conditional rows (exactly unguided sampling).
* Temperature is applied next (``logits / temperature``), then top-k, then top-p on the top-k survivors, then
  min-p.
* top-k keeps every logit ``>=`` the k-th largest (ties at the k-th value are all kept); ``top_k`` larger than the
  vocabulary is clamped to the vocabulary size (i.e. no filtering).
* top-p keeps the smallest set of most-likely tokens whose probability mass reaches ``top_p``: a token is kept iff the
  mass of the tokens ranked strictly before it is ``< top_p`` (the most likely token is always kept); ``top_p=1``
  disables the filter.
* min-p (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling"; ``transformers``' ``min_p``) keeps a token iff its
  probability is at least ``min_p`` times the most likely token's, i.e. iff its (temperature-scaled) logit is at
  least ``max logit + log(min_p)``.  The ratio does not depend on the normalisation, and top-k / top-p never drop
  the most likely token, so it is the same before or after them.  Where the model weighs a few options about
  equally (which of a class's colours an object takes) all of them survive, while the long tail of unlikely tokens
  does not; a lower temperature would instead sharpen the choice between the options too.  ``min_p=None`` (or 0)
  disables the filter.
* A token is drawn by inverse-CDF sampling with one uniform per row from ``generator`` (``torch.rand`` on the
  generator's device), so runs are reproducible and the two sampling paths consume random numbers identically.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch

from .errors import IQVAEError


@dataclass(frozen=True)
class ArgNames:
    """How :func:`validate_sampling_args` names each argument, and the value that turns it off, in its messages
    (the Python API's by default; the command line passes its flags)."""

    top_k: str = "top_k"
    top_p: str = "top_p"
    temperature: str = "temperature"
    min_p: str = "min_p"
    top_k_off: str = "None"
    top_p_off: str = "None"
    min_p_off: str = "0 or None"


def validate_sampling_args(top_k: int | None, top_p: float | None, temperature: float,
                           min_p: float | None = None, names: ArgNames = ArgNames()) -> None:
    """Raise :class:`IQVAEError` naming the argument when top_k < 1, top_p outside (0, 1], temperature <= 0 or
    min_p outside [0, 1]; ``names`` says what the message calls each argument (:class:`ArgNames`)."""
    n = names
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise IQVAEError(f"{n.top_k} must be an integer >= 1 (or {n.top_k_off} to disable), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < float(top_p) <= 1.0):
        raise IQVAEError(f"{n.top_p} must be in (0, 1] (or {n.top_p_off} to disable), got {top_p!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise IQVAEError(f"{n.temperature} must be a number > 0, got {temperature!r}")
    if min_p is not None and (isinstance(min_p, bool) or not isinstance(min_p, (int, float))
                              or not 0.0 <= float(min_p) <= 1.0):
        raise IQVAEError(f"{n.min_p} must be in [0, 1] ({n.min_p_off} to disable), got {min_p!r}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
                  min_p: float | None = None) -> torch.Tensor:
    """``logits`` (..., V) with filtered-out entries set to ``-inf`` (top-k first, then top-p, then min-p); never
    modifies the input (when nothing is filtered the input itself is returned)."""
    out = logits
    V = out.shape[-1]
    if top_k is not None and top_k < V:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    if min_p:  # None or 0: off
        floor = out.amax(dim=-1, keepdim=True) + math.log(min_p)
        out = out.masked_fill(out < floor, float("-inf"))
    return out


def sample_next(
    logits: torch.Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """Draw one token per row of ``logits`` ``(B, V)``; returns ``(B,)`` int64."""
    if logits.dim() != 2:
        raise IQVAEError(f"sample_next expects logits of shape (B, V), got {tuple(logits.shape)}")
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature  # x / 1.0 == x exactly
    probs = torch.softmax(filter_logits(scaled, top_k, top_p, min_p), dim=-1)
    device = generator.device if generator is not None else probs.device
    u = torch.rand((probs.shape[0], 1), generator=generator, device=device).to(probs.device)
    cdf = torch.cumsum(probs, dim=-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.clamp_(max=probs.shape[-1] - 1).squeeze(1)


def check_guidance(model, guidance_scale: float) -> bool:
    """Whether ``guidance_scale`` asks for guidance (s != 1); raises naming ``--cfg-scale`` when it is not a finite
    number or the model has no null condition to guide with."""
    s = guidance_scale
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
        raise IQVAEError(f"--cfg-scale (guidance_scale) must be a finite number, got {s!r}")
    if s == 1:
        return False
    if not model.config.null_cond:
        raise IQVAEError(f"--cfg-scale {s} needs a transformer trained with a null condition (model.cfg_dropout > 0); "
                         "this one has none: use --cfg-scale 1 (no guidance)")
    return True


def guided_logits(logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``(2B, V)`` logits of [conditional rows; the same rows unconditional] -> ``l_u + s * (l_c - l_u)`` ``(B, V)``
    in float32."""
    cond_logits, uncond_logits = logits.float().chunk(2)
    return uncond_logits + guidance_scale * (cond_logits - uncond_logits)


def _guided_batch(cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(2B, n_cond)`` condition tokens [cond; cond] and the ``(2B,)`` null mask [False * B; True * B]."""
    B = cond.shape[0]
    null = torch.arange(2 * B, device=cond.device) >= B
    return torch.cat([cond, cond]), null


def _run(model, cond, step_logits, *, top_k, top_p, temperature, generator, return_logits, guidance_scale,
         min_p):
    """Shared loop: ``step_logits(j, tokens, state)`` gives the logits of image token j (2B rows when guided, the
    guided combination is taken here); sampling is identical."""
    validate_sampling_args(top_k, top_p, temperature, min_p)
    guided = check_guidance(model, guidance_scale)
    model.check_cond(cond)
    cfg = model.config
    B = cond.shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            # guided: rows B.. are the unconditional twins of rows ..B and are fed the same tokens
            tokens = torch.zeros((2 * B if guided else B, cfg.n_image), dtype=torch.long, device=cond.device)
            all_logits = None
            if return_logits:
                all_logits = torch.empty((B, cfg.n_image, cfg.image_vocab), device=cond.device)
            state: dict = {}
            for j in range(cfg.n_image):
                logits = step_logits(j, tokens, state)
                if guided:
                    logits = guided_logits(logits, guidance_scale)
                if return_logits:
                    all_logits[:, j] = logits
                token = sample_next(logits, top_k, top_p, temperature, generator, min_p)
                tokens[:, j] = torch.cat([token, token]) if guided else token
    finally:
        model.train(was_training)
    # clone outside inference mode: callers may use the results in autograd-tracked code
    tokens = tokens[:B].clone()
    return (tokens, all_logits.clone()) if return_logits else tokens


def generate(
    model,
    cond: torch.Tensor,
    *,
    top_k: int | None = 100,
    top_p: float | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    guidance_scale: float = 1.0,
    min_p: float | None = None,
):
    """Sample ``(B, n_image)`` image tokens for ``cond`` ``(B, n_cond)``: prefill + decode over a static KV cache.

    Runs under ``torch.inference_mode``; the model is put in eval mode for the call and its previous mode restored.
    With ``return_logits`` also returns the raw (pre-temperature, unfiltered; guided when ``guidance_scale`` != 1)
    logits ``(B, n_image, V)`` of every step.  Returned tensors are ordinary (non-inference) tensors.
    ``guidance_scale`` s != 1 (classifier-free guidance; needs a model with ``cfg_dropout > 0``) runs the batch and
    its unconditional twin as 2B rows of one cache.  ``min_p``: the min-p filter (module docstring; None: off).
    """
    from .models.gpt import KVCache

    cfg = model.config
    W = model.above_offset  # 0 unless the model takes tokens of the row above as inputs
    offsets = torch.tensor(model.above_offsets(), dtype=torch.long, device=cond.device)
    rows, null = (cond, None) if guidance_scale == 1 else _guided_batch(cond)

    def step_logits(j, tokens, state):
        if j == 0:
            dtype = next(model.parameters()).dtype
            state["cache"] = KVCache(cfg, rows.shape[0], device=cond.device, dtype=dtype)
            return model.prefill(rows, state["cache"], null=null)
        above = tokens[:, j - offsets] if W and j >= W else None  # (rows, above_window), all before j
        return model.decode(tokens[:, j - 1 : j], cfg.n_cond + j - 1, state["cache"], cond=rows, above=above,
                            null=null)

    return _run(model, cond, step_logits, top_k=top_k, top_p=top_p, temperature=temperature, generator=generator,
                return_logits=return_logits, guidance_scale=guidance_scale, min_p=min_p)


def generate_reference(model, cond: torch.Tensor, **sampling: Any):
    """Cache-free reference for :func:`generate`: step j runs ``model(cond, tokens[:, :j+1])`` from scratch.

    Takes :func:`generate`'s keyword arguments, with its defaults.  O(n^2) work per token; for tests and benchmarks
    only.  The placeholder at column j is never fed to the network (the training forward only consumes
    ``image[:, :t-1]``).  Same sampling calls in the same order as :func:`generate`, so the same generator state
    gives the same tokens.
    """
    args = inspect.signature(generate).bind(model, cond, **sampling)  # unknown keywords raise TypeError
    args.apply_defaults()
    settings = {k: v for k, v in args.arguments.items() if k not in ("model", "cond")}
    rows, null = (cond, None) if settings["guidance_scale"] == 1 else _guided_batch(cond)

    def step_logits(j, tokens, state):
        return model(rows, tokens[:, : j + 1], null=null)[:, -1]

    return _run(model, cond, step_logits, **settings)


__all__ = ["ArgNames", "check_guidance", "filter_logits", "generate", "generate_reference", "guided_logits",
           "sample_next", "validate_sampling_args"]
