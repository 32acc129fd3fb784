"""The ``iqvae`` command: parses arguments and calls one function per subcommand.

Each subcommand lives in a ``commands`` module that exposes ``register(subparsers)``; that function adds its parser
and sets ``func`` (called with the parsed namespace).  Heavy imports happen inside those functions, so
``iqvae --help`` is fast.  User errors (:class:`~iqvae.errors.IQVAEError`) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import IQVAEError

# (module, description) in the order ``iqvae --help`` lists them.
COMMAND_MODULES: list[str] = [
    "iqvae.data.commands",
    "iqvae.train.commands",
    "iqvae.sample_commands",
    "iqvae.evaluation.commands",
    "iqvae.bench.commands",
    "iqvae.demo",
    "iqvae.web",
    "iqvae.presets_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iqvae",
        description="IQ-VAE: auto-regressive image synthesis with integrated quantization (ECCV 2022).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not written yet / optional part missing
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        rc = args.func(args)
    except IQVAEError as e:
        print(f"iqvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"iqvae {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
