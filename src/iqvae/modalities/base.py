"""The :class:`Modality` protocol, the condition spec and the registry of condition types.

One object per condition type (``seg.py``, ``edge.py``, ... in this folder) holds everything the rest of the code
needs to know about it: the tensor contract and its checks, the network input, the condition encoder/decoder
builders, the reconstruction loss and prediction, the cell-head target, the preview rendering, file reading and
the condition-reconstruction metrics.  Callers ask :func:`get_modality` (or ``spec.modality_obj``) instead of
branching on the name, so a new condition type is one new file plus one import line in ``__init__.py``.

This package sits right above the core (errors): it imports nothing from data, models, train or the apps.  The
network classes are passed in (:class:`Nets`) by :mod:`iqvae.models.tokenizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError, DataError

MAX_UPLOAD_PIXELS = 4096 * 4096
ValueRule = Literal["ids", "unit", "finite"]


class Nets(NamedTuple):
    """The network constructors a modality builds its condition encoder / decoder from."""

    Encoder: Callable[..., Any]
    Decoder: Callable[..., Any]
    TextEncoder: Callable[..., Any]
    TextDecoder: Callable[..., Any]


@dataclass(frozen=True)
class ConditionSpec:
    """What a condition encoder needs to know about one modality of one dataset."""

    modality: str
    channels: int
    length: int | None = None
    vocab: tuple[str, ...] | None = None  # text only: id -> word (id 0 = <pad>, 1 = <unk>)

    @property
    def kind(self) -> Literal["spatial", "sequence"]:
        m = _REGISTRY.get(self.modality)
        return m.kind if m is not None else "sequence"

    @property
    def modality_obj(self) -> "Modality":
        return get_modality(self.modality)

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "channels": self.channels, "length": self.length,
                "vocab": list(self.vocab) if self.vocab is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConditionSpec":
        vocab = d.get("vocab")
        return cls(d["modality"], int(d["channels"]), d.get("length"), tuple(vocab) if vocab is not None else None)

    def check(self, x: torch.Tensor, resolution: int, what: str = "condition") -> None:
        """Raise a DataError if ``x`` (one item, no batch dim) does not match this spec."""
        get_modality(self.modality).check_item(self, x, resolution, what)


def conv_kwargs(cfg: Any, *, cond: bool = False) -> dict[str, Any]:
    """The conv encoder/decoder options of a tokenizer config: the image encoder/decoder's, or with ``cond`` those of
    a conv condition encoder/decoder (the same, except attention follows ``cond_attn`` when it is set)."""
    attn = cfg.cond_attn if cond and cfg.cond_attn is not None else cfg.attn
    return {"ch": cfg.ch, "ch_mult": cfg.ch_mult, "num_res_blocks": cfg.num_res_blocks, "attn": attn,
            "dropout": cfg.dropout}


class Modality:
    """One condition type.  Subclasses set the class attributes and override what differs from these defaults
    (a spatial float map of ``spec.channels`` planes in [0, 1], fed to the conv encoder as is, MSE loss)."""

    name: str = ""
    kind: Literal["spatial", "sequence"] = "spatial"
    dtype: torch.dtype = torch.float32
    values: ValueRule = "unit"  # ids: integer ids < spec.channels; unit: floats in [0, 1]; finite: any finite float
    meaning: str = ""  # appended to the expected item shape in error messages ("class ids", "log-mel")
    min_channels: int = 1
    title: str = ""  # how the web demo names it
    menu_rank: int = 99  # position in the web demo's selector
    file_hint: str = "a .safetensors tensor"  # what an upload may be (web demo)
    drawable: bool = False  # drawn on the web demo's canvas
    typed: bool = False  # typed as a caption (text)
    class_map: bool = False  # a per-pixel class map (its codes are scored for class purity)
    # The Shapes world's exact metrics that judge this condition (``iqvae evaluate`` marks them): a spatial condition
    # fixes each object's pixels (masks); text and audio name class, size and cell only (scene accuracy).
    fit_metrics: tuple[str, ...] = ("palette_accuracy", "mask_miou", "mode_coverage")
    # Controllability (``iqvae evaluate``, :mod:`iqvae.metrics.control`): the score that says whether a generated
    # image follows its condition, and its judge: "canny" (edges of the image itself), "predictor" (a condition
    # predictor trained on the dataset's train split reads the condition back), "scene" (the Shapes world's
    # object-level score; text and audio elsewhere have none), or None.
    control: str | None = None
    control_judge: str | None = None

    # --------------------------------------------------------------------------------------- tensor contract
    def item_shape(self, spec: ConditionSpec, resolution: int) -> tuple[int | None, ...]:
        """Shape of one item (no batch dimension)."""
        return (spec.channels, resolution, resolution)

    def describe(self, spec: ConditionSpec, resolution: int) -> str:
        dt = str(self.dtype).replace("torch.", "")
        return f"{dt} {tuple(self.item_shape(spec, resolution))}" + (f" {self.meaning}" if self.meaning else "")

    def check_item(self, spec: ConditionSpec, x: torch.Tensor, resolution: int, what: str = "condition") -> None:
        """Raise a DataError if ``x`` (one item) does not match the contract: dtype, shape, id range."""
        if not (x.dtype == self.dtype and x.shape == self.item_shape(spec, resolution)):
            raise DataError(f"{what} for modality '{self.name}' must be {self.describe(spec, resolution)}; got "
                            f"{x.dtype} {tuple(x.shape)}")
        if self.values == "ids":
            self._check_ids(spec, x, what, "")

    def check_batch(self, spec: ConditionSpec, cond: Any, resolution: int, batch: int | None = None) -> None:
        """Raise a DataError naming the modality, the expected batched shape and range."""
        m, item = self.name, self.item_shape(spec, resolution)
        b = "B" if batch is None else str(batch)
        expect = f"{str(self.dtype).replace('torch.', '')} ({b}, {', '.join(map(str, item))})"
        if not isinstance(cond, torch.Tensor):
            raise DataError(f"condition for modality '{m}' must be a tensor {expect}; got {type(cond).__name__}")
        if (cond.dtype != self.dtype or cond.dim() != len(item) + 1 or tuple(cond.shape[1:]) != item
                or (batch is not None and cond.shape[0] != batch)):
            raise DataError(f"condition for modality '{m}' must be {expect}; got {cond.dtype} {tuple(cond.shape)}")
        if cond.numel() == 0:
            return
        if self.values == "ids":
            self._check_ids(spec, cond, "condition", "ids in ")
        elif not bool(torch.isfinite(cond).all()):
            raise DataError(f"condition for modality '{m}' contains NaN or infinite values")
        elif self.values == "unit":
            lo, hi = float(cond.min()), float(cond.max())
            if lo < 0 or hi > 1:
                raise DataError(f"condition for modality '{m}' has values in [{lo:g}, {hi:g}]; expected [0, 1]")

    def _check_ids(self, spec: ConditionSpec, x: torch.Tensor, what: str, ids: str) -> None:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= spec.channels:
            raise DataError(f"{what} for modality '{self.name}' has ids in [{lo}, {hi}]; expected {ids}"
                            f"[0, {spec.channels - 1}]")

    def check_spec(self, spec: ConditionSpec) -> None:
        """Raise a ConfigError if the spec cannot build a model (too few channels, no length)."""
        if spec.channels < self.min_channels:
            raise ConfigError(f"condition '{spec.modality}' needs more channels/classes, got {spec.channels}")
        if self.kind == "sequence" and (spec.length is None or spec.length < 1):
            raise ConfigError(f"condition '{spec.modality}' needs a positive length, got {spec.length}")

    # ----------------------------------------------------------------------------------------- network side
    def in_channels(self, spec: ConditionSpec) -> int:
        """Channels of :meth:`network_input` (what a conv encoder / the cell head sees)."""
        return spec.channels

    def network_input(self, spec: ConditionSpec, cond: torch.Tensor) -> torch.Tensor:
        """The batched condition as a float network input."""
        return cond

    def build_encoder(self, spec: ConditionSpec, cfg: Any, nets: Nets) -> Any:
        """E_c, built from ``nets`` and the tokenizer config ``cfg``: the image's conv encoder on
        :meth:`in_channels` (with ``cfg.cond_context_levels`` levels of wider context on the latent grid)."""
        return self._build(nets.Encoder, spec, cfg, context_levels=cfg.cond_context_levels)

    def build_decoder(self, spec: ConditionSpec, cfg: Any, nets: Nets) -> Any:
        """D_c: the mirror of :meth:`build_encoder`."""
        return self._build(nets.Decoder, spec, cfg)

    def _build(self, net: Callable[..., Any], spec: ConditionSpec, cfg: Any, **extra: Any) -> Any:
        """``net`` on :meth:`in_channels` with the conv condition options; ``extra``: encoder-only options."""
        return net(self.in_channels(spec), cfg.embed_dim, **conv_kwargs(cfg, cond=True), **extra)

    def encode(self, encoder: Any, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Run the condition encoder on :meth:`network_input` output; ``grid`` is the latent (h, w)."""
        return encoder(x)

    def decode(self, decoder: Any, zq: torch.Tensor, spec: ConditionSpec) -> torch.Tensor:
        """Run the condition decoder; raw output (logits / values), class or vocab axis at dim 1."""
        return decoder(zq)

    def recon_loss(self, spec: ConditionSpec, out: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, cond)

    def predictor_loss(self, spec: ConditionSpec, out: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Loss of a condition predictor's dense output (image -> condition) against the condition: D_c's."""
        return self.recon_loss(spec, out, cond)

    def prediction(self, out: torch.Tensor) -> torch.Tensor:
        """Raw decoder output -> the condition's own tensor convention."""
        return out

    def cell_target(self, spec: ConditionSpec, cond: torch.Tensor, size: Any) -> torch.Tensor:
        """Each latent cell's pooled condition: the network input averaged over the cell's pixel patch."""
        return F.adaptive_avg_pool2d(self.network_input(spec, cond), size)

    def cell_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of the condition cell head's output against :meth:`cell_target`."""
        return F.mse_loss(pred, target)

    # ------------------------------------------------------------------------------------ rendering, metrics
    def render(self, x: torch.Tensor, spec: ConditionSpec | None, tile: int) -> Image.Image:
        """One condition tensor (no batch dimension) as an RGB ``tile`` x ``tile`` picture."""
        raise DataError(f"cannot preview modality '{self.name}'")

    def caption(self, spec: ConditionSpec, cond: torch.Tensor) -> str | None:
        """The words of a text condition; None for other modalities."""
        return None

    def legend_html(self, spec: ConditionSpec, resolution: int, names: Callable[[], list[str]]) -> str:
        """What the web demo shows beside the input (``names()``: class names, fetched only when needed)."""
        import html

        return (f"<div><b>{html.escape(self.title or self.name)}</b>: upload {html.escape(self.file_hint)}, or load "
                "the example condition.</div>")

    def canvas_brush(self, spec: ConditionSpec) -> tuple[list[str], str, int]:
        """(colours, default colour, size in model pixels) of the web demo's brush: white edges on black."""
        return ["#ffffff", "#000000"], "#ffffff", 1

    def recon_scores(self, spec: ConditionSpec, preds: torch.Tensor, conds: torch.Tensor) -> dict[str, float]:
        """Condition-reconstruction metrics of predictions (:meth:`prediction`) against the conditions."""
        return {"cond_mse": float(((preds - conds) ** 2).mean())}

    # ------------------------------------------------------------------------------------------- file reading
    def from_image(self, img: Image.Image, spec: ConditionSpec, resolution: int, source: str = "image"
                   ) -> torch.Tensor:
        raise DataError(f"{source}: a {self.name} condition cannot be given as an image; use a .safetensors tensor")

    def from_text(self, text: str, spec: ConditionSpec) -> torch.Tensor:
        raise DataError(f"this model is conditioned on '{self.name}', not on text")

    def from_wav(self, path: Path, spec: ConditionSpec, features: Callable[[Path], Any] | None) -> torch.Tensor:
        raise DataError(f"'{path}': this model is conditioned on '{self.name}', not on audio")

    def read_file(self, path: str | Path, spec: ConditionSpec, resolution: int,
                  wav_features: Callable[[Path], Any] | None = None) -> torch.Tensor:
        """A condition from a file: ``.safetensors`` (any modality), ``.txt`` (text), ``.wav`` (audio, through
        ``wav_features``: path -> log-mel of the model's dataset) or an image (:meth:`from_image`)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"condition file '{path}' does not exist")
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            return read_safetensors(path, spec, resolution)
        if suffix == ".txt":
            return self.from_text(path.read_text(), spec)
        if suffix == ".wav":
            return self.from_wav(path, spec, wav_features)
        try:
            img = Image.open(path)
            img.load()
        except Exception as e:
            raise DataError(f"cannot read condition image '{path}': {e}") from None
        return self.from_image(img, spec, resolution, f"'{path}'")


def read_safetensors(path: Path, spec: ConditionSpec, resolution: int) -> torch.Tensor:
    from safetensors.torch import load_file

    t = load_file(str(path))
    if "cond" in t:
        x = t["cond"]
    elif len(t) == 1:
        x = next(iter(t.values()))
    else:
        raise DataError(f"'{path}' holds several tensors ({', '.join(t)}); name the condition 'cond'")
    spec.check(x, resolution, f"condition in '{path}'")
    return x


def check_image_size(img: Image.Image, source: str) -> None:
    if img.width * img.height > MAX_UPLOAD_PIXELS:
        raise DataError(f"{source}: {img.width}x{img.height} pixels is larger than the limit of {MAX_UPLOAD_PIXELS}")


def resize_nearest(img: Image.Image, resolution: int) -> Image.Image:
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.NEAREST)
    return img


# ------------------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, Modality] = {}


def register(modality: Modality) -> Modality:
    """Add a condition type (a new one, or replace one of the same name); returns it."""
    if not modality.name:
        raise ConfigError(f"{type(modality).__name__} has no name")
    _REGISTRY[modality.name] = modality
    return modality


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def modality_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def spatial_names() -> tuple[str, ...]:
    return tuple(n for n, m in _REGISTRY.items() if m.kind == "spatial")


def get_modality(name: str) -> Modality:
    """The registered condition type ``name``; a DataError naming the valid ones otherwise."""
    m = _REGISTRY.get(name)
    if m is None:
        raise DataError(f"unknown condition modality '{name}'; expected one of: {', '.join(_REGISTRY)}")
    return m
