"""``iqvae sample``: a grid of (condition | samples) rows from a trained pipeline."""

from __future__ import annotations

import argparse


def condition_preview(cond, spec, resolution: int):
    """A PIL picture of one condition tensor (for grids): the modality's one renderer
    (:meth:`~iqvae.modalities.Modality.render`, as in previews and the web demo)."""
    from .modalities import get_modality

    return get_modality(spec.modality).render(cond, spec, resolution)


def caption_of(cond, spec) -> str | None:
    from .modalities import get_modality

    return get_modality(spec.modality).caption(spec, cond)


def run_sample(args: argparse.Namespace) -> int:
    import torch

    from .condition_io import load_condition
    from .data.config import build_dataset
    from .errors import IQVAEError
    from .pipeline import IQVAEPipeline
    from .sampler_flags import sampler_settings
    from .viz import save_image_grid

    if args.n < 1:
        raise IQVAEError(f"-n must be at least 1, got {args.n}")
    sampler = sampler_settings(args)  # before the model loads
    pipe = IQVAEPipeline.from_pretrained(args.model, device=args.device)
    spec = pipe.cond_spec
    conds, labels = [], []
    if args.condition:
        for path in args.condition:
            conds.append(load_condition(path, spec, pipe.resolution))
            labels.append(path.split("/")[-1])
    else:
        data = pipe.tokenizer.data_config
        if args.world != data.dataset:
            raise IQVAEError(f"--world {args.world}: this model was trained on '{data.dataset}'")
        ds = build_dataset(data, args.split)
        for i in args.index:
            if not 0 <= i < len(ds):
                raise IQVAEError(f"--index {i} is outside the {args.split} split (0..{len(ds) - 1})")
            conds.append(ds[i].cond[data.cond])
            labels.append(f"{args.split}[{i}]")
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    for c in conds:
        imgs = pipe(c, num_images=args.n, generator=g, **sampler)[0]
        rows.append([condition_preview(c, spec, pipe.resolution).resize(imgs[0].size)] + imgs)
        cap = caption_of(c, spec)
        if cap:
            print(f"caption: {cap}")
    out = save_image_grid(args.out, rows, labels=labels)
    print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .sampler_flags import add_sampler_flags

    p = sub.add_parser("sample", help="sample images for conditions from a trained pipeline folder")
    p.add_argument("--model", required=True, help="pipeline folder with tokenizer/ and transformer/")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--condition", action="append", help="condition file (PNG / .txt / .wav / .safetensors); repeatable")
    src.add_argument("--world", help="take conditions from the model's dataset (e.g. shapes) by --index")
    p.add_argument("--index", type=int, action="append", default=None, help="item index (with --world); repeatable")
    p.add_argument("--split", default="test", help="split for --world (default test)")
    p.add_argument("-n", type=int, default=8, help="samples per condition")
    add_sampler_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--out", required=True, help="output PNG")

    def run(args: argparse.Namespace) -> int:
        if args.world and not args.index:
            args.index = [0]
        return run_sample(args)

    p.set_defaults(func=run)
