"""``iqvae data``: look at the data.  ``iqvae data preview`` renders a grid PNG of samples and their conditions.

Heavy imports happen inside the command function so that ``iqvae --help`` stays fast.  Other data subcommands
(``iqvae data check``) are added by :mod:`iqvae.data.datasets.commands` when that module exists.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError, DataError
from ..modalities import MODALITIES

MODALITY_NAMES = MODALITIES  # kept for callers of the old name
WORLDS = ("shapes",)


def _parse_cond(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--cond: no modality given; expected a comma list of: {', '.join(MODALITY_NAMES)}")
    for n in names:
        if n not in MODALITY_NAMES:
            raise ConfigError(f"--cond: unknown modality '{n}'; expected a comma list of: {', '.join(MODALITY_NAMES)}")
    return names


def run_preview(args: argparse.Namespace) -> int:
    """Build the requested world split and write the preview grid to ``--out``."""
    mods = _parse_cond(args.cond)
    if args.n < 1:
        raise ConfigError(f"-n/--num must be a positive number of samples, got {args.n}")
    if args.start < 0:
        raise ConfigError(f"--start must be a non-negative index, got {args.start}")
    if args.world not in WORLDS:  # argparse checks choices; kept for direct calls
        raise ConfigError(f"--world must be one of {', '.join(WORLDS)}, got {args.world!r}")

    from .preview import check_output_path, preview_dataset, save_png
    from .shapes import ShapesDataset

    check_output_path(args.out, what="--out")  # before the work, not after

    try:
        ds = ShapesDataset(args.split, args.start + args.n, args.resolution, mods, seed=args.seed,
                           edge_source=args.edge)  # fmt: skip
    except DataError as e:
        raise ConfigError(f"--resolution: {e}") from None
    grid = preview_dataset(ds, range(args.start, args.start + args.n), mods)
    path = save_png(grid, args.out, what="--out")
    print(f"wrote {path} ({grid.width}x{grid.height}, {args.n} {args.world} {args.split} samples from {args.start})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import export_pairs
    from .shapes import check_resolution

    try:
        check_resolution(args.resolution, "--resolution")
    except DataError as e:
        raise ConfigError(str(e)) from None
    out = export_pairs(args.out, args.cond, args.n, split=args.split, resolution=args.resolution, seed=args.seed,
                       start=args.start)
    print(f"wrote {args.n} {args.world} {args.split} scenes with '{args.cond}' conditions to {out} (pairs layout); "
          f"check it with `iqvae data check pairs {out} --cond {args.cond} --resolution {args.resolution}`")
    return 0


def register(subparsers: Any) -> None:
    """Add ``iqvae data`` and its subcommands."""
    data = subparsers.add_parser("data", help="inspect datasets: preview samples and conditions",
                                 description="Inspect datasets.")  # fmt: skip
    data.set_defaults(func=lambda a: data.print_help() or 0)
    data_subparsers = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = data_subparsers.add_parser(
        "preview",
        help="write a PNG grid of samples and their conditions",
        description="Write a PNG grid: one row per sample, the image then one tile per condition "
        "(audio as its log-mel spectrogram, text as the decoded caption).",
    )
    p.add_argument("--world", choices=WORLDS, default="shapes", help="built-in world to preview (default shapes)")
    p.add_argument("--cond", default=",".join(MODALITY_NAMES),
                   help="comma list of condition modalities to show, from: " + ", ".join(MODALITY_NAMES)
                   + " (default all)")  # fmt: skip
    p.add_argument("-n", "--num", dest="n", type=int, default=8, help="number of samples (rows), default 8")
    p.add_argument("--split", choices=("train", "val", "test"), default="train", help="split (default train)")
    p.add_argument("--resolution", type=int, default=32, help="image resolution in pixels, 16..1024 (default 32)")
    p.add_argument("--start", type=int, default=0, help="index of the first sample (default 0)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0, the seed training uses)")
    p.add_argument("--edge", choices=("boundary", "canny"), default="boundary",
                   help="edge condition: exact object outlines (default) or Canny 100/200 on the image")  # fmt: skip
    p.add_argument("--out", required=True, help="output PNG file (its folder must exist)")
    p.set_defaults(func=run_preview)

    from .export import EXPORTABLE

    e = data_subparsers.add_parser(
        "export", help="write Shapes scenes as a generic pairs folder (images/ + conditions/)",
        description="Write scenes of the built-in world as a folder in the generic 'pairs' layout "
        "(images/NAME.png + conditions/NAME.<ext>), to try training on a folder of your own.")
    e.add_argument("--world", choices=WORLDS, default="shapes", help="built-in world (default shapes)")
    e.add_argument("--cond", choices=EXPORTABLE, default="seg", help="condition to write (default seg)")
    e.add_argument("-n", "--num", dest="n", type=int, default=1000, help="number of scenes (default 1000)")
    e.add_argument("--split", choices=("train", "val", "test"), default="train", help="world split (default train)")
    e.add_argument("--start", type=int, default=0, help="index of the first scene (default 0)")
    e.add_argument("--resolution", type=int, default=32, help="image resolution in pixels (default 32)")
    e.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    e.add_argument("--out", required=True, help="output folder (new or empty)")
    e.set_defaults(func=run_export)

    try:
        from .datasets.commands import register as _reg
    except ModuleNotFoundError as e:
        if e.name != "iqvae.data.datasets.commands":
            raise
    else:
        _reg(data_subparsers)
