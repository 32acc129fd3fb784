"""The sampler's command-line flags, declared once for ``iqvae sample`` and ``iqvae evaluate``: top-k (``--top-k 0``
and ``--no-top-k`` both turn it off), top-p, min-p, temperature and the guidance scale, checked with messages that
name the flag."""

from __future__ import annotations

import argparse
from typing import Any

def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    """Declare --top-k, --no-top-k, --top-p, --min-p, --temperature and --cfg-scale on ``p``."""
    p.add_argument("--top-k", type=int, default=100,
                   help="top-k sampling (default 100, the paper's); 0 or --no-top-k: sample from the full distribution")
    p.add_argument("--no-top-k", action="store_true", help="no top-k (the same as --top-k 0)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1] (default off)")
    p.add_argument("--min-p", type=float, default=None,
                   help="min-p sampling: keep tokens at least this fraction as likely as the most likely one, in "
                        "[0, 1] (default off)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (> 0, default 1)")
    p.add_argument("--cfg-scale", type=float, default=1.0,
                   help="classifier-free guidance scale s: sample from l_u + s (l_c - l_u) (1: no guidance, the "
                        "default; other values need a transformer trained with model.cfg_dropout > 0)")


def sampler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler's keyword arguments (top_k, top_p, min_p, temperature, guidance_scale) from the flags of
    :func:`add_sampler_flags`, validated; an error names the flag."""
    from .sampling import ArgNames, validate_sampling_args

    top_k = None if args.no_top_k or args.top_k == 0 else args.top_k
    validate_sampling_args(top_k, args.top_p, args.temperature, args.min_p, names=ArgNames(
        top_k="--top-k", top_p="--top-p", temperature="--temperature", min_p="--min-p",
        top_k_off="0 / --no-top-k", top_p_off="omitted", min_p_off="0 or omitted"))
    return {"top_k": top_k, "top_p": args.top_p, "min_p": args.min_p, "temperature": args.temperature,
            "guidance_scale": args.cfg_scale}
