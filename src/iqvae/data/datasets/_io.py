"""Shared helpers of the real-dataset loaders: safe file reading, resize / crop, split carving, safe unpickling.

Every reader raises :class:`~iqvae.errors.DataError` naming the file and what was expected, never a bare
``OSError`` / ``PIL`` exception.

Resize / crop policy (all loaders unless their docstring says otherwise):
    the short side is resized to ``resolution`` and the long side centre-cropped, so the output is
    ``resolution x resolution``.  Photographs use bicubic resampling (PIL's resize filters the source when
    downscaling, so this is also anti-aliased); label maps use NEAREST so class ids are never blended.
    :func:`resize_crop_box` returns the (scale, left, top) of that transform so that point and box annotations can
    be mapped the same way (``x' = x * scale - left``).

Split policy:
    the official test / validation list of a dataset is our ``test`` split; ``val`` is carved out of the official
    training list by a hash of each item's key (:func:`hash_unit`), so adding or removing files never moves other
    items between splits.  Datasets without an official split (``pairs``) carve ``test`` and then ``val`` the same
    way (:func:`split_three_way`).  If the hash puts no item of a pool with at least two items into the carved
    split, the item with the smallest hash is taken, so ``val`` is never empty on tiny datasets.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import wave
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ...errors import DataError

class FileError(DataError):
    """A DataError about one file; ``path`` is that file (what ``bad_files`` lists)."""

    def __init__(self, path: Path | str, message: str):
        super().__init__(message)
        self.path = str(path)


VAL_FRACTION = 0.05  # share of the official training list carved out as ``val``
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# --------------------------------------------------------------------------------------------------------------- files
def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a DataError naming it and saying what it should hold."""
    if not path.is_dir():
        raise DataError(f"missing folder {path}: expected {what}")
    return path


def find_subroot(root: Path, name: str) -> Path:
    """``root/name`` if it exists, else ``root`` (users may point at either)."""
    return root / name if (root / name).is_dir() else root


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileError(path, f"missing file {path}: expected {what}")
    return path


def list_files(folder: Path, exts: Sequence[str]) -> list[Path]:
    """Files directly in ``folder`` whose suffix (case-insensitive) is in ``exts``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file; a DataError naming the file if that fails."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise FileError(path, f"missing file {path}: expected an image") from None
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise FileError(path, f"unreadable image {path}: {type(e).__name__}: {e} (expected a valid JPEG/PNG "
                        "file)") from None


def read_rgb(path: Path) -> Image.Image:
    """An RGB PIL image (grey / palette / RGBA inputs are converted)."""
    return open_image(path).convert("RGB")


def read_label_map(path: Path, *, first_channel: bool = False) -> np.ndarray:
    """A single-channel label PNG as int64 (H, W).

    ``first_channel`` accepts multi-channel files and keeps channel 0 (CelebAMask-HQ part masks are saved that way);
    otherwise a colour PNG is rejected because its values are not class ids.
    """
    im = open_image(path)
    if im.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.int64)
    if first_channel:
        return np.asarray(im.convert("RGB"), dtype=np.int64)[..., 0]
    raise FileError(path, f"label map {path} has mode {im.mode}: expected a single-channel PNG of class ids")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileError(path, f"missing file {path}: expected a UTF-8 text file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FileError(path, f"unreadable text file {path}: {e} (expected UTF-8 text)") from None


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM .wav file (stdlib ``wave``) as mono float32 in [-1, 1] and its sample rate.

    Stereo / multi-channel audio is averaged to mono; other sample widths (8/24/32-bit, float) are refused.
    """
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise FileError(path, f"missing file {path}: expected a 16-bit PCM .wav file") from None
    except (wave.Error, EOFError, OSError) as e:
        raise FileError(path, f"unreadable audio {path}: {e} (expected a 16-bit PCM .wav file)") from None
    if width != 2:
        raise FileError(path, f"audio {path} has {8 * width}-bit samples: expected 16-bit PCM .wav")
    data = np.frombuffer(raw, dtype="<i2")
    if data.size == 0 or data.size % channels:
        raise FileError(path, f"audio {path} holds no complete samples: expected a non-empty 16-bit PCM .wav")
    data = data.reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0
    return data.astype(np.float32), rate


def resample_linear(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample by linear interpolation (enough for 0.5 s chunks turned into a coarse log-mel)."""
    if rate == target or x.size == 0:
        return x.astype(np.float32)
    n_out = max(1, int(round(x.size * target / rate)))
    t_out = np.arange(n_out, dtype=np.float64) * (rate / target)
    return np.interp(t_out, np.arange(x.size, dtype=np.float64), x).astype(np.float32)


def fix_length(x: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad or truncate a 1-D signal to exactly ``n`` samples."""
    return x[:n] if x.size >= n else np.pad(x, (0, n - x.size))


# -------------------------------------------------------------------------------------------------------- resize/crop
def resize_crop_box(w: int, h: int, res: int) -> tuple[float, int, int, int, int]:
    """(scale, new_w, new_h, left, top) of "short side to ``res``, centre crop"."""
    scale = res / min(w, h)
    nw, nh = max(res, round(w * scale)), max(res, round(h * scale))
    return scale, nw, nh, (nw - res) // 2, (nh - res) // 2


def resize_crop(im: Image.Image, res: int, resample: int) -> Image.Image:
    """Resize the short side of ``im`` to ``res`` and centre-crop to ``res x res``."""
    _, nw, nh, left, top = resize_crop_box(im.width, im.height, res)
    if (nw, nh) != im.size:
        im = im.resize((nw, nh), resample)
    return im.crop((left, top, left + res, top + res))


def resize_crop_image(im: Image.Image, res: int) -> Image.Image:
    return resize_crop(im.convert("RGB"), res, Image.BICUBIC)


def resize_crop_labels(labels: np.ndarray, res: int) -> np.ndarray:
    """int64 (H, W) -> int64 (res, res), NEAREST (ids are kept exactly)."""
    if labels.min(initial=0) < 0 or labels.max(initial=0) > np.iinfo(np.int32).max:
        raise DataError(f"label ids out of range [{labels.min()}, {labels.max()}]")
    im = Image.fromarray(labels.astype(np.int32), mode="I")
    return np.asarray(resize_crop(im, res, Image.NEAREST), dtype=np.int64)


def letterbox_box(w: int, h: int, res: int) -> tuple[float, int, int, int, int]:
    """(scale, new_w, new_h, pad_left, pad_top) of "long side to ``res``, pad the short side to a square"."""
    scale = res / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return scale, nw, nh, (res - nw) // 2, (res - nh) // 2


def letterbox(im: Image.Image, res: int, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Resize the long side of an RGB image to ``res`` (bicubic) and pad to ``res x res`` with ``fill``."""
    _, nw, nh, left, top = letterbox_box(im.width, im.height, res)
    out = Image.new("RGB", (res, res), fill)
    out.paste(im.convert("RGB").resize((nw, nh), Image.BICUBIC), (left, top))
    return out


def image_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [-1, 1]."""
    arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()) / 127.5 - 1.0


# ------------------------------------------------------------------------------------------------------------- splits
def hash_unit(key: str, salt: str = "") -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` (first 8 hex digits of the SHA-1 of ``salt + key``)."""
    return int(hashlib.sha1((salt + key).encode("utf-8")).hexdigest()[:8], 16) / 2**32


def carve(keys: Iterable[str], fraction: float, salt: str = "") -> set[str]:
    """The keys carved out of a pool: those with ``hash_unit(key, salt) < fraction``; at least one if the pool has
    two or more keys (the one with the smallest hash)."""
    keys = list(keys)
    out = {k for k in keys if hash_unit(k, salt) < fraction}
    if not out and len(keys) >= 2 and fraction > 0:
        out = {min(keys, key=lambda k: hash_unit(k, salt))}
    return out


def split_three_way(keys: Iterable[str], split: str, fraction: float = VAL_FRACTION) -> list[str]:
    """Keys of a dataset without official splits that belong to ``split``: ``test`` is carved first (salt "test"),
    then ``val`` from the rest (salt "val"), each ~``fraction`` of the keys; sorted."""
    keys = sorted(keys)
    test = carve(keys, fraction, "test")
    rest = [k for k in keys if k not in test]
    val = carve(rest, fraction / (1 - fraction), "val") if rest else set()
    chosen = {"test": test, "val": val}.get(split)
    if chosen is None:
        return [k for k in rest if k not in val]
    return [k for k in keys if k in chosen]


def split_train_pool(keys: Iterable[str], split: str, fraction: float = VAL_FRACTION) -> list[str]:
    """Keys of the official training list that belong to ``split`` ("train" or "val"), sorted."""
    keys = sorted(keys)
    held = carve(keys, fraction)
    if split == "val":
        return [k for k in keys if k in held]
    return [k for k in keys if k not in held]


# ------------------------------------------------------------------------------------------------------------ pickles
class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global: plain containers and strings need none, code execution does."""

    def __init__(self, f: io.BufferedReader, path: Path):
        super().__init__(f, encoding="latin1")  # Python-2 pickles (AttnGAN's CUB files) hold byte strings
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        raise FileError(
            self._path,
            f"refusing to load {self._path}: it references {module}.{name}; expected a pickle of plain lists, "
            "dicts and strings only (nothing is executed)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise FileError(self._path, f"refusing to load {self._path}: it uses persistent ids; expected plain data")


def _check_plain(obj: Any, path: Path, depth: int = 0) -> Any:
    if depth > 20:
        raise FileError(path, f"{path} is nested too deeply: expected a list of file names")
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, bytes):
        return obj.decode("latin1")
    if isinstance(obj, (list, tuple)):
        return [_check_plain(v, path, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {_check_plain(k, path, depth + 1): _check_plain(v, path, depth + 1) for k, v in obj.items()}
    raise FileError(path, f"{path} holds a {type(obj).__name__}: expected only lists, dicts and strings")


def safe_unpickle(path: Path) -> Any:
    """Load a pickle of plain lists / dicts / strings without executing anything (any global is refused)."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except FileNotFoundError:
        raise FileError(path, f"missing file {path}: expected a pickle of file names") from None
    except DataError:
        raise
    except Exception as e:
        raise FileError(path, f"unreadable pickle {path}: {type(e).__name__}: {e}") from None
    return _check_plain(obj, path)
