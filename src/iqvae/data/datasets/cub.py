"""CUB-200-2011 with the Reed et al. captions, in the AttnGAN ``birds`` layout; dataset name ``"cub200"``.

Layout (``root`` = the ``birds`` folder)::

    CUB_200_2011/images/<class>/<image>.jpg
    CUB_200_2011/images.txt             # "<id> <class>/<image>.jpg"
    CUB_200_2011/bounding_boxes.txt     # "<id> <x> <y> <w> <h>"
    text/<class>/<image>.txt            # 10 captions, one per line
    {train,test}/filenames.pickle       # list of "<class>/<image>" (no extension)

The pickles are read by a restricted unpickler that refuses every global (see :func:`._io.safe_unpickle`): a file
that tries to run code is a DataError, nothing is executed.

Image: cropped around the bird's bounding box to a square of side ``1.5 * max(w, h)`` (half-side
``0.75 * max(w, h)``, centred on the box, clipped to the image; AttnGAN's policy), then short side to ``resolution``
and centre crop.

Condition: ``text``.  Caption ``index % n`` of the image's captions is used (deterministic; set
:attr:`CUB200.caption_slot` to pin one slot), tokenised by the shared :class:`~iqvae.modalities.text.TextVocab` and
padded / truncated to :data:`CAPTION_LENGTH` tokens.  The vocabulary is built from the captions of the whole
official training list (before the ``val`` carve-out and ``limit``), so every split and every run on the same files
share it; it is stored in ``condition_spec("text").vocab`` so checkpoints carry it.  ``extra`` holds ``caption``
(the chosen one) and ``captions`` (all).

Splits: ``test`` = ``test/filenames.pickle``; ``val`` = a ~5 % hash carve-out of ``train/filenames.pickle``;
``train`` = the rest.
"""

from __future__ import annotations

from pathlib import Path

from ..config import register_dataset
from ...modalities import ConditionSpec
from ._base import FolderDataset, Item, LoadResult, builder
from ._io import FileError, image_tensor, read_rgb, read_text, require_dir, require_file, resize_crop_image, \
    safe_unpickle

CAPTION_LENGTH = 32
BOX_MARGIN = 0.75  # half-side of the crop, in units of max(w, h) of the box


def bbox_crop(width: int, height: int, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the square crop around ``box = (x, y, w, h)``, clipped to the image."""
    x, y, w, h = box
    half = int(max(w, h) * BOX_MARGIN)
    cx, cy = int(x + w / 2), int(y + h / 2)
    return max(0, cx - half), max(0, cy - half), min(width, cx + half), min(height, cy + half)


class CUB200(FolderDataset):
    name = "cub200"
    supported = ("text",)
    default_cond = "text"
    layout_help = ("CUB_200_2011/{images/,images.txt,bounding_boxes.txt}, text/<class>/<image>.txt and "
                   "{train,test}/filenames.pickle (AttnGAN birds layout)")
    caption_slot: int | None = None

    def _read_table(self, path: Path, columns: int) -> dict[str, list[str]]:
        """Rows "<id> <values...>" of a CUB metadata file; malformed lines are problems naming the line."""
        out: dict[str, list[str]] = {}
        for lineno, line in enumerate(read_text(require_file(path, f"CUB metadata {path.name}")).splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != columns:
                self._problem(f"{path}:{lineno}", f"malformed line {path}:{lineno}: expected {columns} "
                              f"space-separated fields, got {len(fields)}")
                continue
            out[fields[0]] = fields[1:]
        return out

    def _read_list(self, split: str) -> list[str]:
        path = require_file(self.root / split / "filenames.pickle", f"the {split} list (a pickle of file names)")
        names = safe_unpickle(path)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FileError(path, f"{path} holds a {type(names).__name__}: expected a list of '<class>/<image>' names")
        return names

    def _index(self) -> dict[str, list[Item]]:
        cub = require_dir(self.root / "CUB_200_2011", "the CUB_200_2011 folder")
        text_dir = require_dir(self.root / "text", "the caption folder text/<class>/<image>.txt")
        table = self._read_table(cub / "images.txt", 2)
        id_of = {v[0].rsplit(".", 1)[0]: k for k, v in table.items()}
        file_of = {v[0].rsplit(".", 1)[0]: v[0] for v in table.values()}
        boxes = self._read_table(cub / "bounding_boxes.txt", 5)
        pools: dict[str, list[Item]] = {}
        for split in ("train", "test"):
            items = []
            for name in sorted(set(self._read_list(split))):
                image = cub / "images" / file_of.get(name, name + ".jpg")
                caption_file = text_dir / (name + ".txt")
                if name not in id_of or id_of[name] not in boxes:
                    self._problem(image, f"{name} (in {split}/filenames.pickle) has no entry in "
                                  f"{cub / 'images.txt'} / {cub / 'bounding_boxes.txt'}", "missing")
                    continue
                if not image.is_file():
                    self._problem(image, f"missing pair: {split}/filenames.pickle lists {name} but image {image} "
                                  "does not exist", "missing")
                    continue
                if not caption_file.is_file():
                    self._problem(caption_file, f"missing pair: image {image} has no caption file {caption_file}",
                                  "missing")
                    continue
                try:
                    captions = [c.strip() for c in read_text(caption_file).splitlines() if c.strip()]
                except FileError as e:
                    self._problem(e.path, str(e))
                    continue
                if not captions:
                    self._problem(caption_file, f"caption file {caption_file} is empty: expected 10 captions, one "
                                  "per line")
                    continue
                try:
                    box = tuple(float(v) for v in boxes[id_of[name]])
                except ValueError:
                    self._problem(image, f"bounding box of {name} in {cub / 'bounding_boxes.txt'} is not numeric")
                    continue
                items.append(Item(name, {"image": image, "text": caption_file}, {"captions": captions, "box": box}))
            pools[split] = items
        from ...modalities.text import TextVocab

        self.vocab = TextVocab.build(c for it in pools["train"] for c in it.data["captions"])
        return self._official_splits(pools["train"], pools["test"])

    def _prepare(self) -> None:
        self._position = {it.key: i for i, it in enumerate(self.items)}

    def _load(self, item: Item) -> LoadResult:
        im = read_rgb(item.paths["image"])
        im = im.crop(bbox_crop(im.width, im.height, item.data["box"]))
        captions: list[str] = item.data["captions"]
        position = self._position.get(item.key, 0) if self.caption_slot is None else self.caption_slot
        slot = position % len(captions)
        tokens = self.vocab.encode(captions[slot], CAPTION_LENGTH)
        extra = {"caption": captions[slot], "captions": list(captions)}
        return image_tensor(resize_crop_image(im, self.resolution)), {"text": tokens}, extra, \
            {"image": str(item.paths["image"]), "caption_slot": slot}

    def _spec(self, modality: str) -> ConditionSpec:
        return ConditionSpec("text", len(self.vocab), CAPTION_LENGTH, self.vocab.words)


register_dataset("cub200")(builder(CUB200))
