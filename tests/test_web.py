"""The web demo (``iqvae serve``): the callbacks without a browser, then the whole app in headless Chromium.

The models are tiny and random (a 16 px IQ-VAE with a 4x4 token grid and a one-layer GPT on the Shapes world's
condition specs), so the images are noise; what is tested is the plumbing and what the user sees.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iqvae import web
from iqvae.modalities.palette import label_palette
from iqvae.errors import CheckpointError

RES = 16
CHROMIUM = "/usr/bin/chromium"


def tiny_pipeline(modality: str, seed: int = 0, cfg_dropout: float = 0.0):
    from iqvae.data.config import DataConfig
    from iqvae.data.shapes import ShapesWorld
    from iqvae.models.gpt import GPT, GPTConfig
    from iqvae.models.tokenizer import IQVAE, IQVAEConfig
    from iqvae.pipeline import IQVAEPipeline

    torch.manual_seed(seed)
    spec = ShapesWorld(RES).condition_spec(modality)
    cfg = IQVAEConfig(resolution=RES, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn=False, embed_dim=8,
                      num_codes=16, text_width=16, text_layers=1, text_heads=1, sgw_projections=4)
    tok = IQVAE(cfg, spec)
    tok.data_config = DataConfig(dataset="shapes", cond=modality, resolution=RES, train_size=4, val_size=4,
                                 test_size=4)
    n = math.prod(tok.tokens_shape)
    gpt = GPT(GPTConfig(cond_vocab=tok.num_cond_codes, image_vocab=tok.num_image_codes, n_cond=n, n_image=n,
                        n_layer=1, n_head=1, n_embd=16, cfg_dropout=cfg_dropout))
    return IQVAEPipeline(tok, gpt)


@pytest.fixture(scope="module")
def pipes():
    return {m: tiny_pipeline(m) for m in ("seg", "edge", "text")}


def palette_drawing(channels: int, size: int = web.CANVAS) -> Image.Image:
    """An RGBA canvas like the editor sends: transparent background, a class-1 and a class-2 rectangle."""
    pal = label_palette(channels)
    arr = np.zeros((size, size, 4), np.uint8)
    arr[20:120, 30:200, :3] = pal[1]
    arr[20:120, 30:200, 3] = 255
    arr[150:240, 100:180, :3] = pal[2]
    arr[150:240, 100:180, 3] = 255
    return Image.fromarray(arr, "RGBA")


def gen(pipes, cond_type, **kw):
    args = dict(drawing=None, upload=None, caption=None, num_samples=2, top_k=5, top_p=1.0, temperature=1.0, seed=0)
    args.update(kw)
    return web.generate_callback(pipes, cond_type, **args)


# ------------------------------------------------------------------------------------------------ callbacks
def test_caption_gives_n_images(pipes):
    images, preview, status = gen(pipes, "text", caption="a large circle at the centre on a flat background",
                                  num_samples=3)
    assert len(images) == 3
    assert all(isinstance(im, Image.Image) and im.size[0] >= web.DISPLAY_MIN for im in images)
    assert preview is None
    assert "Generated 3 images" in status and "Error" not in status


def test_unknown_caption_words_are_reported(pipes):
    images, _, status = gen(pipes, "text", caption="a zebra circle", num_samples=1)
    assert len(images) == 1
    assert "unknown words" in status and "zebra" in status


def test_empty_caption_shows_message(pipes):
    images, _, status = gen(pipes, "text", caption="   ", num_samples=3)
    assert images == []
    assert "Error" in status and "the caption is empty" in status


def test_seeded_generation_is_reproducible(pipes):
    cap = "a small square at the top left on a striped background"
    a, _, _ = gen(pipes, "text", caption=cap, num_samples=2, seed=7)
    b, _, _ = gen(pipes, "text", caption=cap, num_samples=2, seed=7)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]


def test_palette_drawing_gives_n_images_and_a_preview(pipes):
    drawing = {"background": None, "layers": [], "composite": palette_drawing(pipes["seg"].cond_spec.channels)}
    images, preview, status = gen(pipes, "seg", drawing=drawing, num_samples=5)
    assert len(images) == 5, status
    # the preview is what the model reads: class 1 and 2 where painted, background elsewhere
    arr = np.asarray(preview.resize((RES, RES), Image.NEAREST))
    pal = label_palette(pipes["seg"].cond_spec.channels)
    colours = {tuple(c) for c in arr.reshape(-1, 3)}
    assert colours == {tuple(pal[0]), tuple(pal[1]), tuple(pal[2])}


def test_drawing_outside_the_palette_is_rejected(pipes):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    images, _, status = gen(pipes, "seg", drawing={"background": noise, "layers": [], "composite": noise})
    assert images == []
    assert "not painted in the label palette" in status


def test_missing_drawing_is_a_message(pipes):
    images, _, status = gen(pipes, "edge", drawing=None)
    assert images == [] and "there is no condition" in status


def test_edge_drawing(pipes):
    img = Image.new("L", (web.CANVAS, web.CANVAS), 0)
    img.paste(255, (40, 40, 48, 200))
    images, preview, status = gen(pipes, "edge", drawing={"background": img, "layers": [], "composite": None},
                                  num_samples=2)
    assert len(images) == 2, status
    assert np.asarray(preview).max() == 255 and np.asarray(preview).min() == 0


def test_upload_of_label_ids(pipes, tmp_path):
    ids = np.zeros((RES, RES), np.uint8)
    ids[2:9, 3:12] = 4
    path = tmp_path / "labels.png"
    Image.fromarray(ids, "L").save(path)
    images, preview, status = gen(pipes, "seg", upload=str(path), num_samples=2)
    assert len(images) == 2, status
    assert "uploaded file 'labels.png'" in status


def test_upload_of_wrong_mode_shows_message(pipes, tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 0, 0, 0)).save(path)
    for kind in ("seg", "edge"):
        images, _, status = gen(pipes, kind, upload=str(path))
        assert images == []
        assert "Error" in status and "mode CMYK" in status, status


def test_upload_over_the_byte_limit_shows_message(pipes, tmp_path):
    path = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(path)  # ~480 kB, incompressible
    images, _, status = web.generate_callback(pipes, "seg", None, str(path), None, 2, 5, 1.0, 1.0, 0,
                                              max_upload_mb=0.25)
    assert images == []
    assert "too large" in status and "0.25 MB" in status


def test_upload_over_the_pixel_limit_shows_message(pipes, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (4200, 4200), 0).save(path)  # a few kB on disk, 17.6 M pixels
    assert path.stat().st_size < 1e6
    images, _, status = gen(pipes, "edge", upload=str(path))
    assert images == []
    assert "too large" in status and "4200x4200" in status


def test_unreadable_upload_shows_message(pipes, tmp_path):
    path = tmp_path / "notes.bin"
    path.write_bytes(b"not an image at all")
    images, _, status = gen(pipes, "seg", upload=str(path))
    assert images == [] and "cannot read the upload 'notes.bin'" in status


@pytest.mark.parametrize("kw, msg", [
    (dict(num_samples=17), "between 1 and 16"),
    (dict(num_samples=0), "between 1 and 16"),
    (dict(top_k=-1), "top-k must be >= 0"),
    (dict(temperature=0.0), "temperature must be"),
    (dict(seed=1.5), "whole number"),
    (dict(min_p=1.5), "min_p must be in [0, 1]"),
])
def test_bad_settings_are_messages(pipes, kw, msg):
    images, _, status = gen(pipes, "text", caption="a circle", **kw)
    assert images == [] and msg in status, status


def test_min_p(pipes):
    """min-p 1 keeps only the most likely token of every step: the seed no longer matters (greedy decoding)."""
    cap = "a small square at the top left on a striped background"
    a, _, status = gen(pipes, "text", caption=cap, num_samples=2, seed=1, min_p=1.0)
    b, _, _ = gen(pipes, "text", caption=cap, num_samples=2, seed=2, min_p=1.0)
    assert "min-p 1" in status, status
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    c, _, _ = gen(pipes, "text", caption=cap, num_samples=2, seed=1)
    d, _, _ = gen(pipes, "text", caption=cap, num_samples=2, seed=2)
    assert [np.asarray(x).tobytes() for x in c] != [np.asarray(x).tobytes() for x in d]


def test_guidance_scale(pipes):
    guided = {"seg": tiny_pipeline("seg", cfg_dropout=0.1)}
    drawing = {"composite": palette_drawing(guided["seg"].cond_spec.channels)}
    images, _, status = gen(guided, "seg", drawing=drawing, cfg_scale=2.5)
    assert len(images) == 2 and "guidance scale 2.5" in status, status
    one, _, _ = gen(guided, "seg", drawing=drawing, cfg_scale=1.0)
    again, _, _ = gen(guided, "seg", drawing=drawing, cfg_scale=2.5)
    assert [np.asarray(a).tolist() for a in again] == [np.asarray(a).tolist() for a in images]
    assert [np.asarray(a).tolist() for a in one] != [np.asarray(a).tolist() for a in images]
    # a model without a null condition: a clear message naming the option
    images, _, status = gen(pipes, "seg", drawing=drawing, cfg_scale=2.0)
    assert images == [] and "--cfg-scale" in status and "cfg_dropout" in status, status


def test_unknown_condition_type(pipes):
    images, _, status = gen(pipes, "audio")
    assert images == [] and "unknown condition type 'audio'" in status


def test_example_condition_round_trip(pipes):
    ed, cap, path, nxt, status = web.example_callback(pipes, "seg", 0)
    assert nxt == 1 and cap is None and path is None and "test condition 1 of 4" in status
    assert ed["composite"].size == (web.CANVAS, web.CANVAS)
    images, _, status = gen(pipes, "seg", drawing=ed, num_samples=3)
    assert len(images) == 3, status
    # it is the test-split condition itself that the model reads
    cond, _ = web.read_condition(pipes["seg"], drawing=ed)
    ds = web._test_dataset(pipes["seg"])
    assert torch.equal(cond, ds[0].cond["seg"])

    ed, cap, path, nxt, status = web.example_callback(pipes, "text", 5)
    assert ed is None and cap and "test condition 2 of 4" in status
    assert len(gen(pipes, "text", caption=cap, num_samples=1)[0]) == 1


def test_example_without_dataset_config_is_a_message():
    pipe = tiny_pipeline("edge")
    pipe.tokenizer.data_config = None
    ed, *_, status = web.example_callback({"edge": pipe}, "edge", 0)
    assert ed is None and "without a dataset config" in status


def test_legend_lists_the_palette(pipes):
    html = web.legend_html(pipes["seg"])
    for c in label_palette(7):
        assert web._hex(c) in html
    assert "circle" in html and "cross" in html
    assert "white" in web.legend_html(pipes["edge"])
    assert "centre" in web.legend_html(pipes["text"])


# ------------------------------------------------------------------------------------------- loading, CLI
def test_model_folder_layouts(pipes, tmp_path):
    pipes["edge"].save_pretrained(tmp_path / "single")
    assert list(web.load_pipelines(tmp_path / "single")) == ["edge"]
    for m in ("seg", "text"):
        pipes[m].save_pretrained(tmp_path / "demo" / m)
    (tmp_path / "demo" / "notes").mkdir()
    loaded = web.load_pipelines(tmp_path / "demo")
    assert sorted(loaded) == ["seg", "text"]
    assert loaded["seg"].cond_spec == pipes["seg"].cond_spec
    with pytest.raises(CheckpointError, match="holds no pipeline"):
        web.find_pipeline_dirs(tmp_path / "demo" / "notes")
    with pytest.raises(CheckpointError, match="is not a folder"):
        web.find_pipeline_dirs(tmp_path / "missing")


def test_serve_cli_options(capsys):
    from iqvae.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["serve", "--model", "runs/demo"])
    assert (args.host, args.port, args.max_upload_mb, args.func) == ("127.0.0.1", 7860, 10.0, web.serve)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for opt in ("--model DIR", "--host", "--port", "--max-upload-mb N", "--device"):
        assert opt in out
    assert out.count("default") >= 3


def test_import_does_not_need_gradio():
    code = ("import sys, iqvae.cli, iqvae.web; iqvae.cli.build_parser(); "
            "assert 'gradio' not in sys.modules, 'gradio imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_build_app(pipes):
    gr = pytest.importorskip("gradio")
    app = web.build_app(pipes)
    assert isinstance(app, gr.Blocks)
    ids = {b.elem_id for b in app.blocks.values()}
    assert {"iqvae-cond-type", "iqvae-drawing", "iqvae-caption", "iqvae-upload", "iqvae-example",
            "iqvae-num-samples", "iqvae-top-k", "iqvae-temperature", "iqvae-seed", "iqvae-generate",
            "iqvae-gallery", "iqvae-status"} <= ids
    radio = next(b for b in app.blocks.values() if b.elem_id == "iqvae-cond-type")
    assert [c[1] for c in radio.choices] == ["seg", "edge", "text"]
    # the guidance slider is shown only for a model with a null condition
    slider = next(b for b in app.blocks.values() if b.elem_id == "iqvae-cfg-scale")
    assert slider.visible is False and slider.value == 1.0
    guided = web.build_app({**pipes, "seg": tiny_pipeline("seg", cfg_dropout=0.1)})
    assert next(b for b in guided.blocks.values() if b.elem_id == "iqvae-cfg-scale").visible is True
    # switching the condition type shows it (reset to 1) for a guided model and hides it for another
    fns = guided.fns.values() if isinstance(guided.fns, dict) else guided.fns
    on_type = next(b.fn for b in fns if getattr(b.fn, "__name__", "") == "on_type")
    for key, visible in (("seg", True), ("edge", False), ("seg", True)):
        update = on_type(key)[-1]
        assert update.visible is visible and update.value == 1.0, key


# ----------------------------------------------------------------------------------------------- browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(pipes, tmp_path_factory):
    """``iqvae serve --model DIR`` in a subprocess, DIR holding seg/, edge/ and text/ pipelines."""
    root = tmp_path_factory.mktemp("demo")
    for m, p in pipes.items():
        p.save_pretrained(root / m)
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               GRADIO_TEMP_DIR=str(root / "gradio-tmp"), IQVAE_TEST_THREADS="1", OMP_NUM_THREADS="1")
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "iqvae.cli", "serve", "--model", str(root), "--port", str(port),
                             "--max-upload-mb", "2"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"iqvae serve exited with {proc.returncode}:\n{(root / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"iqvae serve did not answer in 120 s:\n{(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def page(server, tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: run scripts/install-browser")
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium; install it with scripts/install-browser)")
    if os.environ.get("CI"):
        import playwright.sync_api as sync_api  # in CI a missing playwright is a failure, not a skip
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path / "chromium-profile"
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, viewport={"width": 1280, "height": 1000},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        outside: list[str] = []

        def only_localhost(route):
            u = route.request.url
            if u.startswith(server) or u.startswith(("data:", "blob:")):
                route.continue_()
            else:
                outside.append(u)
                route.abort()

        ctx.route("**/*", only_localhost)
        pg = ctx.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(server)
        pg.locator("#iqvae-generate").wait_for()
        yield pg
        ctx.close()
    # the page must not need the internet (fonts, scripts, analytics)
    assert outside == [], f"the page tried to reach: {outside}"


def _set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_function(f"document.querySelector('#{elem_id} input[type=range]').value == '{value}'")


def _gallery_count(page) -> int:
    return page.locator("#iqvae-gallery img").count()


def _generate(page, expect: str) -> None:
    page.locator("#iqvae-generate").click()
    page.locator("#iqvae-status").filter(has_text=expect).wait_for()


@pytest.mark.browser
def test_browser_generate_and_errors(page, tmp_path):
    # caption -> 3 images
    page.locator("#iqvae-cond-type label", has_text="Caption").click()
    page.locator("#iqvae-caption textarea").wait_for(state="visible")
    page.locator("#iqvae-caption textarea").fill("a large circle at the centre on a flat background")
    _set_slider(page, "iqvae-num-samples", 3)
    _generate(page, "Generated 3 images")
    page.wait_for_function("document.querySelectorAll('#iqvae-gallery img').length >= 3")
    assert _gallery_count(page) == 3
    shot = tmp_path / "web-text.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("IQVAE_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["IQVAE_SCREENSHOT_DIR"]) / shot.name)

    # empty caption -> the message, and no images
    page.locator("#iqvae-caption textarea").fill("")
    _generate(page, "the caption is empty")
    page.wait_for_function("document.querySelectorAll('#iqvae-gallery img').length == 0")
    assert "Error" in page.locator("#iqvae-status").inner_text()

    # segmentation: the example condition from the test split -> 2 images
    page.locator("#iqvae-cond-type label", has_text="Segmentation").click()
    page.locator("#iqvae-drawing").wait_for(state="visible")
    assert "circle" in page.locator("#iqvae-legend").inner_text()
    page.locator("#iqvae-example").click()
    page.locator("#iqvae-status").filter(has_text="Loaded test condition 1").wait_for()
    _set_slider(page, "iqvae-num-samples", 2)
    _generate(page, "Generated 2 images")
    page.wait_for_function("document.querySelectorAll('#iqvae-gallery img').length == 2")
    assert _gallery_count(page) == 2
    shot = tmp_path / "web-seg.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("IQVAE_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["IQVAE_SCREENSHOT_DIR"]) / shot.name)

    # edge: draw a stroke on the canvas -> 1 image, and the model reads edges where the stroke is
    page.locator("#iqvae-cond-type label", has_text="Edge map").click()
    page.locator("#iqvae-status").filter(has_text="Condition type: edge").wait_for()
    page.locator("#iqvae-legend").filter(has_text="white").wait_for()
    box = page.locator("#iqvae-drawing canvas").last.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy - 60)
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 60, steps=25)
    page.mouse.up()
    _set_slider(page, "iqvae-num-samples", 1)
    _generate(page, "Generated 1 image from the drawing")
    page.wait_for_function("document.querySelectorAll('#iqvae-gallery img').length == 1")
    assert _gallery_count(page) == 1

    # an upload over --max-upload-mb (2 MB) -> gradio refuses it with a message
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2 * 2**20
    page.locator("#iqvae-upload input[type=file]").set_input_files(str(big))
    page.get_by_text("exceed the maximum allowed size").first.wait_for()

    # an upload of the wrong mode -> the message
    bad = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (10, 0, 0, 0)).save(bad)
    page.locator("#iqvae-upload input[type=file]").set_input_files(str(bad))
    page.locator("#iqvae-upload").filter(has_text="cmyk.jpg").wait_for()
    _generate(page, "mode CMYK")
    page.wait_for_function("document.querySelectorAll('#iqvae-gallery img').length == 0")
