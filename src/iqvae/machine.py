"""The machine a run or a measurement happened on, recorded beside its numbers (report.json, metrics.json)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the platform has one (``taskset -c 0 iqvae ...``
    gets 1), else ``os.cpu_count()``; at least 1.  The benches split their torch threads by it."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def machine_info() -> dict[str, Any]:
    """Python, torch, platform, CPU count, CUDA device name and the source tree's commit (None outside git)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info
