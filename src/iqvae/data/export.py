"""``iqvae data export``: write scenes of the Shapes world as a generic ``pairs`` folder (:mod:`.datasets.pairs`).

A folder to try the "your own data" path on, with a known answer: ``images/NAME.png`` (RGB) and
``conditions/NAME.<ext>`` in the pairs layout, NAME = ``<split>-<index>`` (5 digits) of the world's scene:

============  ===================================================================================================
condition     file
============  ===================================================================================================
seg           ``.png`` of class ids (mode L) and ``classes.txt`` with the world's 7 class names
edge          ``.png``, edges white (255) on black (the world's object outlines)
keypoints     ``.npy`` float32 (30, H, W) heatmaps
layout        ``.npy`` float32 (7, H, W) box planes
text          ``.txt``, the caption on one line
============  ===================================================================================================

Read back by ``pairs`` at the same resolution, every condition is the world's own tensor (tested).  Audio is not
exported: ``pairs`` computes its own log-mel features from a ``.wav``, which are not the world's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

EXPORTABLE = ("seg", "edge", "keypoints", "layout", "text")


def export_pairs(out: str | Path, cond: str, num: int, *, split: str = "train", resolution: int = 32, seed: int = 0,
                 start: int = 0) -> Path:
    """Write scenes ``start .. start + num - 1`` of the Shapes world's ``split`` to ``out`` as a pairs folder."""
    from PIL import Image

    from .shapes import CLASS_NAMES, ShapesWorld, tensor_to_image

    if cond not in EXPORTABLE:
        raise ConfigError(f"--cond: '{cond}' cannot be exported as a pairs folder; choose one of: "
                          f"{', '.join(EXPORTABLE)}")
    if num < 1 or start < 0:
        raise ConfigError(f"-n must be at least 1 and --start at least 0; got {num}, {start}")
    out = Path(out)
    if (out / "images").exists() or (out / "conditions").exists():
        raise DataError(f"--out '{out}' already holds images/ or conditions/; choose an empty folder")
    try:
        (out / "images").mkdir(parents=True)
        (out / "conditions").mkdir()
    except OSError as e:
        raise DataError(f"--out '{out}': cannot create the folder: {e.strerror or e}") from None
    world = ShapesWorld(resolution, seed)
    if cond == "seg":
        (out / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    for i in range(start, start + num):
        s = world.sample(split, i, (cond,))
        name = f"{split}-{i:05d}"
        Image.fromarray(tensor_to_image(s.image)).save(out / "images" / f"{name}.png")
        c = s.cond[cond]
        target = out / "conditions" / name
        if cond == "seg":
            Image.fromarray(c.numpy().astype(np.uint8)).save(target.with_suffix(".png"))
        elif cond == "edge":
            Image.fromarray((c[0].numpy() * 255).astype(np.uint8)).save(target.with_suffix(".png"))
        elif cond in ("keypoints", "layout"):
            np.save(target.with_suffix(".npy"), c.numpy().astype(np.float32), allow_pickle=False)
        else:
            target.with_suffix(".txt").write_text(s.extra["caption"] + "\n", encoding="utf-8")
    return out
