"""``iqvae data check DATASET PATH``: count the items of every split and find missing pairs and unreadable files.

Every file of every split (after ``--limit``) is fully decoded, so problems surface before any training.  Exit
status: 0 when the dataset is clean (or ``--skip-bad`` is given and every split still has items: training with
``--skip-bad`` would then run, skipping the listed files), 1 when problems were found, 2 on errors (no such
folder, unknown dataset, ...; printed by the ``iqvae`` front door).  ``--out FILE.txt`` (or a run folder, which then
gets ``bad_files.txt``) receives one ``path<TAB>reason`` line per bad file; ``--json`` prints the report as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

MAX_LISTED = 20


def check_dataset(dataset: str, root: str | Path, *, cond: str | None = None, resolution: int = 256,
                  limit: int | None = None) -> dict[str, Any]:
    """The :meth:`~._base.FolderDataset.check` report of ``dataset`` read from ``root`` (all splits)."""
    from ...errors import DataError
    from . import DATASETS

    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}'; `iqvae data check` knows: {', '.join(sorted(DATASETS))}")
    quiet = logging.getLogger("iqvae.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the report lists every bad file; no per-file warnings on top
    try:
        ds = DATASETS[dataset](root, "train", cond=cond, resolution=resolution, limit=limit, skip_bad=True,
                               allow_empty=True)
        return ds.check(decode=True)
    finally:
        quiet.setLevel(level)


def format_report(report: dict[str, Any], max_listed: int = MAX_LISTED) -> str:
    """A readable multi-line summary of a check report."""
    lines = [f"{report['dataset']} at {report['root']} (condition {report['cond']}, {report['resolution']} px)"]
    for split, n in report["counts"].items():
        lines.append(f"  {split:<5} {n:>8} items" + ("   <- empty" if n == 0 else ""))
    for key, title in (("missing_pairs", "missing pairs"), ("unreadable", "unreadable files")):
        entries = report[key]
        lines.append(f"  {title}: {len(entries)}")
        for e in entries[:max_listed]:
            lines.append(f"    {e['reason']}")
        if len(entries) > max_listed:
            lines.append(f"    ... and {len(entries) - max_listed} more (use --out FILE for the full list)")
    bad = len(report["missing_pairs"]) + len(report["unreadable"])
    lines.append("OK" if report["ok"] else f"PROBLEMS: {bad} bad file(s)"
                 + (f", empty split(s): {', '.join(report['empty_splits'])}" if report["empty_splits"] else ""))
    return "\n".join(lines)


def write_bad_list(report: dict[str, Any], out: str | Path) -> Path:
    """Write ``path<TAB>reason`` per bad file to ``out``: a file name with a suffix (``bad.txt``), else a folder (a run
    folder, created if needed) that gets ``bad_files.txt``."""
    path = Path(out)
    if path.is_dir() or not path.suffix:  # a (run) folder, existing or not
        path = path / "bad_files.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = report["missing_pairs"] + report["unreadable"]
    path.write_text("".join(f"{r['path']}\t{r['reason']}\n" for r in rows), encoding="utf-8")
    return path


def run_check(args: argparse.Namespace) -> int:
    report = check_dataset(args.dataset, args.path, cond=args.cond, resolution=args.resolution, limit=args.limit)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.out:
        path = write_bad_list(report, args.out)
        if not args.json:
            print(f"bad-file list: {path} ({len(report['missing_pairs']) + len(report['unreadable'])} entries)")
    if report["ok"]:
        return 0
    if args.skip_bad and not report["empty_splits"]:
        if not args.json:
            print("--skip-bad: training would skip the files listed above")
        return 0
    return 1


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``check`` to the ``iqvae data`` subcommands."""
    from . import DATASETS

    p = data_subparsers.add_parser(
        "check",
        help="report item counts, missing pairs and unreadable files of a dataset on disk",
        description=__doc__.split("\n\n")[0] + "  Datasets: " + ", ".join(sorted(DATASETS)) + ".",
    )
    p.add_argument("dataset", metavar="DATASET", help="one of: " + ", ".join(sorted(DATASETS)))
    p.add_argument("path", metavar="PATH", help="the dataset folder on disk")
    p.add_argument("--resolution", type=int, default=256, help="image resolution in pixels (default 256, the paper)")
    p.add_argument("--limit", type=int, default=None, help="check at most this many items of each split")
    p.add_argument("--cond", default=None, help="condition modality (default: the dataset's first one)")
    p.add_argument("--skip-bad", action="store_true", help="exit 0 despite bad files if every split has items")
    p.add_argument("--out", default=None, help="write the bad-file list (path<TAB>reason) to this file or folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_check)
