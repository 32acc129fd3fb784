"""``iqvae train-tokenizer``, ``iqvae encode`` and ``iqvae train-transformer``."""

from __future__ import annotations

import argparse


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=None, help="named preset (see `iqvae presets`); default: small (the CPU quality preset)")
    g.add_argument("--config", default=None, help="YAML config file (a section of this command, or the whole file)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option (repeatable), e.g. --set train.steps=500; every option is listed below")
    p.add_argument("--run-dir", required=True, help="run folder (checkpoints, logs, final model)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _epilog(cls: type, title: str) -> str:
    from ..config import format_options

    return (f"{title} options (set with --set KEY=VALUE; the defaults shown are the built-in ones, which the chosen "
            f"preset overrides):\n" + format_options(cls))


def _build(cls: type, section: str, args: argparse.Namespace, extra: list[str]):
    from ..config import build_config

    preset = args.preset if (args.preset or args.config) else "small"
    return build_config(cls, section, preset=preset, config_file=args.config, overrides=extra + list(args.overrides))


def run_train_tokenizer(args: argparse.Namespace) -> int:
    from .tokenizer import TokenizerRunConfig, train_tokenizer

    extra = []
    if args.data:
        extra.append(f"data.dataset={args.data}")
    if args.data_root:
        extra.append(f"data.root={args.data_root}")
    if args.cond:
        extra.append(f"data.cond={args.cond}")
    cfg = _build(TokenizerRunConfig, "tokenizer", args, extra)
    out = train_tokenizer(cfg, args.run_dir, resume=args.resume, progress=not args.no_progress)
    print(f"tokenizer: {out}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    import torch

    from ..codes import encode_dataset, write_codes
    from ..data.config import build_dataset
    from ..errors import ConfigError
    from ..models.tokenizer import IQVAE
    from ..models.weights import checkpoint_folder

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    tok = IQVAE.from_pretrained(args.tokenizer, device)
    data = tok.data_config
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for s in splits:
        if s not in ("train", "val", "test"):
            raise ConfigError(f"--splits: unknown split '{s}'; expected train, val and/or test")
    out = {}
    for s in splits:
        ds = build_dataset(data, s)
        out[s] = encode_dataset(tok, ds, data.cond, batch_size=args.batch_size, device=device,
                                progress=not args.no_progress, desc=f"encode {s}")
    path = write_codes(args.out, tok, checkpoint_folder(args.tokenizer, "tokenizer"), out, _to_dict(data))
    sizes = ", ".join(f"{s}: {len(v['image'])}" for s, v in out.items())
    print(f"codes: {path} ({sizes})")
    return 0


def _to_dict(obj):
    from ..config import to_dict

    return to_dict(obj)


def run_train_transformer(args: argparse.Namespace) -> int:
    from .transformer import TransformerRunConfig, train_transformer

    extra = [f"codes={args.codes}"] if args.codes else []
    cfg = _build(TransformerRunConfig, "transformer", args, extra)
    out = train_transformer(cfg, args.run_dir, resume=args.resume, progress=not args.no_progress)
    print(f"transformer: {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .tokenizer import TokenizerRunConfig
    from .transformer import TransformerRunConfig

    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("train-tokenizer", help="stage 1: train the IQ-VAE tokenizer", formatter_class=fmt,
                       epilog=_epilog(TokenizerRunConfig, "tokenizer"))
    _config_args(p)
    p.add_argument("--data", default=None, help="dataset name (shortcut for --set data.dataset=NAME)")
    p.add_argument("--data-root", default=None, help="dataset folder (shortcut for --set data.root=PATH)")
    p.add_argument("--cond", default=None, help="condition modality (shortcut for --set data.cond=NAME)")
    p.set_defaults(func=run_train_tokenizer)

    p = sub.add_parser("encode", help="write the token codes of dataset splits (stage 1 -> stage 2)")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (a run folder or its tokenizer/ folder)")
    p.add_argument("--out", required=True, help="output folder for the codes")
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits to encode")
    p.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_encode)

    p = sub.add_parser("train-transformer", help="stage 2: train the conditional transformer on token codes",
                       formatter_class=fmt, epilog=_epilog(TransformerRunConfig, "transformer"))
    _config_args(p)
    p.add_argument("--codes", default=None, help="codes folder written by `iqvae encode` (sets the 'codes' option)")
    p.set_defaults(func=run_train_transformer)
