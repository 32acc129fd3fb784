"""``iqvae serve``: the web demo, a Gradio Blocks app around one :class:`~iqvae.pipeline.IQVAEPipeline` per
condition type.

The page: a condition-type selector; a drawing canvas for spatial conditions (segmentation painted in the
:func:`~iqvae.modalities.palette.label_palette` colours, with a legend; edge maps in white on black), a file upload (label-id
or palette PNG, edge image, ``.safetensors`` tensor, ``.txt`` caption, ``.wav``) and a caption box for text models; an
"example condition" button that loads the next test-split condition of the model's dataset; sliders for the number of
samples, top-k, top-p, min-p, temperature and seed (and the classifier-free guidance scale, shown only for a model
with a null condition); a Generate button, a gallery and a status line.  User errors (an empty
caption, an image of the wrong mode, an upload over the size limit, ...) are shown in the status line; the app does not
crash on them.

Gradio is an optional extra (``pip install 'iqvae[web]'``) and is imported only inside the functions that need it, so
``import iqvae.web`` (done by ``iqvae --help``) stays cheap.  The app never contacts the internet: analytics are off,
the default theme's fonts are bundled with gradio and server-side rendering (node) is disabled.

The callbacks are plain functions (:func:`generate_callback`, :func:`example_callback`) so they can be tested
without a browser.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, DataError, IQVAEError

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr
    from PIL import Image

    from .pipeline import IQVAEPipeline

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 10.0
MAX_SAMPLES = 16
CANVAS = 256  # drawing canvas side in pixels; conditions are resized (nearest) to the model's resolution
DISPLAY_MIN = 192  # gallery images are enlarged (nearest, integer factor) to at least this side
# What differs per condition type (title, menu position, upload hint, canvas or caption box, legend, brush) is the
# modality's (:mod:`iqvae.modalities`): ``_modality(pipe)``.
_NON_IMAGE_SUFFIXES = (".safetensors", ".txt", ".wav")


# ------------------------------------------------------------------------------------------------------ loading
def find_pipeline_dirs(model_dir: str | Path) -> dict[str, Path]:
    """Condition-type name -> pipeline folder.

    ``model_dir`` is either one pipeline folder (holding ``tokenizer/`` and ``transformer/``; its name is its
    modality, filled in by :func:`load_pipelines`, so the key here is ``""``) or a folder of such folders (e.g.
    ``runs/demo`` with ``seg/``, ``edge/``, ``text/``; the keys are the sub-folder names).
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise CheckpointError(f"--model '{root}' is not a folder")

    def is_pipe(p: Path) -> bool:
        return (p / "tokenizer").is_dir() and (p / "transformer").is_dir()

    if is_pipe(root):
        return {"": root}
    found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and is_pipe(p)}
    if not found:
        raise CheckpointError(f"--model '{root}' holds no pipeline: expected tokenizer/ and transformer/ in it or in "
                              "its sub-folders (e.g. runs/demo/seg, runs/demo/edge, runs/demo/text)")
    return found


def load_pipelines(model_dir: str | Path, device: str = "cpu") -> dict[str, "IQVAEPipeline"]:
    from .pipeline import IQVAEPipeline

    out: dict[str, IQVAEPipeline] = {}
    for key, path in find_pipeline_dirs(model_dir).items():
        pipe = IQVAEPipeline.from_pretrained(path, device=device)
        out[key or pipe.cond_spec.modality] = pipe
    return out


def _modality(pipe: Any) -> Any:
    from .modalities import get_modality

    return get_modality(pipe.cond_spec.modality)


def _ordered_keys(pipelines: dict[str, Any]) -> list[str]:
    return sorted(pipelines, key=lambda k: (_modality(pipelines[k]).menu_rank, k))


def _type_label(key: str, pipe: Any) -> str:
    m = pipe.cond_spec.modality
    title = _modality(pipe).title or m
    return f"{title} ({key})" if key != m else f"{title} ({m})"


# ----------------------------------------------------------------------------------------------- small helpers
def _hex(rgb: Any) -> str:
    from .modalities.palette import hex_colour

    return hex_colour(rgb)


def enlarge(img: "Image.Image", min_side: int = DISPLAY_MIN) -> "Image.Image":
    """Enlarge a small image by an integer factor (nearest neighbour) so it stays crisp in the gallery."""
    from PIL import Image

    f = max(1, math.ceil(min_side / max(1, min(img.size))))
    return img if f == 1 else img.resize((img.width * f, img.height * f), Image.NEAREST)


def _pipe(pipelines: dict[str, Any], cond_type: str | None) -> Any:
    if not cond_type or cond_type not in pipelines:
        raise IQVAEError(f"unknown condition type {cond_type!r}; this server has: {', '.join(pipelines)}")
    return pipelines[cond_type]


_DATASETS: dict[int, Any] = {}


def _test_dataset(pipe: Any) -> Any:
    """The test split of the dataset the pipeline's tokenizer was trained on (cached per pipeline)."""
    key = id(pipe)
    if key not in _DATASETS:
        cfg = pipe.tokenizer.data_config
        if cfg is None:
            raise IQVAEError("this model was saved without a dataset config, so there is no example condition; "
                             "draw or upload one instead")
        from .data.config import build_dataset

        try:
            ds = build_dataset(cfg, "test")
        except IQVAEError as e:
            raise IQVAEError(f"cannot load the example conditions of dataset '{cfg.dataset}': {e}") from None
        if len(ds) == 0:
            raise IQVAEError(f"the test split of dataset '{cfg.dataset}' is empty")
        _DATASETS[key] = ds
    return _DATASETS[key]


def class_names(pipe: Any) -> list[str]:
    """Names of the segmentation classes, from the model's dataset when it knows them, else ``class i``."""
    n = pipe.cond_spec.channels
    names: Any = None
    cfg = pipe.tokenizer.data_config
    if cfg is not None and getattr(cfg, "dataset", None) == "shapes":
        from .data.shapes import CLASS_NAMES

        names = CLASS_NAMES
    elif cfg is not None:
        try:
            ds = _test_dataset(pipe)
            names = getattr(ds, "class_names", None)
        except Exception:  # a legend without names is fine
            names = None
    names = list(names or [])
    return [names[i] if i < len(names) else ("background" if i == 0 else f"class {i}") for i in range(n)]


def legend_html(pipe: Any) -> str:
    """Palette legend (seg), drawing hint (edge), vocabulary (text) or upload hint for the selected model."""
    return _modality(pipe).legend_html(pipe.cond_spec, pipe.resolution, lambda: class_names(pipe))


def blank_canvas(pipe: Any) -> "Image.Image":
    from PIL import Image

    return Image.new("RGB", (CANVAS, CANVAS), (0, 0, 0))


def _flatten_on_black(img: "Image.Image") -> "Image.Image":
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img).convert("RGB")
    return img


def _drawing_image(drawing: Any) -> "Image.Image | None":
    """The composite image of an ImageEditor value (dict with background / layers / composite), or None."""
    from PIL import Image

    if drawing is None:
        return None
    if isinstance(drawing, dict):
        img = drawing.get("composite")
        if img is None:
            img = drawing.get("background")
            layers = [x for x in (drawing.get("layers") or []) if x is not None]
            if img is None and layers:
                img = layers[0]
            if img is not None and layers:
                base = _to_pil(img).convert("RGBA")
                for layer in layers:
                    base = Image.alpha_composite(base, _to_pil(layer).convert("RGBA").resize(base.size))
                img = base
    else:
        img = drawing
    if img is None:
        return None
    return _flatten_on_black(_to_pil(img))  # transparent (undrawn) pixels are background / no edge


def _to_pil(x: Any) -> "Image.Image":
    import numpy as np
    from PIL import Image

    if isinstance(x, Image.Image):
        return x
    if isinstance(x, (str, Path)):
        return Image.open(x)
    if isinstance(x, np.ndarray):
        return Image.fromarray(x)
    raise DataError(f"cannot read the drawing (got {type(x).__name__})")


def condition_from_upload(path: str | Path, pipe: Any, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> Any:
    """Read an uploaded condition file, enforcing the size limits before decoding anything.

    Too large (bytes over ``max_upload_mb`` or pixels over :data:`~iqvae.modalities.MAX_UPLOAD_PIXELS`), an
    unreadable file or an image of the wrong mode raise :class:`~iqvae.errors.DataError` with a message.
    """
    from PIL import Image

    from .condition_io import condition_from_image, load_condition
    from .modalities import MAX_UPLOAD_PIXELS

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DataError(f"the upload '{name}' is missing; upload it again")
    size = path.stat().st_size
    if size > max_upload_mb * 1024 * 1024:
        raise DataError(f"upload '{name}' is too large: {size / 2**20:.1f} MB, the limit is {max_upload_mb:g} MB")
    if path.suffix.lower() in _NON_IMAGE_SUFFIXES:
        return load_condition(path, pipe.cond_spec, pipe.resolution, pipe.tokenizer.data_config)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)  # lazy: only the header is read
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"upload '{name}' is too large: more than {MAX_UPLOAD_PIXELS} pixels") from None
    except Exception:
        raise DataError(f"cannot read the upload '{name}' as an image; expected "
                        f"{_modality(pipe).file_hint}") from None
    if img.width * img.height > MAX_UPLOAD_PIXELS:
        raise DataError(f"upload '{name}' is too large: {img.width}x{img.height} pixels, the limit is "
                        f"{MAX_UPLOAD_PIXELS} pixels")
    try:
        img.load()
    except Exception as e:
        raise DataError(f"cannot decode the image '{name}': {e}") from None
    return condition_from_image(img, pipe.cond_spec, pipe.resolution, f"upload '{name}'")


def condition_preview(cond: Any, pipe: Any) -> "Image.Image | None":
    """What the model reads from the input (the drawable conditions only), enlarged for display."""
    modality = _modality(pipe)
    if not modality.drawable:
        return None
    return enlarge(modality.render(cond, pipe.cond_spec, pipe.resolution))


def _caption_note(caption: str, pipe: Any) -> str:
    return _modality(pipe).caption_note(caption, pipe.cond_spec)


def _int(x: Any, name: str) -> int:
    try:
        f = float(x)
    except (TypeError, ValueError):
        raise IQVAEError(f"{name} must be a number, got {x!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise IQVAEError(f"{name} must be a whole number, got {x!r}")
    return int(f)


def error_markdown(e: BaseException) -> str:
    return f"**Error:** {e}"


# --------------------------------------------------------------------------------------------------- callbacks
def read_condition(pipe: Any, drawing: Any = None, upload: Any = None, caption: str | None = None,
                   max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> tuple[Any, str]:
    """(condition tensor, where it came from).  An uploaded file wins over the drawing / caption."""
    modality = _modality(pipe)
    if upload:
        path = upload if isinstance(upload, (str, Path)) else getattr(upload, "name", None) or upload.get("path")
        return condition_from_upload(path, pipe, max_upload_mb), f"the uploaded file '{Path(path).name}'"
    if modality.typed:
        return modality.from_text(caption or "", pipe.cond_spec), "the caption"
    if modality.drawable:
        img = _drawing_image(drawing)
        if img is None:
            raise DataError("there is no condition: draw one, load the example condition or upload a file")
        return modality.from_image(img, pipe.cond_spec, pipe.resolution, "the drawing"), "the drawing"
    raise DataError(f"a {modality.name} condition cannot be drawn: upload {modality.file_hint} "
                    "or load the example condition")


def generate_callback(pipelines: dict[str, Any], cond_type: str, drawing: Any = None, upload: Any = None,
                      caption: str | None = None, num_samples: Any = 4, top_k: Any = 100, top_p: Any = 1.0,
                      temperature: Any = 1.0, seed: Any = 0, cfg_scale: Any = 1.0, min_p: Any = 0.0, *,
                      max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                      ) -> tuple[list["Image.Image"], "Image.Image | None", str]:
    """(gallery images, preview of the condition as the model reads it, status Markdown).

    Never raises for user errors: an :class:`IQVAEError` (bad upload, empty caption, bad slider value) gives an
    empty gallery and the message in the status.
    """
    import torch

    try:
        pipe = _pipe(pipelines, cond_type)
        n = _int(num_samples, "the number of samples")
        if not 1 <= n <= MAX_SAMPLES:
            raise IQVAEError(f"the number of samples must be between 1 and {MAX_SAMPLES}, got {n}")
        k = _int(top_k, "top-k")
        if k < 0:
            raise IQVAEError(f"top-k must be >= 0 (0 turns it off), got {k}")
        p = float(top_p) if top_p is not None else 1.0
        s = _int(seed, "the seed")
        if s < 0:
            raise IQVAEError(f"the seed must be >= 0, got {s}")
        temp = float(temperature)
        guide = float(cfg_scale) if cfg_scale is not None else 1.0
        mp = float(min_p) if min_p is not None else 0.0
        cond, source = read_condition(pipe, drawing, upload, caption, max_upload_mb)
        gen = torch.Generator(device=pipe.device).manual_seed(s)
        t0 = time.perf_counter()
        images = pipe(cond, num_images=n, top_k=k or None, top_p=None if p >= 1.0 else p, temperature=temp,
                      generator=gen, guidance_scale=guide, min_p=mp or None)[0]
        dt = time.perf_counter() - t0
    except IQVAEError as e:
        return [], None, error_markdown(e)
    note = _caption_note(caption or "", pipe) if _modality(pipe).typed and not upload else ""
    status = (f"Generated {len(images)} image{'s' if len(images) != 1 else ''} from {source} with the "
              f"**{cond_type}** model ({pipe.resolution}×{pipe.resolution} px, shown enlarged): top-k {k or 'off'}, "
              f"top-p {p:g}, " + (f"min-p {mp:g}, " if mp else "") + f"temperature {temp:g}, "
              + (f"guidance scale {guide:g}, " if guide != 1 else "")
              + f"seed {s}; {dt:.1f} s.")
    if note:
        status += " Note: " + note
    return [enlarge(im) for im in images], condition_preview(cond, pipe), status


def example_callback(pipelines: dict[str, Any], cond_type: str, counter: Any = 0
                     ) -> tuple[Any, str | None, str | None, int, str]:
    """Load test-split condition number ``counter`` of the model's dataset.

    Returns (editor value or None, caption or None, upload file path or None, next counter, status Markdown).
    Seg comes as a palette-coloured canvas, edge as white-on-black, text as its caption; other modalities as a
    ``.safetensors`` file in the upload box.
    """
    from PIL import Image

    try:
        pipe = _pipe(pipelines, cond_type)
        ds = _test_dataset(pipe)
        i = int(counter or 0) % len(ds)
        sample = ds[i]
        modality = _modality(pipe)
        m = modality.name
        if m not in sample.cond:
            raise IQVAEError(f"the test split of '{ds.name}' has no '{m}' condition")
        cond = sample.cond[m]
        where = f"test condition {i + 1} of {len(ds)} ({getattr(ds, 'name', 'dataset')})"
        if modality.drawable:
            img = condition_preview(cond, pipe).resize((CANVAS, CANVAS), Image.NEAREST)
            return ({"background": img, "layers": [], "composite": img}, None, None, i + 1,
                    f"Loaded {where}; edit it or press Generate.")
        if modality.typed:
            cap = (sample.extra or {}).get("caption") or modality.caption(pipe.cond_spec, cond) or ""
            return None, cap, None, i + 1, f"Loaded the caption of {where}."
        from safetensors.torch import save_file

        fd, path = tempfile.mkstemp(prefix=f"iqvae-example-{m}-", suffix=".safetensors")
        os.close(fd)
        save_file({"cond": cond.contiguous()}, path)
        return None, None, path, i + 1, f"Loaded {where} as a .safetensors file."
    except IQVAEError as e:
        return None, None, None, int(counter or 0), error_markdown(e)


# --------------------------------------------------------------------------------------------------------- app
def _editor_props(gr: Any, pipe: Any) -> dict[str, Any]:
    """Visibility, brush and blank value of the drawing canvas for one pipeline's condition type."""
    modality = _modality(pipe)
    scale = CANVAS / pipe.resolution
    colours, default, size = modality.canvas_brush(pipe.cond_spec)
    brush = gr.Brush(colors=colours, default_color=default, color_mode="fixed", default_size=max(2, int(size * scale)))
    visible = modality.drawable
    return dict(visible=visible, brush=brush,
                value={"background": blank_canvas(pipe), "layers": [], "composite": None} if visible else None)


def _upload_label(pipe: Any, max_upload_mb: float) -> str:
    return f"…or upload a file: {_modality(pipe).file_hint} (max {max_upload_mb:g} MB)"


def _input_column(gr: Any, pipelines: dict[str, Any], keys: list[str], max_upload_mb: float) -> dict[str, Any]:
    """The left column: condition type, legend, canvas, caption, upload, example button."""
    first = pipelines[keys[0]]
    ui: dict[str, Any] = {}
    ui["cond_type"] = gr.Radio(choices=[(_type_label(k, pipelines[k]), k) for k in keys], value=keys[0],
                               label="Condition type", elem_id="iqvae-cond-type")
    ui["legend"] = gr.HTML(legend_html(first), elem_id="iqvae-legend")
    props = _editor_props(gr, first)
    ui["drawing"] = gr.ImageEditor(value=props["value"], visible=props["visible"], brush=props["brush"],
                                   eraser=gr.Eraser(), type="pil", image_mode="RGBA", format="png",
                                   canvas_size=(CANVAS, CANVAS), fixed_canvas=True, sources=("upload", "clipboard"),
                                   transforms=(), layers=False, label="Draw the condition", elem_id="iqvae-drawing")
    ui["caption"] = gr.Textbox(label="Caption", placeholder="e.g. a large circle at the centre on a flat background",
                               lines=2, visible=_modality(first).typed, elem_id="iqvae-caption")
    ui["upload"] = gr.File(label=_upload_label(first, max_upload_mb), file_count="single", type="filepath",
                           elem_id="iqvae-upload")
    with gr.Row():
        ui["example_btn"] = gr.Button("Load example condition", elem_id="iqvae-example")
    ui["example_counter"] = gr.State(0)
    return ui


def _output_column(gr: Any, max_k: int, guided: bool) -> dict[str, Any]:
    """The right column: sampling sliders, Generate, status, gallery and the condition preview.  The guidance slider
    is visible only when the selected model has a null condition (``guided``)."""
    ui: dict[str, Any] = {}
    ui["num_samples"] = gr.Slider(1, MAX_SAMPLES, value=4, step=1, label="Number of samples",
                                  elem_id="iqvae-num-samples")
    ui["top_k"] = gr.Slider(0, max_k, value=min(100, max_k), step=1, label="top-k (0 = off; paper: 100)",
                            elem_id="iqvae-top-k")
    ui["top_p"] = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p (1 = off)", elem_id="iqvae-top-p")
    ui["min_p"] = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="min-p (0 = off)", elem_id="iqvae-min-p")
    ui["temperature"] = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature", elem_id="iqvae-temperature")
    ui["cfg_scale"] = gr.Slider(0.0, 8.0, value=1.0, step=0.1, label="Guidance scale (classifier-free; 1 = off)",
                                visible=guided, elem_id="iqvae-cfg-scale")
    ui["seed"] = gr.Slider(0, 99999, value=0, step=1, label="Seed", elem_id="iqvae-seed")
    ui["generate_btn"] = gr.Button("Generate", variant="primary", elem_id="iqvae-generate")
    ui["status"] = gr.Markdown("Ready.", elem_id="iqvae-status")
    ui["gallery"] = gr.Gallery(label="Samples", columns=4, format="png", object_fit="contain", allow_preview=True,
                               preview=False, interactive=False, elem_id="iqvae-gallery")
    ui["preview"] = gr.Image(label="The condition as the model reads it", type="pil", format="png",
                             interactive=False, height=200, elem_id="iqvae-cond-preview")
    return ui


def _wire_events(gr: Any, pipelines: dict[str, Any], ui: dict[str, Any], max_upload_mb: float) -> None:
    """Connect the condition-type selector, Generate (button and caption Enter) and the example button."""

    def on_type(key: str):
        try:
            pipe = _pipe(pipelines, key)
        except IQVAEError as e:
            return gr.update(), gr.update(), gr.update(), gr.update(), 0, error_markdown(e), None, gr.update()
        props = _editor_props(gr, pipe)
        return (gr.update(value=legend_html(pipe)),
                gr.ImageEditor(value=props["value"], visible=props["visible"], brush=props["brush"]),
                gr.Textbox(visible=_modality(pipe).typed),
                gr.File(value=None, label=_upload_label(pipe, max_upload_mb)),
                0, f"Condition type: **{key}**.", None,
                gr.Slider(value=1.0, visible=pipe.has_null_condition))  # a model without one is never guided

    ui["cond_type"].change(on_type, inputs=ui["cond_type"],
                           outputs=[ui[k] for k in ("legend", "drawing", "caption", "upload", "example_counter",
                                                    "status", "preview", "cfg_scale")])

    def on_generate(key, draw, up, cap, n, k, p, t, s, g, mp):
        return generate_callback(pipelines, key, draw, up, cap, n, k, p, t, s, g, mp, max_upload_mb=max_upload_mb)

    inputs = [ui[k] for k in ("cond_type", "drawing", "upload", "caption", "num_samples", "top_k", "top_p",
                              "temperature", "seed", "cfg_scale", "min_p")]
    outputs = [ui["gallery"], ui["preview"], ui["status"]]
    ui["generate_btn"].click(on_generate, inputs=inputs, outputs=outputs)
    ui["caption"].submit(on_generate, inputs=inputs, outputs=outputs)

    def on_example(key, counter):
        ed, cap, path, nxt, msg = example_callback(pipelines, key, counter)
        return (gr.update(value=ed) if ed is not None else gr.update(),
                gr.update(value=cap) if cap is not None else gr.update(),
                gr.update(value=path) if path is not None else gr.update(),
                nxt, msg)

    ui["example_btn"].click(on_example, inputs=[ui["cond_type"], ui["example_counter"]],
                            outputs=[ui[k] for k in ("drawing", "caption", "upload", "example_counter", "status")])


def build_app(pipelines: dict[str, "IQVAEPipeline"], *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
              title: str = "IQ-VAE demo") -> "gr.Blocks":
    """The demo as a ``gr.Blocks``; launch it with :func:`launch` (theme, limits and offline options)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    if not pipelines:
        raise IQVAEError("the web demo needs at least one pipeline")
    keys = _ordered_keys(pipelines)
    max_k = max(int(p.tokenizer.num_image_codes) for p in pipelines.values())
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nAuto-regressive image synthesis with integrated quantization (IQ-VAE, ECCV 2022). "
                    "Choose a condition type, draw, upload or type a condition and press **Generate**: the "
                    "transformer samples image tokens for it and the decoder turns them into images.")
        with gr.Row():
            with gr.Column(scale=1):
                ui = _input_column(gr, pipelines, keys, max_upload_mb)
            with gr.Column(scale=1):
                ui.update(_output_column(gr, max_k, pipelines[keys[0]].has_null_condition))
        _wire_events(gr, pipelines, ui, max_upload_mb)
    app.queue(default_concurrency_limit=1)  # one model, one sampling at a time
    return app


def launch(app: "gr.Blocks", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
           max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, block: bool = True, quiet: bool = False) -> Any:
    """Start the server with the offline options (no analytics, no SSR/node, no share link, no MCP, no PWA)."""
    import gradio as gr

    return app.launch(server_name=host, server_port=port, share=False, max_file_size=int(max_upload_mb * 2**20),
                      ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False, show_error=True,
                      prevent_thread_lock=not block, quiet=quiet, inbrowser=False, theme=gr.themes.Default(),
                      footer_links=[])


# --------------------------------------------------------------------------------------------------------- CLI
def serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise IQVAEError("the web demo needs gradio: pip install 'iqvae[web]'") from None
    if args.max_upload_mb <= 0:
        raise IQVAEError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if not 0 <= args.port <= 65535:
        raise IQVAEError(f"--port must be in [0, 65535], got {args.port}")
    pipelines = load_pipelines(args.model, device=args.device)
    print(f"iqvae serve: loaded {', '.join(f'{k} ({p.cond_spec.modality})' for k, p in pipelines.items())} "
          f"from '{args.model}'", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"iqvae serve: warning: listening on {args.host}; anyone who can reach this address can use the "
              "demo", flush=True)
    app = build_app(pipelines, max_upload_mb=args.max_upload_mb)
    launch(app, args.host, args.port, args.max_upload_mb, block=True)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="web demo: draw or upload a condition, get samples (needs iqvae[web])",
        description="Start the IQ-VAE web demo (Gradio): choose a condition type, draw a segmentation in the label "
                    "palette or an edge map, upload a condition file or type a caption, set the number of samples, "
                    "top-k, temperature and seed, and get a gallery of samples.")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a pipeline folder (with tokenizer/ and transformer/) or a folder of such folders, one per "
                        "condition type (e.g. runs/demo with seg/, edge/, text/)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 exposes the demo "
                        "to the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="N",
                   help=f"reject uploaded files larger than N MB (default {DEFAULT_MAX_UPLOAD_MB:g}); images are also "
                        "limited to 4096x4096 pixels")
    p.add_argument("--device", default="cpu", help="torch device for the models, e.g. cpu or cuda (default cpu)")
    p.set_defaults(func=serve)
