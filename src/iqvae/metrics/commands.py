"""``iqvae train-extractor``: train the Shapes world's feature classifier that FD / KD use."""

from __future__ import annotations

import argparse

from ..errors import IQVAEError


def run_train_extractor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .extractor import ExtractorRecipe, train_shapes_extractor

    if args.world != "shapes":
        raise IQVAEError(f"--world must be 'shapes' (the only world with a built-in feature classifier); got {args.world!r}")
    if args.resolution < 16:
        raise IQVAEError(f"--resolution must be at least 16; got {args.resolution}")
    recipe = ExtractorRecipe(resolution=args.resolution, train_size=args.train_size, steps=args.steps,
                             batch_size=args.batch_size, seed=args.seed)
    path = train_shapes_extractor(recipe, Path(args.out), log=print)
    print(f"saved the feature classifier to {path}; use it with `iqvae evaluate --extractor {path}`")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train-extractor", help="train the Shapes feature classifier used for FD/KD")
    t.add_argument("--world", default="shapes", help="only 'shapes'")
    t.add_argument("--resolution", type=int, default=32, help="image resolution (default 32)")
    t.add_argument("--train-size", type=int, default=20000, help="train scenes of the world (default 20000)")
    t.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    t.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    t.add_argument("--seed", type=int, default=0, help="seed")
    t.add_argument("--out", required=True, help="output folder")
    t.set_defaults(func=run_train_extractor)
