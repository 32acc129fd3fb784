"""Loaders of the paper's real datasets, read from disk as distributed (nothing is ever downloaded).

Importing this package registers these names for ``DataConfig.dataset`` / ``--data`` (see each module's docstring
for the exact layout, the class ids, the resize policy and the split policy):

=================  ===========================  ====================  ===========================================
name               module                       conditions            splits (train / val / test)
=================  ===========================  ====================  ===========================================
``ade20k``         :mod:`.ade20k`               seg (151), edge       training - carve-out / carve-out / validation
``celebamask-hq``  :mod:`.celebamask`           seg (19), edge        ids < 28000 - carve-out / carve-out / >= 28000
``deepfashion``    :mod:`.deepfashion`          keypoints (18)        train - carve-out / carve-out / test
``coco-stuff``     :mod:`.cocostuff`            seg (183), layout,    train2017 - carve-out / carve-out / val2017
                                                edge
``cub200``         :mod:`.cub`                  text                  train list - carve-out / carve-out / test list
``sub-urmp``       :mod:`.suburmp`              audio                 train - carve-out / carve-out / validation
``pairs``          :mod:`.pairs`                any (``--cond``)      hash: ~90 % / ~5 % / ~5 %
=================  ===========================  ====================  ===========================================

"carve-out" = ~5 % of the official training list chosen by a hash of each file's name (:mod:`._io`), so adding
files never reshuffles the others.  Images: short side resized to the configured resolution (the paper uses 256),
then centre-cropped (DeepFashion: letterboxed instead, see its module).  ``iqvae data check DATASET PATH`` reports
counts, missing pairs and unreadable files (:mod:`.commands`).
"""

from . import ade20k, celebamask, cocostuff, cub, deepfashion, pairs, suburmp  # noqa: F401  (register the loaders)
from ._base import FolderDataset, Item, Problem
from ._io import FileError, safe_unpickle
from .ade20k import ADE20K
from .celebamask import CelebAMaskHQ
from .cocostuff import CocoStuff
from .cub import CUB200
from .deepfashion import DeepFashion
from .pairs import Pairs
from .suburmp import SubURMP

DATASETS: dict[str, type[FolderDataset]] = {
    cls.name: cls for cls in (ADE20K, CelebAMaskHQ, DeepFashion, CocoStuff, CUB200, SubURMP, Pairs)
}

__all__ = ["ADE20K", "CUB200", "CelebAMaskHQ", "CocoStuff", "DATASETS", "DeepFashion", "FileError", "FolderDataset",
           "Item", "Pairs", "Problem", "SubURMP", "safe_unpickle"]
