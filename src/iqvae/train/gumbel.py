"""Gumbel sampling (paper Sec. 3.3, Eq. 5, Fig. 3) and the alternatives it is compared against.

Modes (``GumbelConfig.mode``)
-----------------------------
``teacher``  plain teacher forcing: ``CE(model(cond, gold), gold)``.

``gumbel``   the paper's two-pass scheme, applied on steps with ``step % every == 0`` (teacher forcing otherwise):

  1. pass 1 on the gold sequence (under ``no_grad`` unless ``first_pass_grad``): ``logits1[:, j]`` is the predicted
     distribution p of image token j given gold tokens ``< j``;
  2. reliability ``R_j = sum_k p_jk <gamma_k, gamma_gold(j)>`` with gamma the l2-normalised image-codebook rows
     (Eq. 5); positions with ``R_j > threshold`` are candidates;
  3. each candidate is replaced with probability ``replace_rate(step)`` (one Bernoulli per candidate drawn from
     ``generator``); the *input* at index j of a replaced position becomes the embedding of a Gumbel-softmax sample
     of p_j: ``y = softmax((log p_j + g) / tau)`` with ``g = -log(-log U)``, straight-through
     (``one_hot(argmax y) + y - y.detach()``) when ``hard``; embedding = ``y @ wte_image.weight``; gold positions
     keep ``wte_image(gold)`` (mixed with ``torch.where``, no host sync).  Indices line up:
     the sample replacing token j is drawn from the distribution that predicts token j;
  4. pass 2 on the mixed input (``model(cond, gold, image_embeds=mixed)``); loss = ``CE(logits2, gold)``.  Only this
     loss is optimised; with ``first_pass_grad`` its gradient also flows through the samples into pass 1 (Fig. 3b).

  Token fast path (the defaults, ``hard`` and not ``first_pass_grad``): the straight-through embedding
  ``(one_hot + y - y.detach()) @ W`` then equals ``W[argmax y]`` in value (``y - y.detach()`` is exactly 0) and its
  gradient with respect to W is ``one_hot^T g`` (the soft part carries gradient only towards y, which is detached).  So
  pass 2 is fed the token ids ``where(replaced, argmax(log p + g), gold)`` directly: the same draws from
  ``generator``, the same loss and the same gradients (``tests/test_gumbel.py`` checks both paths agree), without the
  ``B x t x V`` softmax and the ``B x t x V x D`` soft embedding.  ``training_loss(..., token_fast_path=False)`` builds
  the embeddings instead (the exactness test and ``iqvae bench train``).  ``tau`` then shapes neither a value nor a
  gradient, so the ``tau_*`` options refuse a non-default value there and ``gs_tau`` is logged only where tau acts
  (``hard=false`` or ``first_pass_grad=true``).

``pkeep``    taming-transformers' random corruption: each input token is kept with probability ``pkeep`` and
             otherwise replaced by a uniformly random image code; the loss is against the gold sequence.

Classifier-free guidance: ``training_loss(..., null=mask)`` passes the ``(B,)`` mask of the rows whose condition is
the model's null condition (drawn per step by :func:`iqvae.train.transformer.null_condition_mask`) to every model
call of the step, so both Gumbel passes see the same dropped rows.

``rq-soft``  RQ-Transformer's soft labelling and stochastic sampling (RQ-VAE paper Sec. 3.2.3), adapted to a setting
             where only the code ids are stored: RQ uses ``Q(k | z) ∝ exp(-||z - e_k||^2 / tau)`` with z the encoder
             feature; we substitute the gold code's embedding for z: ``q_j(k) = softmax_k(-||e_gold(j) - e_k||^2 /
             rq_soft_temperature)`` with the raw (un-normalised) codebook rows.  ``rq_stochastic_codes``: the input
             code map is sampled from q (one draw per position); ``rq_soft_labels``: the target is q (soft
             cross-entropy), otherwise the one-hot target is the code map that is fed (the sampled codes when
             sampling is on, as in RQ where the sampled code map is both input and target; the gold codes when
             it is off).  As ``rq_soft_temperature -> 0`` both reduce to teacher forcing.

Schedules
---------
``replace_rate(step)`` is ``1 - teacher_forcing_prob(step)`` capped at ``max_rate`` and 0 before ``warmup_steps``,
with ``s = step - warmup_steps`` and the teacher-forcing decays of Bengio et al. 2015 / Mihaylova & Martins 2019:

* ``linear``:      tf = max(0, 1 - s / linear_steps)           -> rate goes 0 -> 1 over linear_steps steps
* ``exponential``: tf = exp_k ** s  (0 < exp_k < 1)             -> rate 0 at s=0, -> 1 as s -> inf
* ``sigmoid``:     tf = sigmoid_k / (sigmoid_k + exp(s / sigmoid_k))  (sigmoid_k >= 1)
                   -> rate 1/(sigmoid_k+1) at s=0, -> 1 as s -> inf
* ``constant``:    tf = 0                                        -> rate = max_rate after warm-up

``tau(step)`` anneals the Gumbel-softmax temperature from ``tau_start`` to ``tau_end`` over ``tau_anneal_steps``:
``exponential`` (geometric interpolation), ``linear``, or ``constant`` (always ``tau_start``); only with soft samples
(``hard=false``) or a gradient into pass 1 (``first_pass_grad=true``), see :func:`tau_acts`.
None of the schedule constants are given in the paper (only threshold 0.9 and every 4); the defaults here are ours.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import check_bounds, field_default, opt
from ..errors import ConfigError, IQVAEError


@dataclass
class GumbelConfig:
    """Exposure-bias mitigation during transformer training; every knob of Sec. 3.3 is explicit."""

    mode: Literal["gumbel", "teacher", "pkeep", "rq-soft"] = opt(
        "gumbel", "gumbel: paper's two-pass Gumbel sampling; teacher: plain teacher forcing; pkeep: taming's random "
        "input corruption; rq-soft: RQ-Transformer soft labels + stochastic codes"
    )
    every: int = opt(4, "gumbel: apply Gumbel sampling on steps with step % every == 0 (paper: every 4 iterations)")
    threshold: float = opt(0.9, "gumbel: a position is a candidate when its reliability R (Eq. 5) > threshold (0.9)")
    schedule: Literal["linear", "exponential", "sigmoid", "constant"] = opt(
        "linear", "gumbel: schedule of the replace rate = 1 - teacher-forcing probability (scheduled sampling)"
    )
    linear_steps: int = opt(30000, "linear schedule: steps for the teacher-forcing probability to decay 1 -> 0")
    exp_k: float = opt(0.9999, "exponential schedule: teacher-forcing probability = exp_k ** step, 0 < exp_k < 1")
    sigmoid_k: float = opt(
        2000.0, "sigmoid schedule: teacher-forcing probability = k / (k + exp(step / k)), k >= 1"
    )
    max_rate: float = opt(1.0, "gumbel: cap on the replace rate (fraction of candidates replaced), in [0, 1]")
    warmup_steps: int = opt(0, "gumbel: replace rate is 0 before this step; schedules start counting here")
    tau_start: float = opt(1.0, "Gumbel-softmax temperature at step 0 (acts only with hard=false or "
                                "first_pass_grad=true, like every tau_* option)")
    tau_end: float = opt(0.5, "Gumbel-softmax temperature after tau_anneal_steps")
    tau_anneal_steps: int = opt(30000, "steps over which tau goes from tau_start to tau_end")
    tau_schedule: Literal["exponential", "linear", "constant"] = opt(
        "exponential", "tau annealing: geometric or linear interpolation, or constant tau_start"
    )
    hard: bool = opt(True, "gumbel: straight-through one-hot samples (true) or soft Gumbel-softmax samples (false)")
    first_pass_grad: bool = opt(
        False, "gumbel: let pass-2 gradients flow through the samples into pass 1 (otherwise pass 1 runs no_grad)"
    )
    pkeep: float = opt(0.9, "pkeep: probability of keeping each gold input token (taming-transformers)")
    rq_soft_temperature: float = opt(
        1.0, "rq-soft: temperature of q(k) = softmax(-||e_gold - e_k||^2 / T) over the raw image codebook"
    )
    rq_soft_labels: bool = opt(True, "rq-soft: use q as the (soft) training target")
    rq_stochastic_codes: bool = opt(True, "rq-soft: feed codes sampled from q instead of the gold codes")

    def validate(self) -> None:
        check_bounds(self, ("every", "linear_steps", "tau_anneal_steps"), strict=True, integer=True)
        check_bounds(self, ("warmup_steps",), integer=True)
        check_bounds(self, ("tau_start", "tau_end", "rq_soft_temperature"), strict=True)
        if not 0.0 < self.exp_k < 1.0:
            raise ConfigError(f"option 'exp_k' must be in (0, 1), got {self.exp_k!r}")
        if not self.sigmoid_k >= 1.0:
            raise ConfigError(f"option 'sigmoid_k' must be >= 1, got {self.sigmoid_k!r}")
        if not 0.0 <= self.max_rate <= 1.0:
            raise ConfigError(f"option 'max_rate' must be in [0, 1], got {self.max_rate!r}")
        if not 0.0 <= self.pkeep <= 1.0:
            raise ConfigError(f"option 'pkeep' must be in [0, 1], got {self.pkeep!r}")
        if math.isnan(self.threshold):
            raise ConfigError("option 'threshold' must be a number (R lies in [-1, 1]; > 1 disables replacement)")
        if not tau_acts(self):
            for f in dataclasses.fields(self):
                if f.name.startswith("tau_") and getattr(self, f.name) != field_default(f):
                    raise ConfigError(
                        f"option 'gumbel.{f.name}' has no effect with gumbel.hard=true and "
                        "gumbel.first_pass_grad=false (the defaults): the samples are then exact tokens and tau "
                        "shapes neither their value nor a gradient; set hard=false or first_pass_grad=true to use it"
                    )


def tau_acts(cfg: GumbelConfig) -> bool:
    """Whether the temperature changes anything: soft samples, or a gradient through the samples into pass 1."""
    return not cfg.hard or cfg.first_pass_grad


# ---------------------------------------------------------------------------------------------- schedules
def teacher_forcing_prob(step: int, cfg: GumbelConfig) -> float:
    """Scheduled-sampling teacher-forcing probability at ``step`` (1 before warm-up ends)."""
    if step < cfg.warmup_steps:
        return 1.0
    s = step - cfg.warmup_steps
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - s / cfg.linear_steps)
    if cfg.schedule == "exponential":
        return cfg.exp_k**s
    if cfg.schedule == "sigmoid":
        k = cfg.sigmoid_k
        z = s / k
        return 0.0 if z > 700 else k / (k + math.exp(z))
    return 0.0  # constant


def replace_rate(step: int, cfg: GumbelConfig) -> float:
    """Fraction of reliable candidates replaced by samples: ``min(max_rate, 1 - teacher_forcing_prob)``."""
    if step < cfg.warmup_steps:
        return 0.0
    return min(cfg.max_rate, 1.0 - teacher_forcing_prob(step, cfg))


def tau(step: int, cfg: GumbelConfig) -> float:
    """Gumbel-softmax temperature at ``step`` (monotone from tau_start to tau_end, then constant)."""
    if cfg.tau_schedule == "constant":
        return cfg.tau_start
    f = min(1.0, max(0, step) / cfg.tau_anneal_steps)
    if cfg.tau_schedule == "linear":
        return cfg.tau_start + f * (cfg.tau_end - cfg.tau_start)
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** f


# ---------------------------------------------------------------------------------------------- pieces
def reliability(probs: torch.Tensor, gold: torch.Tensor, codebook: torch.Tensor | None) -> torch.Tensor:
    """Eq. 5: ``R_i = sum_j p_ij <gamma_j, gamma_gold(i)>`` with gamma = l2-normalised codebook rows; ``(B, t)``.

    Computed as ``(probs @ Gamma) . Gamma[gold]`` (never the V x V Gram matrix).  R lies in [-1, 1] (the paper says
    [0, 1], which holds when code vectors have non-negative inner products).  ``codebook=None`` means orthonormal
    codes, i.e. ``R_i = p_i(gold)``.
    """
    if probs.dim() != 3 or tuple(gold.shape) != tuple(probs.shape[:2]):
        raise IQVAEError(
            f"reliability expects probs (B, t, V) and gold (B, t), got {tuple(probs.shape)} and {tuple(gold.shape)}"
        )
    if codebook is None:
        return probs.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
    if codebook.dim() != 2 or codebook.shape[0] != probs.shape[-1]:
        raise IQVAEError(
            f"'codebook' must have shape (V={probs.shape[-1]}, D) matching the logits, got {tuple(codebook.shape)}"
        )
    gamma = F.normalize(codebook.to(probs.dtype), dim=-1)
    return ((probs @ gamma) * gamma[gold]).sum(-1)


def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(device=like.device, dtype=like.dtype)


def _gumbel_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gumbel(0, 1) noise ``-log(-log U)`` shaped like ``like``; U is kept inside (0, 1) so the noise is finite."""
    u = _uniform(like.shape, like, generator)
    tiny = torch.finfo(u.dtype).tiny
    neg_log_u = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)
    return -torch.log(neg_log_u)


def gumbel_softmax_sample(
    logits: torch.Tensor, tau: float, hard: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gumbel-softmax sample of ``softmax(logits)`` along the last dim (paper's Eq. after Eq. 4).

    ``y = softmax((log p + g) / tau)``, ``g = -log(-log U)``, ``U ~ Uniform(0, 1)`` drawn from ``generator``.
    ``hard=True`` returns the straight-through one-hot ``one_hot(argmax y) + y - y.detach()`` (exactly one-hot in
    the forward pass, gradient of the soft sample in the backward pass); argmax of ``log p + g`` is an exact sample
    of p (Gumbel-max), independent of tau.
    """
    if not tau > 0:
        raise IQVAEError(f"gumbel_softmax_sample: tau must be > 0, got {tau!r}")
    g = _gumbel_noise(logits, generator)
    y = torch.softmax((torch.log_softmax(logits, dim=-1) + g) / tau, dim=-1)
    if not hard:
        return y
    one_hot = torch.zeros_like(y).scatter_(-1, y.argmax(-1, keepdim=True), 1.0)
    return one_hot + (y - y.detach())


def _null(null: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The model's ``null=`` keyword only when rows are dropped: without guidance every call is as before."""
    return {} if null is None else {"null": null}


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def _replace_mask(
    probs: torch.Tensor, image: torch.Tensor, step: int, cfg: GumbelConfig, codebook: torch.Tensor | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-3: the candidates ``R > threshold`` and the replaced positions, a ``replace_rate(step)`` coin per
    candidate drawn from ``generator``; returns (candidates, replace), both ``(B, t)`` bool."""
    R = reliability(probs, image, codebook)
    candidates = R > cfg.threshold
    coin = _uniform(candidates.shape, probs, generator) < replace_rate(step, cfg)
    return candidates, candidates & coin


def gumbel_stats(step: int, cfg: GumbelConfig, candidates: torch.Tensor | None = None,
                 replace: torch.Tensor | None = None) -> dict[str, float]:
    """The logged Gumbel statistics of a step: candidate and replaced fractions (0 and ``gs_applied=0`` on a step
    without Gumbel sampling, ``candidates=None``), the replace rate, and tau where it acts (:func:`tau_acts`)."""
    if candidates is None or replace is None:
        stats = {"gs_candidates": 0.0, "gs_replaced": 0.0}
    else:
        n = float(candidates.numel())
        stats = {"gs_candidates": float(candidates.sum()) / n, "gs_replaced": float(replace.sum()) / n}
    if tau_acts(cfg):
        stats["gs_tau"] = tau(step, cfg)
    stats["gs_rate"] = replace_rate(step, cfg)
    stats["gs_applied"] = 1.0 if candidates is not None else 0.0
    return stats


def gumbel_mix(model, cond: torch.Tensor, image: torch.Tensor, step: int, cfg: GumbelConfig,
               codebook: torch.Tensor | None, generator: torch.Generator | None = None,
               null: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Steps 1-3 of the Gumbel mode: returns (mixed image embeddings (B, t, C), replaced mask (B, t), stats)."""
    with torch.set_grad_enabled(cfg.first_pass_grad and torch.is_grad_enabled()):
        logits1 = model(cond, image, **_null(null))
    probs = torch.softmax(logits1.detach().float(), dim=-1)
    candidates, replace = _replace_mask(probs, image, step, cfg, codebook, generator)
    y = gumbel_softmax_sample(logits1, tau(step, cfg), cfg.hard, generator)
    # sync-free mixing (no boolean indexing); the sample embedding costs B*t*V*D MACs, small next to a forward pass
    raw = getattr(model, "module", model)  # DistributedDataParallel wraps the GPT: its methods live on .module
    mixed = torch.where(replace.unsqueeze(-1), raw.embed_image_soft(y), raw.wte_image(image))
    return mixed, replace, gumbel_stats(step, cfg, candidates, replace)


def gumbel_mix_tokens(model, cond: torch.Tensor, image: torch.Tensor, step: int, cfg: GumbelConfig,
                      codebook: torch.Tensor | None, generator: torch.Generator | None = None,
                      null: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The token fast path of :func:`gumbel_mix` (``hard`` and no ``first_pass_grad``): returns (mixed token ids
    (B, t), replaced mask (B, t), stats), drawing the same random numbers in the same order as :func:`gumbel_mix`."""
    if not cfg.hard or cfg.first_pass_grad:
        raise IQVAEError("gumbel_mix_tokens is exact only with gumbel.hard=true and gumbel.first_pass_grad=false")
    with torch.no_grad():
        logits1 = model(cond, image, **_null(null)).float()
        probs = torch.softmax(logits1, dim=-1)
        candidates, replace = _replace_mask(probs, image, step, cfg, codebook, generator)
        # argmax((log p + g) / tau) = argmax(logits + g): log_softmax and tau do not move the argmax
        sample = (logits1 + _gumbel_noise(logits1, generator)).argmax(-1)
        mixed = torch.where(replace, sample, image)
    return mixed, replace, gumbel_stats(step, cfg, candidates, replace)


def rq_soft_targets(image: torch.Tensor, codebook: torch.Tensor, temperature: float) -> torch.Tensor:
    """``q_j(k) = softmax_k(-||e_gold(j) - e_k||^2 / temperature)`` over the raw codebook rows; ``(B, t, V)``."""
    e = codebook.float()
    sq = (e * e).sum(-1)  # (V,)
    g = e[image]  # (B, t, D)
    d2 = (sq[image].unsqueeze(-1) + sq - 2.0 * (g @ e.t())).clamp_min(0.0)
    return torch.softmax(-d2 / temperature, dim=-1)


def training_loss(model, cond: torch.Tensor, image: torch.Tensor, step: int, cfg: GumbelConfig,
                  codebook: torch.Tensor | None, generator: torch.Generator | None = None, *,
                  token_fast_path: bool = True, null: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Transformer training loss for one batch under ``cfg.mode``; returns (scalar loss, stats to log).

    ``codebook`` (V, D) is the image codebook of the tokenizer (needed by ``rq-soft``; for ``gumbel`` it defines
    the reliability, ``None`` meaning orthonormal codes).  Random draws come from ``generator``.
    ``token_fast_path=False`` builds the straight-through embeddings even where feeding token ids is exact (``hard``
    and no ``first_pass_grad``): the same loss and gradients, slower; for the exactness test and ``iqvae bench train``.
    ``null`` ``(B,)`` bool: rows given the null condition (classifier-free guidance) in every model call of the step.
    """
    V = getattr(model, "module", model).config.image_vocab  # DDP-wrapped or not
    if cfg.mode == "teacher":
        return _ce(model(cond, image, **_null(null)), image), {}

    if cfg.mode == "gumbel":  # both passes see the same rows dropped
        if step % cfg.every != 0:
            return _ce(model(cond, image, **_null(null)), image), gumbel_stats(step, cfg)
        if token_fast_path and not tau_acts(cfg):
            tokens, _, stats = gumbel_mix_tokens(model, cond, image, step, cfg, codebook, generator, null)
            return _ce(model(cond, tokens, **_null(null)), image), stats
        mixed, _, stats = gumbel_mix(model, cond, image, step, cfg, codebook, generator, null)
        return _ce(model(cond, image, image_embeds=mixed, **_null(null)), image), stats

    if cfg.mode == "pkeep":
        device = generator.device if generator is not None else image.device
        keep = torch.rand(image.shape, generator=generator, device=device).to(image.device) < cfg.pkeep
        noise = torch.randint(0, V, image.shape, generator=generator, device=device).to(image.device)
        corrupted = torch.where(keep, image, noise)
        # the last column is never an input, so count only the t-1 fed positions
        fed = (~keep[:, :-1]).float().mean().item() if image.shape[1] > 1 else 0.0
        return _ce(model(cond, corrupted, **_null(null)), image), {"pk_replaced": fed}

    if cfg.mode == "rq-soft":
        if codebook is None:
            raise IQVAEError("GumbelConfig.mode 'rq-soft' needs the image codebook (V, D); got codebook=None")
        if codebook.dim() != 2 or codebook.shape[0] != V:
            raise IQVAEError(f"'codebook' must have shape ({V}, D), got {tuple(codebook.shape)}")
        q = rq_soft_targets(image, codebook.to(image.device), cfg.rq_soft_temperature)
        if cfg.rq_stochastic_codes:
            # Gumbel-max draw from q: exact categorical sample, reproducible through ``generator``
            tiny = torch.finfo(q.dtype).tiny
            codes = (torch.log(q.clamp_min(tiny)) + _gumbel_noise(q, generator)).argmax(-1)
        else:
            codes = image
        logits = model(cond, codes, **_null(null))
        if cfg.rq_soft_labels:
            loss = -(q * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
        else:
            loss = _ce(logits, codes)
        return loss, {"rq_changed": float((codes != image).float().mean())}

    raise IQVAEError(f"GumbelConfig.mode must be one of gumbel, teacher, pkeep, rq-soft; got {cfg.mode!r}")
