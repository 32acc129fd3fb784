"""``iqvae train-tokenizer``, ``iqvae encode``, ``iqvae train-transformer`` and ``iqvae train-extractor``."""

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


def run_train_extractor(args: argparse.Namespace) -> int:
    """The Shapes world's feature classifier (``--world``), or a condition predictor on any dataset (``--data`` /
    ``--model``): both are FD feature networks; the predictor also judges controllability."""
    from pathlib import Path

    from ..errors import IQVAEError

    if args.resolution is not None and args.resolution < 16:
        raise IQVAEError(f"--resolution must be at least 16; got {args.resolution}")
    if args.model or args.data:
        if args.world:
            raise IQVAEError("give --world (the Shapes feature classifier) or --data / --model (a condition "
                             "predictor), not both")
        return _train_predictor(args)
    from ..metrics.extractor import DEFAULT_STEPS, ExtractorRecipe, train_shapes_extractor

    world = args.world or "shapes"
    if world != "shapes":
        raise IQVAEError(f"--world must be 'shapes' (the only world with a built-in feature classifier); got "
                         f"{world!r}; for another dataset use --data NAME --data-root PATH --cond MODALITY")
    recipe = ExtractorRecipe(resolution=args.resolution or 32, train_size=args.train_size,
                             steps=args.steps or DEFAULT_STEPS, batch_size=args.batch_size or 64, seed=args.seed)
    path = train_shapes_extractor(recipe, Path(args.out), log=print)
    print(f"saved the feature classifier to {path}; use it with `iqvae evaluate --extractor {path}`")
    return 0


def _data_config_of(model: str):
    """The data config of a pipeline folder, a tokenizer (run) folder or a transformer run folder (whose codes name
    their tokenizer)."""
    from pathlib import Path

    from ..errors import IQVAEError
    from ..models.gpt import GPT
    from ..models.tokenizer import IQVAE

    path = Path(model)
    if not path.is_dir():
        raise IQVAEError(f"--model '{model}' is not a folder (expected a pipeline, tokenizer or transformer run folder)")
    if (path / "transformer").is_dir() and not (path / "tokenizer").is_dir():
        tok = (GPT.from_pretrained(path).codes_meta or {}).get("tokenizer")
        if not tok or not Path(tok).is_dir():
            raise IQVAEError(f"--model '{model}': its transformer's codes name no tokenizer folder that exists ({tok!r})")
        path = Path(tok)
    return IQVAE.from_pretrained(path).data_config


def _train_predictor(args: argparse.Namespace) -> int:
    from ..data.config import DataConfig
    from ..errors import IQVAEError
    from .predictor import PredictorRecipe, train_predictor_into

    if args.model:
        if args.data or args.data_root or args.cond:
            raise IQVAEError("--model takes its dataset from the pipeline; leave out --data, --data-root and --cond")
        data = _data_config_of(args.model)
        if data is None:
            raise IQVAEError(f"--model '{args.model}': its tokenizer records no data config")
        if args.resolution is not None and args.resolution != data.resolution:
            raise IQVAEError(f"--resolution {args.resolution}: the model's data is at {data.resolution} px")
    else:
        data = DataConfig(dataset=args.data, root=args.data_root, cond=args.cond or "seg",
                          resolution=args.resolution or 32, train_size=args.train_size)
        data.validate()
    recipe = PredictorRecipe(steps=args.steps or PredictorRecipe.steps, batch_size=args.batch_size or 32,
                             seed=args.seed)
    path = train_predictor_into(args.out, data, recipe, progress=not args.no_progress, log=print)
    print(f"saved the condition predictor to {path}; use it with `iqvae evaluate --predictor {path}` "
          f"(controllability) or `--extractor {path}` (FD)")
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

    t = sub.add_parser(
        "train-extractor", help="train a feature network for FD/KD and controllability on a dataset's train split",
        description="Either the Shapes world's feature classifier (--world shapes, the default; metric FD-shapes-cnn) "
                    "or, with --data or --model, a condition predictor on any dataset's train split (image -> its "
                    "condition, plus a colour thumbnail; metric FD-<dataset>-<cond>-cnn), which `iqvae evaluate` "
                    "also uses to judge whether samples follow their conditions.")
    t.add_argument("--world", default=None, help="'shapes': the Shapes feature classifier (the default)")
    t.add_argument("--data", default=None, help="dataset name (shapes, pairs, ade20k, ...): a condition predictor")
    t.add_argument("--data-root", default=None, help="dataset folder (real datasets)")
    t.add_argument("--cond", default=None, help="condition modality with --data (default seg)")
    t.add_argument("--model", default=None, help="a pipeline or tokenizer folder: a condition predictor on its dataset")
    t.add_argument("--resolution", type=int, default=None, help="image resolution (default 32; --model: its own)")
    t.add_argument("--train-size", type=int, default=20000, help="Shapes world: train scenes (default 20000)")
    t.add_argument("--steps", type=int, default=None,
                   help="training steps (default 2000 for the classifier, 1000 for a predictor)")
    t.add_argument("--batch-size", type=int, default=None, help="batch size (default 64 classifier, 32 predictor)")
    t.add_argument("--seed", type=int, default=0, help="seed")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train_extractor)
