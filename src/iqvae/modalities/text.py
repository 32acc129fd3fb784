"""text: a caption as token ids, int64 (T,), 0 = padding, ids < spec.channels (the vocabulary size).

Network input: the ids (a transformer encoder embeds them).  D_c loss: cross-entropy over the vocabulary with
padding ignored; prediction: the arg-max token.  No cell head (its latent cells are not pixel patches).  Rendered as
the decoded words (unknown words read ``<unk>``); read from a ``.txt`` file or a typed caption.  Metric: token
accuracy on non-padding tokens.  :class:`TextVocab` and :func:`tokenize` (the word conventions) live here.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .base import Modality, register
from .palette import text_tile

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z]+")


def tokenize(caption: str) -> list[str]:
    """Lower-case and split on anything that is not a letter a-z: ``"A red-circle!"`` -> ``["a", "red", "circle"]``."""
    return _WORD.findall(str(caption).lower())


class TextVocab:
    """Word vocabulary: id 0 = ``<pad>``, id 1 = ``<unk>``, then ``words`` in the given order.

    ``words`` may also start with ``<pad>, <unk>`` (as :attr:`words` does), so ``TextVocab(v.words)`` round-trips.
    Words must be lower-case letters only (what :func:`tokenize` produces) and unique.
    """

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:2] == [PAD, UNK]:
            words = words[2:]
        seen: set[str] = set()
        for w in words:
            if not isinstance(w, str) or not _WORD.fullmatch(w):
                raise DataError(f"vocabulary word {w!r} is not lower-case letters a-z only (see tokenize)")
            if w in seen:
                raise DataError(f"vocabulary word {w!r} appears twice")
            seen.add(w)
        self._words: tuple[str, ...] = (PAD, UNK, *words)
        self._ids = {w: i for i, w in enumerate(self._words)}

    @property
    def words(self) -> tuple[str, ...]:
        """id -> word, including ``<pad>`` (0) and ``<unk>`` (1): what :class:`ConditionSpec.vocab` holds."""
        return self._words

    def __len__(self) -> int:
        return len(self._words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextVocab) and other._words == self._words

    def __repr__(self) -> str:
        return f"TextVocab({len(self)} ids)"

    def encode(self, caption: str, length: int) -> torch.Tensor:
        """int64 ``(length,)``: token ids of :func:`tokenize` (unknown words -> 1), padded with 0 or truncated."""
        if length < 1:
            raise ConfigError(f"caption length must be at least 1, got {length}")
        ids = [self._ids.get(w, 1) for w in tokenize(caption)][:length]
        out = torch.zeros(length, dtype=torch.int64)
        if ids:
            out[: len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Words of ``ids`` joined by spaces; padding (0) is skipped, unknown words read ``<unk>``."""
        out = []
        for i in torch.as_tensor(ids).reshape(-1).tolist():
            if not 0 <= i < len(self._words):
                raise DataError(f"token id {i} is outside the vocabulary [0, {len(self._words) - 1}]")
            if i != 0:
                out.append(self._words[i])
        return " ".join(out)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, max_size: int | None = None) -> "TextVocab":
        """Vocabulary of the words of ``captions`` seen at least ``min_count`` times, most frequent first (ties:
        alphabetical), at most ``max_size`` words (not counting ``<pad>`` / ``<unk>``)."""
        if min_count < 1:
            raise ConfigError(f"min_count must be at least 1, got {min_count}")
        if max_size is not None and max_size < 0:
            raise ConfigError(f"max_size must be non-negative, got {max_size}")
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[:max_size]
        return cls(words)


class Text(Modality):
    name = "text"
    kind = "sequence"
    fit_metrics = ("scene_accuracy", "scene_mode_coverage")
    control = "scene_accuracy"
    control_judge = "scene"
    dtype = torch.int64
    values = "ids"
    meaning = "token ids"
    min_channels = 2
    title = "Caption"
    menu_rank = 2
    file_hint = "a .txt caption or a .safetensors tensor of token ids"
    typed = True

    def item_shape(self, spec, resolution):
        return (spec.length,)

    def build_encoder(self, spec, cfg, nets):
        return self._build(nets.TextEncoder, spec, cfg, spatial_queries=cfg.text_spatial_queries)

    def build_decoder(self, spec, cfg, nets):
        return self._build(nets.TextDecoder, spec, cfg)

    def _build(self, net, spec, cfg, **extra):  # a small transformer over the tokens, read out on the latent grid
        return net(spec.channels, spec.length, cfg.embed_dim, (cfg.grid, cfg.grid), cfg.text_width, cfg.text_layers,
                   cfg.text_heads, **extra)

    def recon_loss(self, spec, out, cond):
        total = F.cross_entropy(out, cond, ignore_index=0, reduction="sum")
        return total / (cond != 0).sum().clamp(min=1)

    def prediction(self, out):
        return out.argmax(dim=1)

    def render(self, x, spec, tile):
        ids = x.detach().cpu().reshape(-1)
        text = TextVocab(spec.vocab).decode(ids) if spec is not None and spec.vocab else " ".join(
            str(i) for i in ids.tolist() if i)  # fmt: skip
        return text_tile(text, tile)

    def caption(self, spec, cond):
        words = spec.vocab or ()
        return " ".join(words[t] for t in cond.tolist() if 0 < t < len(words)) if words else None

    def legend_html(self, spec, resolution, names):
        words = [w for w in (spec.vocab or ())[2:]]
        known = (" Known words: <i>" + html.escape(", ".join(words)) + "</i>.") if words else ""
        return (f"<div><b>Caption</b>: up to {spec.length} words; unknown words are read as &lt;unk&gt;."
                f"{known}</div>")

    def recon_scores(self, spec, preds, conds):
        mask = conds != 0
        return {"cond_token_acc": float(((preds == conds) & mask).sum() / mask.sum().clamp(min=1))}

    def from_image(self, img, spec, resolution, source="image"):
        raise DataError(f"{source}: a text condition cannot be given as an image; use a .safetensors tensor or a "
                        ".txt caption")

    def from_text(self, text, spec):
        if not text.strip():
            raise DataError("the caption is empty")
        vocab = TextVocab([w for w in (spec.vocab or ())[2:]])
        return vocab.encode(text, spec.length)

    def caption_note(self, caption: str, spec) -> str:
        """Why a typed caption may not read as typed: unknown words, words past the length (web demo)."""
        words = tokenize(caption)
        vocab = set((spec.vocab or ())[2:])
        notes = []
        unknown = sorted({w for w in words if vocab and w not in vocab})
        if unknown:
            notes.append("unknown words read as &lt;unk&gt;: " + ", ".join(unknown))
        if spec.length is not None and len(words) > spec.length:
            notes.append(f"the caption was cut to its first {spec.length} words")
        return ("; ".join(notes) + ".") if notes else ""


TEXT = register(Text())
